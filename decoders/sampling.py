"""Exact cached sampling for PixelCNN++ (Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models"): each layer's output is computed once per position, when the last pixel it depends
on has been drawn, instead of running the whole network again for every pixel.

Which positions a new pixel reaches follows from the causal structure of `PixelCNNPP._network`:
- the u stream sees only rows above, so at the start of image row i its row i is computed whole, at every
  resolution l with i % 2**l == 0 (row i >> l), up pass then down pass;
- the ul stream also sees the pixels to the left, so it is computed one position per pixel: (i, j) at full
  resolution, (i/2, j/2) when i and j are even, (i/4, j/4) when both are multiples of 4. The strided
  down-sampling reads a 2x2 window that is complete at that moment, and a transposed-conv up-sampling of a
  position fills the 2x2 block (2p.., 2q..) the finer level reads over the next rows;
- skips are consumed at the position (or row) that made them, so only a conv's last kh = 2 input rows are
  kept ("a cache per layer and resolution"); spatial-code features are computed once, their projections a
  row at a time.
Each pixel is then drawn with `mixture.sample`, consuming the generator exactly as the naive sampler does.
Under `kernels.exact_kernels()` every value is computed by the same kernels as in the naive sampler, so on CPU
the mixture parameters, and hence the drawn integers, are bit-identical (tests/decoders/test_sampling.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from decoders import mixture
from decoders.kernels import (concat_elu, concat_elu_of_cat, conv2d, conv_transpose2d_s2, elu, gate, pixel_products,
                              weight_rows)
from decoders.layers import GatedResnet

Tensor = torch.Tensor


class _Rows:
    """The last kh rows of one conv's input at one resolution, zero-padded as the conv pads, channels last:
    (B, kh, L+W+R, C), so that a conv's window is a few contiguous runs per image."""

    def __init__(self, kh: int, left: int, right: int, width: int):
        self.kh, self.left, self.right, self.width = kh, left, right, width
        self.buf: Tensor | None = None  # allocated at the first write, in the values' dtype and device
        self.cols: list[Tensor] = []  # views (B, C) of the last row, one per column
        self.windows: dict[tuple[int, int], Tensor] = {}  # views buf[:, :, start:start + size]

    def _alloc(self, v: Tensor) -> Tensor:
        if self.buf is None:
            self.buf = v.new_zeros(v.shape[0], self.kh, self.left + self.width + self.right, v.shape[1])
            self.cols = [self.buf[:, -1, self.left + q] for q in range(self.width)]
        return self.buf

    def next_row(self) -> None:
        if self.buf is not None and self.kh == 2:
            self.buf[:, 0].copy_(self.buf[:, 1])

    def put_row(self, v: Tensor) -> None:  # v (B, C, 1, W)
        self._alloc(v)[:, -1, self.left:self.left + self.width] = v[:, :, 0].transpose(1, 2)

    def put(self, q: int, v: Tensor) -> None:  # v (B, C, 1, 1) at column q
        self._alloc(v)
        self.cols[q].copy_(v.view(v.shape[:2]))

    def window(self, start: int, size: int) -> Tensor:  # (B, kh, size, C), padded columns start..start+size-1
        key = (start, size)
        if key not in self.windows:
            self.windows[key] = self.buf[:, :, start:start + size]
        return self.windows[key]


def _rows_for(conv: torch.nn.Module, width: int) -> _Rows:
    left, right, top, _ = conv.pad
    return _Rows(top + 1, left, right, width)


