"""Layers of PixelCNN++ (Salimans et al., 2017) as nn.Modules: shifted convolutions, weight normalisation,
the 1x1 "network in network" conv, dropout and the gated residual block.

The causal ("masked") convolutions are ordinary convolutions on an input padded on the top (and left)
only: a down-shifted conv sees its own row and the rows above, a down-right-shifted conv also only the
columns to its left; `down_shift`/`right_shift` (kernels.py) then exclude the current pixel. No weight
masks, so cuDNN and channels_last work unchanged. (Symmetric conv padding with the surplus rows cut off avoids
the padded copy but computes up to (H+1)(W+1)/HW more outputs; on CPU at 8x8 it measured ~20% slower.)

The arithmetic the modules apply (conv2d, conv_transpose2d_s2, concat_elu, the gate; exact_kernels) is in
decoders/kernels.py, so that this file reads as the architecture: which weights, which kernel, in which order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from decoders.kernels import concat_elu, conv2d, conv_transpose2d_s2, gate


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
