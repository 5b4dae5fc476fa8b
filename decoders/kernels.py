"""Functional kernels of PixelCNN++ (Salimans et al., 2017) and their hand-written autograd: the convolutions
every layer goes through, elu and concat_elu, the sigmoid gate, the causal shifts, and `exact_kernels()`.

They live apart from the nn.Modules (decoders/layers.py) because more than the modules use them: the network
(decoders/pixelcnn.py) calls concat_elu and the shifts between blocks, and the cached sampler (decoders/sampling.py)
applies the same arithmetic to its cached rows and windows without going through the modules.

Every convolution goes through `conv2d`/`conv_transpose2d_s2`, so that `exact_kernels()` can pin the CPU
arithmetic while sampling. oneDNN's kernels, PyTorch's small-input fallbacks and MKL's sgemm all sum in an order
that depends on the size of the input (how many pixels, how many rows), so the same output pixel computed on the
whole image or on a 2x2 window can differ in the last bit. Inside `exact_kernels()` a convolution computes every
output pixel as its own (B, K) x (K, C') product, all pixels in one single-threaded `torch.bmm`: the batch of
products runs each product with the same kernel whatever their number, so a pixel's value no longer depends on
how much of the image is computed with it. elu (always on CPU) and sigmoid (inside exact_kernels()), whose own
CPU kernels round differently in their scalar and vector loops, go through exp. That is what lets the cached
sampler (decoders/sampling.py) draw exactly what the naive one does. The switch is process-wide: do not train
in one thread while another samples.

The CPU training path also has hand-written pieces, each measured at 3x32x32, 1x32x10, batch 16 on one core
(see the functions' docstrings): 1x1 convs as batched matmuls, elu from exp, dropout from random bits
(`layers.Dropout.keep_mask`) fused into the activation, the gate's backward written in place.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

_EXACT = False  # set by exact_kernels(); read by conv2d and conv_transpose2d_s2


@contextlib.contextmanager
def exact_kernels(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU float32 convolutions give each output pixel a value that does not depend on the
    input's size (one product per pixel in a batched matmul); on other devices and dtypes a no-op.

    Sets torch's CPU thread count to 1 for the block: with more, MKL splits one small product over threads
    with other kernels, but not a batch of them.
    """
    global _EXACT
    old, old_threads = _EXACT, torch.get_num_threads()
    _EXACT = bool(enabled)
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        _EXACT = old
        torch.set_num_threads(old_threads)


def exact_here(x: torch.Tensor) -> bool:
    """Whether exact_kernels() is in effect for tensors like x (CPU float32, no CPU autocast)."""
    return _EXACT and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def im2col_rows(x_hwc: torch.Tensor, kh: int, kw: int, stride: int = 1) -> torch.Tensor:
    """Conv input (B, H, W, C) (any strides) -> (Ho*Wo, B, K) rows, K ordered (kh, kw, C), one per output pixel."""
    b = x_hwc.shape[0]
    patches = x_hwc.unfold(1, kh, stride).unfold(2, kw, stride)  # (B, Ho, Wo, C, kh, kw)
    ho, wo, c = patches.shape[1:4]
    return patches.permute(1, 2, 0, 4, 5, 3).reshape(ho * wo, b, kh * kw * c)


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight (C', C, kh, kw) -> (K, C'), K ordered (kh, kw, C) like im2col_rows."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t()