class _Conv:
    """A conv module applied to cached (B, kh, W, C) input rows, weight norm computed once: `row` gives an output
    row, `at` one output pixel as one (B, K) x (K, C') product, the arithmetic `kernels.conv2d` uses on exact
    kernels (and on a GPU fewer kernel launches than a convolution of a 2x2 window)."""

    def __init__(self, mod: torch.nn.Module):
        self.w, self.b, self.stride = mod.conv.weight, mod.conv.bias, getattr(mod, "stride", 1)
        self.kw = self.w.shape[-1]
        self.wt = weight_rows(self.w)  # (K, C')

    def row(self, buf: Tensor) -> Tensor:  # (B, kh, W', C) -> (B, C', 1, W_out)
        return conv2d(buf.permute(0, 3, 1, 2), self.w, self.b, self.stride, self.wt)

    def at(self, window: Tensor) -> Tensor:  # (B, kh, kw, C), or (B, C, 1, 1) for a 1x1 conv -> (B, C', 1, 1)
        b = window.shape[0]
        return pixel_products(window.reshape(1, b, self.wt.shape[0]), self.wt, self.b).view(b, -1, 1, 1)


def _deconv(mod: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    w, b, left = mod.deconv.weight, mod.deconv.bias, (mod.kernel[1] - 1) // 2
    return lambda x: conv_transpose2d_s2(x, w, b, left)


class _Block:
    """One gated residual block with its two input caches, evaluated a row or a position at a time. Like
    `GatedResnet.forward` in `_network`, it takes concat_elu of its input and of its skip from the caller, which
    computes each stream tensor's activation once."""

    def __init__(self, blk: GatedResnet, width: int):
        self.blk = blk
        self.conv_input, self.conv_out = _Conv(blk.conv_input), _Conv(blk.conv_out)
        self.nin = _Conv(blk.nin_skip) if blk.nin_skip is not None else None
        self.inp, self.mid = _rows_for(blk.conv_input, width), _rows_for(blk.conv_out, width)
        self.c: Tensor | None = None  # conditioning term: (B, 2F, 1, 1) vector or the current row's (B, 2F, 1, W)

    def next_row(self) -> None:
        self.inp.next_row()
        self.mid.next_row()

    def row(self, x: Tensor, x_act: Tensor, a_act: Tensor | None) -> Tensor:  # (B, F, 1, W) -> (B, F, 1, W)
        self.inp.put_row(x_act)
        y = self.conv_input.row(self.inp.buf)
        if a_act is not None:
            y = y + conv2d(a_act, self.nin.w, self.nin.b, weight_t=self.nin.wt)
        self.mid.put_row(concat_elu(y))
        return gate(x, self.conv_out.row(self.mid.buf), self.c)

    def at(self, q: int, x: Tensor, x_act: Tensor, a_act: Tensor | None) -> Tensor:  # (B, F, 1, 1) at column q
        self.inp.put(q, x_act)
        y = self.conv_input.at(self.inp.window(q, self.conv_input.kw))
        if a_act is not None:
            y = y + self.nin.at(a_act)
        self.mid.put(q, concat_elu(y))
        c = self.c if self.c is None or self.c.shape[-1] == 1 else self.c[:, :, :, q:q + 1]
        return gate(x, self.conv_out.at(self.mid.window(q, self.conv_out.kw)), c)


class CachedSampler:
    """Draws images from a PixelCNNPP in eval mode; `cond` is what `model._condition` returned."""

    def __init__(self, model: torch.nn.Module, cond):
        c, h, w = model.cfg.image_shape
        self.model, self.cond, self.shape = model, cond, (c, h, w)
        widths = [w >> lv for lv in range(3)]
        self.up_u = [[_Block(b, widths[lv]) for b in model.up_u[lv]] for lv in range(3)]
        self.up_ul = [[_Block(b, widths[lv]) for b in model.up_ul[lv]] for lv in range(3)]
        self.down_u = [[_Block(b, widths[2 - i]) for b in model.down_u[i]] for i in range(3)][::-1]  # by level
        self.down_ul = [[_Block(b, widths[2 - i]) for b in model.down_ul[i]] for i in range(3)][::-1]
        self.downsize_u = [_Conv(m) for m in model.downsize_u]
        self.downsize_ul = [_Conv(m) for m in model.downsize_ul]
        self.upsize_u = [_deconv(m) for m in model.upsize_u][::-1]  # [level 1 -> 0, level 2 -> 1]
        self.upsize_ul = [_deconv(m) for m in model.upsize_ul][::-1]
        self.last_u = [_rows_for(model.downsize_u[lv], widths[lv]) for lv in range(2)]  # downsampling inputs
        self.last_ul = [_rows_for(model.downsize_ul[lv], widths[lv]) for lv in range(2)]
        self.u_init, self.ul_init_down, self.ul_init_right = (
            _Conv(model.u_init), _Conv(model.ul_init_down), _Conv(model.ul_init_right))
        self.xs_u = _rows_for(model.u_init, w)  # scaled image rows for the three input convs
        self.xs_down = _rows_for(model.ul_init_down, w)
        self.xs_right = _rows_for(model.ul_init_right, w)
        self.nin_out = _Conv(model.nin_out)
        self.levels = [self.up_u[lv] + self.up_ul[lv] + self.down_u[lv] + self.down_ul[lv] for lv in range(3)]
        if isinstance(cond, Tensor):  # a vector code: one term per block for the whole image
            for blocks in self.levels:
                for b in blocks:
                    b.c = b.blk.cond_term(cond)

    # ------------------------------------------------------------------------------------- u stream, rows
    def _start_row(self, x: Tensor, i: int) -> None:
        """Advance every cache of the resolutions whose row starts at image row i; compute their u rows."""
        due = [lv for lv in range(3) if i % (1 << lv) == 0]
        if i > 0:
            for lv in due:
                for b in self.levels[lv]:
                    b.next_row()
                if lv < 2:
                    self.last_u[lv].next_row()
                    self.last_ul[lv].next_row()
            self.xs_u.next_row()
            self.xs_right.next_row()
            prev = self.model._input(x[:, :, i - 1:i])  # (B, C+1, 1, W)
            self.xs_u.put_row(prev)
            self.xs_down.put_row(prev)
            self.u0 = self.u_init.row(self.xs_u.buf)  # down_shift: row i of u holds row i-1 of the conv
            self.ul0_down = self.ul_init_down.row(self.xs_down.buf)
        else:  # row 0 of u and of the ul input's down term are down_shift's zero row
            blank = torch.zeros_like(self.model._input(x[:, :, :1]))  # (B, C+1, 1, W)
            self.u0 = torch.zeros_like(conv2d(F.pad(blank, self.model.u_init.pad), self.u_init.w, self.u_init.b))
            self.ul0_down = torch.zeros_like(self.u0)
        if not isinstance(self.cond, Tensor) and self.cond is not None:  # spatial features: this row's terms
            for lv in due:
                h = self.cond[lv][:, :, (i >> lv):(i >> lv) + 1]
                for b in self.levels[lv]:
                    b.c = b.blk.cond_term(h)
        for lv in due:  # every u row travels with its concat_elu: the next block's input and a skip
            x_in = self.u0 if lv == 0 else self.downsize_u[lv - 1].row(self.last_u[lv - 1].buf)
            ups = [(x_in, concat_elu(x_in))]
            for b in self.up_u[lv]:
                u = b.row(*ups[-1], None)
                ups.append((u, concat_elu(u)))
            if lv < 2:
                self.last_u[lv].put_row(ups[-1][0])
            self.u_ups[lv] = ups
        for lv in reversed(due):
            skips = list(self.u_ups[lv])
            if lv == 2:
                u, ua = skips.pop()
            else:
                u = self.u_upsized[lv][:, :, (i >> lv) % 2:(i >> lv) % 2 + 1]
                ua = concat_elu(u)
            downs = []
            for b in self.down_u[lv]:
                u = b.row(u, ua, skips.pop()[1])
                ua = concat_elu(u)
                downs.append(ua)
            self.u_downs[lv] = downs
            if lv > 0:
                self.u_upsized[lv - 1] = self.upsize_u[lv - 1](u)  # (B, F, 2, W_{lv-1}): two finer rows

    # ----------------------------------------------------------------------------------- ul stream, positions
    def _ul_up(self, lv: int, q: int, j: int) -> list[tuple[Tensor, Tensor]]:
        if lv == 0:
            right = (self.ul_init_right.at(self.xs_right.window(j - 1, 1)) if j > 0
                     else torch.zeros_like(self.ul0_down[:, :, :, :1]))
            x_in = self.ul0_down[:, :, :, j:j + 1] + right  # down_shift(...) + right_shift(...)
        else:
            x_in = self.downsize_ul[lv - 1].at(self.last_ul[lv - 1].window(2 * q, 2))
        ups = [(x_in, concat_elu(x_in))]  # the ul at (q, .) with its concat_elu, after each up block
        for k, b in enumerate(self.up_ul[lv]):
            ul = b.at(q, *ups[-1], self.u_ups[lv][k + 1][1][:, :, :, q:q + 1])
            ups.append((ul, concat_elu(ul)))
        if lv < 2:
            self.last_ul[lv].put(q, ups[-1][0])
        return ups

    def _ul_down(self, lv: int, p: int, q: int, skips: list[tuple[Tensor, Tensor]]) -> Tensor:
        if lv == 2:
            ul, ula = skips.pop()
        else:
            ul = self.ul_upsized[lv][:, :, p % 2:p % 2 + 1, q:q + 1]
            ula = concat_elu(ul)
        blocks = self.down_ul[lv]
        for k, b in enumerate(blocks):
            ul = b.at(q, ul, ula, concat_elu_of_cat(self.u_downs[lv][k][:, :, :, q:q + 1], skips.pop()[1]))
            if k + 1 < len(blocks):  # the last ul goes on through elu or an up-sampling alone
                ula = concat_elu(ul)
        if lv > 0:
            up = self.upsize_ul[lv - 1](ul)  # (B, F, 2, 2): the finer level's block (2p.., 2q..)
            if self.ul_upsized[lv - 1] is None:
                self.ul_upsized[lv - 1] = up.new_zeros(up.shape[:3] + (self.shape[2] >> (lv - 1),))
            self.ul_upsized[lv - 1][:, :, :, 2 * q:2 * q + 2] = up
        return ul

    def _params(self, i: int, j: int) -> Tensor:
        """Mixture parameters (B, P) of pixel (i, j), all earlier pixels drawn."""
        ups0 = self._ul_up(0, j, j)
        if i % 2 == 0 and j % 2 == 0:
            ups1 = self._ul_up(1, j // 2, j)
            if i % 4 == 0 and j % 4 == 0:
                self._ul_down(2, i // 4, j // 4, self._ul_up(2, j // 4, j))
            self._ul_down(1, i // 2, j // 2, ups1)
        ul = self._ul_down(0, i, j, ups0)
        return self.nin_out.at(elu(ul))[:, :, 0, 0]  # contiguous: a view of the (B, P) product

    def run(self, x: Tensor, generator: torch.Generator | None, rows: int | None = None) -> Tensor:
        """Fill x (B, C, H, W) int64 in raster order (the first `rows` rows), channels within a pixel; returns x."""
        cfg = self.model.cfg
        _, h, w = self.shape
        h = h if rows is None else rows
        self.u_ups: list = [None] * 3  # per resolution: this row's (u, concat_elu(u)) before and after each up block
        self.u_downs: list = [None] * 3  # per resolution: concat_elu of this row's u after each down block
        self.u_upsized: list = [None] * 2  # per finer resolution: its next two u rows, up-sampled
        self.ul_upsized: list = [None] * 2  # per finer resolution: its next two ul rows, up-sampled
        for i in range(h):
            self._start_row(x, i)
            for j in range(w):
                x[:, :, i, j] = mixture.sample(self._params(i, j), cfg.levels, cfg.nr_mix, cfg.channels, generator)
                self.xs_right.put(j, self.model._input(x[:, :, i:i + 1, j:j + 1]))
        return x
