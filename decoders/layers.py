"""Building blocks of PixelCNN++ (Salimans et al., 2017): shifted convolutions, weight normalisation,
concat_elu and the gated residual block.

The causal ("masked") convolutions are ordinary convolutions on an input padded on the top (and left)
only: a down-shifted conv sees its own row and the rows above, a down-right-shifted conv also only the
columns to its left; `down_shift`/`right_shift` then exclude the current pixel. No weight masks, so cuDNN
and channels_last work unchanged. (Symmetric conv padding with the surplus rows cut off avoids the padded
copy but computes up to (H+1)(W+1)/HW more outputs; on CPU at 8x8 it measured ~20% slower.)

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
(see the functions' docstrings): 1x1 convs as batched matmuls, elu from exp, dropout from random bits fused
into the activation, the gate's backward written in place.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

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


class Dropout(nn.Module):
    """Element-wise dropout, as nn.Dropout (kept values scaled by 1/(1-p); identity in eval mode).

    On CPU the keep mask comes from 16 random bits per element (torch's bernoulli_ there cost more than the
    convolution that follows it), so p takes effect in steps of 2**-16: an element is kept with probability
    round((1-p) * 2**16) / 2**16, and the scale uses that probability. Elsewhere it is F.dropout.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)
        self.kept = max(1, round((1.0 - self.p) * 65536))  # of 65536 equally likely 16-bit values

    def keep_mask(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """The scaled keep mask (0 or 1/(1-p), `like`'s dtype) of that shape in train mode on CPU, else None."""
        if not self.training or self.p == 0.0 or like.device.type != "cpu":
            return None
        n = math.prod(shape)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, 2**63 - 1)
        keep = bits.view(torch.int16)[:n].view(shape) < self.kept - 32768  # (B, C, H, W)
        return keep.to(like.dtype).mul_(65536.0 / self.kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * self.keep_mask(x.shape, x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Nin(nn.Module):
    """Weight-normalised 1x1 convolution ("network in network")."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = weight_norm(nn.Conv2d(cin, cout, 1), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.conv.weight, self.conv.bias)


class DownShiftedConv2d(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2 (kernel (kh, kw), kw odd).

    Followed by `down_shift` this sees only rows above. With stride 2 it halves H and W.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 3), stride: tuple[int, int] = (1, 1)):
        super().__init__()
        kh, kw = kernel
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)  # (left, right, top, bottom)
        self.stride = stride[0]
        self.conv = weight_norm(nn.Conv2d(cin, cout, kernel, stride=stride), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(F.pad(x, self.pad), self.conv.weight, self.conv.bias, self.stride)  # (B, C', H/s, W/s)


class DownRightShiftedConv2d(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-kw+1..j."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 2), stride: tuple[int, int] = (1, 1)):
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)  # (left, right, top, bottom)
        self.stride = stride[0]
        self.conv = weight_norm(nn.Conv2d(cin, cout, kernel, stride=stride), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(F.pad(x, self.pad), self.conv.weight, self.conv.bias, self.stride)  # (B, C', H/s, W/s)


class DownShiftedDeconv2d(nn.Module):
    """Stride-2 transposed conv that doubles H and W and keeps the down-shifted receptive field."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 3)):
        super().__init__()
        self.kernel = kernel
        self.deconv = weight_norm(nn.ConvTranspose2d(cin, cout, kernel, stride=2, output_padding=1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (self.kernel[1] - 1) // 2
        return conv_transpose2d_s2(x, self.deconv.weight, self.deconv.bias, left)  # (B, C, 2H, 2W)


class DownRightShiftedDeconv2d(nn.Module):
    """Stride-2 transposed conv that doubles H and W and keeps the down-right-shifted receptive field."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 2)):
        super().__init__()
        self.kernel = kernel
        self.deconv = weight_norm(nn.ConvTranspose2d(cin, cout, kernel, stride=2, output_padding=1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d_s2(x, self.deconv.weight, self.deconv.bias, 0)  # (B, C, 2H, 2W)


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), where [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip)))))
    (+ a conditioning term added before the gate).

    Args:
        filters: channels of x.
        conv: DownShiftedConv2d or DownRightShiftedConv2d (the stream's causal conv).
        skip_streams: how many filters-wide tensors arrive as the skip input `a` (0: none).
        dropout: probability, active in train mode only.
        cond: None, ("vector", D) or ("spatial", channels); the projection is zero-initialised so a fresh
            conditional block computes exactly what the unconditional one does.
    """

    def __init__(self, filters: int, conv: type[nn.Module], skip_streams: int = 0, dropout: float = 0.5,
                 cond: tuple[str, int] | None = None):
        super().__init__()
        self.conv_input = conv(2 * filters, filters)
        self.nin_skip = Nin(2 * skip_streams * filters, filters) if skip_streams else None
        self.dropout = Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters)
        self.cond: nn.Module | None = None
        if cond is not None:
            kind, width = cond
            self.cond = nn.Linear(width, 2 * filters) if kind == "vector" else nn.Conv2d(width, 2 * filters, 1)
            nn.init.zeros_(self.cond.weight)
            nn.init.zeros_(self.cond.bias)

    def cond_term(self, h: torch.Tensor | None) -> torch.Tensor | None:
        """The conditioning term added before the gate: (B, 2F, 1, 1) for a vector h (B, D), (B, 2F, H, W) for
        spatial features h (B, C', H, W), None without conditioning."""
        if self.cond is None or h is None:
            return None
        if h.dim() == 2:
            return self.cond(h)[:, :, None, None]
        return conv2d(h, self.cond.weight, self.cond.bias)

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, h: torch.Tensor | None = None, *,
                x_act: torch.Tensor | None = None, a_act: torch.Tensor | None = None) -> torch.Tensor:
        """x_act, a_act: concat_elu(x), concat_elu(a) when the caller has them already (the network reuses each
        stream tensor's activation as the next block's input and as a skip)."""
        y = self.conv_input(concat_elu(x) if x_act is None else x_act)  # (B, F, H, W)
        if a is not None or a_act is not None:
            y = y + self.nin_skip(concat_elu(a) if a_act is None else a_act)
        keep = self.dropout.keep_mask((y.shape[0], 2 * y.shape[1], *y.shape[2:]), y)
        act = concat_elu(y, keep) if keep is not None else self.dropout(concat_elu(y))
        return gate(x, self.conv_out(act), self.cond_term(h))  # conv_out: (B, 2F, H, W)