def pixel_products(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The exact kernels' conv arithmetic: rows (L, B, K), weight_t (K, C') -> (L, B, C') (+ bias)."""
    y = torch.bmm(rows.contiguous(), weight_t.expand(rows.shape[0], *weight_t.shape))
    return y + bias if bias is not None else y


def _conv_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
               weight_t: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d as one (B, K) x (K, C') product per output pixel, all pixels in one bmm."""
    b, cout, (kh, kw) = x.shape[0], weight.shape[0], weight.shape[2:]
    ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    weight_t = weight_rows(weight) if weight_t is None else weight_t
    y = pixel_products(im2col_rows(x.permute(0, 2, 3, 1), kh, kw, stride), weight_t, bias)
    return y.permute(1, 2, 0).view(b, cout, ho, wo)  # (B, C', Ho, Wo)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
           weight_t: torch.Tensor | None = None) -> torch.Tensor:
    """Unpadded convolution (B, C, H, W) -> (B, C', H', W'); size-independent per pixel inside exact_kernels().

    On CPU a 1x1 convolution of a contiguous input is one batched matrix product per image, (C', C) x (C, H*W):
    oneDNN's 1x1 convolution ran at a third of its 2x3 ones' FLOP rate (forward and backward at 3x32x32,
    batch 16, 128 -> 32 channels: 7.5 vs 17.7 ms). weight_t: weight_rows(weight), precomputed by a caller that
    applies one weight many times (the cached sampler); used inside exact_kernels().
    """
    if exact_here(x):
        return _conv_rows(x, weight, bias, stride, weight_t)
    if x.device.type == "cpu" and weight.shape[-2:] == (1, 1) and stride == 1 and x.is_contiguous():
        b, c, h, w = x.shape
        n = weight.shape[0]
        w2 = weight.view(n, c).expand(b, n, c)
        x2 = x.view(b, c, h * w)
        y = torch.bmm(w2, x2) if bias is None else torch.baddbmm(bias.view(1, n, 1).expand(b, n, h * w), w2, x2)
        return y.view(b, n, h, w)
    return F.conv2d(x, weight, bias, stride)


def conv_transpose2d_s2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, left: int) -> torch.Tensor:
    """Stride-2 transposed conv (weight (C, C', 2, kw)), output cropped to (B, C', 2H, 2W) from column `left`.

    Output rows 2p, 2p+1 come from input row p alone, so a row (or, for kw = 2, a pixel) can be computed alone.
    Inside exact_kernels() on CPU it is one size-independent 1x1 conv to the C'*2*kw taps plus a fixed sum.
    """
    b, _, h, w = x.shape
    cin, cout, kh, kw = weight.shape
    if not exact_here(x):
        y = F.conv_transpose2d(x, weight, bias, stride=2, output_padding=1)  # (B, C', 2H+kh-1, 2W+kw-1)
        return y[:, :, :2 * h, left:left + 2 * w]
    taps = _conv_rows(x, weight.permute(1, 2, 3, 0).reshape(cout * kh * kw, cin, 1, 1), None, 1)
    taps = taps.reshape(b, cout, kh, kw, h, w)  # uncropped output (2p + a, 2q + k) gets taps[:, :, a, k, p, q]
    if kw == 2 and left == 0:
        cols = taps.permute(0, 1, 4, 2, 5, 3)  # (B, C', H, 2, W, 2): column 2q + k, k < 2
    elif kw == 3 and left == 1:  # cropped column 2m = tap 1 at q = m; 2m + 1 = tap 2 at q = m plus tap 0 at q = m+1
        odd = taps[:, :, :, 2] + F.pad(taps[:, :, :, 0, :, 1:], (0, 1))
        cols = torch.stack((taps[:, :, :, 1], odd), dim=-1).permute(0, 1, 3, 2, 4, 5)  # (B, C', H, 2, W, 2)
    else:
        raise ValueError(f"conv_transpose2d_s2: unsupported kernel width {kw} with crop {left}")
    return cols.reshape(b, cout, 2 * h, 2 * w) + bias[:, None, None]


def _elu_parts(t: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """elu(t) as max(t, 0) + (exp(min(t, 0)) - 1), and its slope exp(min(t, 0)); t is overwritten if inplace."""
    slope = t.clamp(max=0.0).exp_()
    out = t.clamp_(min=0.0) if inplace else t.clamp(min=0.0)
    return out.add_(slope - 1.0), slope


class _Elu(torch.autograd.Function):
    """elu(t) (times a dropout mask `keep`, if given) with the exp saved as the slope for backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, keep: torch.Tensor | None, inplace: bool) -> torch.Tensor:
        out, slope = _elu_parts(t, inplace)
        if keep is not None:
            out.mul_(keep)
            slope.mul_(keep)
        ctx.save_for_backward(slope)
        if inplace:
            ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        slope, = ctx.saved_tensors
        return grad * slope, None, None


def _eager_cpu(x: torch.Tensor) -> bool:
    """The hand-written CPU paths; on GPUs and under torch.compile plain torch ops, which those fuse."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def elu(x: torch.Tensor, keep: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """ELU (times `keep`, a scaled dropout mask, if given). On CPU max(x, 0) + (exp(min(x, 0)) - 1): torch's
    elu evaluates expm1, which there runs a scalar loop ten times slower than exp, and rounds differently in
    its scalar and vector loops; exp(y) - 1 is within 6e-8 of expm1(y), and exp and the exact operations
    give an element the same value whatever the tensor's size and layout, which the samplers need
    (exact_kernels). inplace may overwrite x (a tensor the caller made for it)."""
    if not _eager_cpu(x):
        out = F.elu(x)
        return out if keep is None else out * keep
    if torch.is_grad_enabled() and (x.requires_grad or (keep is not None and keep.requires_grad)):
        return _Elu.apply(x, keep, inplace)
    out = _elu_parts(x, inplace)[0]
    return out if keep is None else out.mul_(keep)


def concat_elu(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """ELU of [x, -x] along channels: (B, C, H, W) -> (B, 2C, H, W), times `keep` if given (see `elu`)."""
    if not _eager_cpu(x) or (torch.is_grad_enabled() and x.requires_grad):
        t = torch.cat((x, -x), dim=1)
    else:
        c = x.shape[1]
        t = x.new_empty(x.shape[0], 2 * c, *x.shape[2:])
        t[:, :c] = x
        torch.neg(x, out=t[:, c:])
    return elu(t, keep, inplace=True)


def concat_elu_of_cat(act_a: torch.Tensor, act_b: torch.Tensor) -> torch.Tensor:
    """concat_elu(cat(a, b)) from concat_elu(a) and concat_elu(b): the same values, reordered channels."""
    ca, cb = act_a.shape[1] // 2, act_b.shape[1] // 2
    return torch.cat((act_a[:, :ca], act_b[:, :cb], act_a[:, ca:], act_b[:, cb:]), dim=1)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """torch.sigmoid; inside exact_kernels() on CPU 1 / (1 + exp(-x)), layout-independent like `elu`."""
    if exact_here(x):
        return torch.exp(-x).add_(1.0).reciprocal_()
    return torch.sigmoid(x)


class _Gate(torch.autograd.Function):
    """x + a * sigmoid(b) for y = [a, b], its gradient for y written in place of the chunks' concatenation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = y.chunk(2, dim=1)
        s = torch.sigmoid(b)
        ctx.save_for_backward(a, s)
        return x + a * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, s = ctx.saved_tensors
        f = a.shape[1]
        gy = grad.new_empty(a.shape[0], 2 * f, *a.shape[2:])
        torch.mul(grad, s, out=gy[:, :f])
        torch.ops.aten.sigmoid_backward.grad_input(grad * a, s, grad_input=gy[:, f:])
        return grad, gy


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zero first row): output row i holds input row i-1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]  # (B, C, H, W)


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right (zero first column)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]  # (B, C, H, W)


def gate(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """x + a * sigmoid(b) with [a, b] = y + c (c broadcast; None adds nothing)."""
    if c is not None:
        # in place: y keeps its memory layout (CPU kernels round differently on other layouts), so a zero
        # projection leaves the result bit-identical to the unconditional block
        y = y.add_(c)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad) and _eager_cpu(y) and not exact_here(y):
        return _Gate.apply(x, y)
    a, b = y.chunk(2, dim=1)
    return x + a * sigmoid(b)
