"""ResNet in ResNet (Targ, Almeida & Lyman, "Resnet in Resnet: Generalizing Residual Architectures", 2016).

Every block carries two streams of feature maps: a residual stream r, which has shortcuts, and a transient stream
t, which has none. The unit is Targ et al.'s generalized residual layer (their "generalized residual block",
Section 2, Equation 1), four 3x3 convolutions r->r, t->r, r->t, t->t and the residual stream's own shortcut:
    r_i = σ(conv{i}_rr(r_{i-1}) + conv{i}_tr(t_{i-1}) + shortcut{i}(r_{i-1}))
    t_i = σ(conv{i}_rt(r_{i-1}) + conv{i}_tt(t_{i-1}))
where σ is BatchNorm then ReLU, each stream with its own (bn{i}_r, relu{i}_r; bn{i}_t, relu{i}_t), applied after
the sum ("Same-stream and cross-stream activations are summed (along with the shortcut connection for the
residual stream) before applying batch normalization and ReLU nonlinearities", Section 2). shortcut{i} is the
identity, or where the layer changes the width or the resolution a projection (a strided 1x1 convolution and
its BatchNorm, "a projection as in He et al. (2015b)"). The transient stream has no shortcut.

An RiR block (`shortcut_depth` k >= 2; Targ et al.'s RiR is k = 2) is a ResNet block whose k convolutions are
generalized residual layers ("Replacing each of the convolutional layers within a residual block from the
original ResNet with a generalized residual block", Section 2), keeping that block's outer shortcut around them:
    r_out = relu_out(r_k + shortcut(r_0)),   t_out = t_k,
the outer shortcut (identity, or a projection where the block changes shape) added to the RESIDUAL stream only,
AFTER the last layer's σ and followed by a ReLU, as the original ResNet block adds its shortcut to the branch's
output and then applies a ReLU. Which stream the outer shortcut feeds and where it joins is shown only in Targ et
al.'s Figure 1, which we could not read: this placement is our reading of it (public implementations differ: one
adds it to both streams after σ, others leave it out). shortcut_depth 1 is a stack of single generalized residual
layers (Targ et al.'s generalized residual network), with no outer shortcut.

What a block reduces to: with the cross-stream and transient convolutions at zero, the residual stream is a
ResNet of one-convolution residual units r -> relu(bn(conv(r) + shortcut(r))) inside an outer shortcut, and the
transient stream no longer reaches it; without shortcuts (shortcut=False removes every one, inner and outer) a
block is a plain two-stream CNN.

The streams travel between blocks as ONE tensor, r and t concatenated on channels (residual first), so
every block and stage returns a tensor and can be tapped. Tap names: `stem`, `layerS.B` (both streams),
`layerS.residual`, `layerS.transient` (the stage's last block's streams, split), `layerS`, `pool`, `fc`.
Every ReLU is its own non-inplace module, used once. Config and inits follow ibprobe.models.resnet, except
init="zero": the convolutions INTO the residual stream (rr, tr) start at zero, so each generalized layer starts as
σ(shortcut(r)), the identity on a post-ReLU residual stream up to its BatchNorm, and a block with an outer
shortcut as twice the identity (its inner path plus its outer shortcut); the transient stream's convolutions keep
their kaiming weights, so it carries signal from the start.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ibprobe.errors import ConfigError
from ibprobe.models.resnet import (INITS, GlobalPool, _norm, _tuple, default_strides, init_weights,
                                   make_projection, make_stem)


@dataclass(frozen=True)
class RiRConfig:
    """Two-stream classifier. Widths (residual stream), transient_widths (None: the same), blocks and strides are
    per stage, as in ResNetConfig; the stem and head see both streams."""

    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)
    transient_widths: tuple[int, ...] | None = None
    blocks: tuple[int, ...] | int = 1
    strides: tuple[int, ...] | None = None
    shortcut_depth: int = 2
    init: str = "kaiming"
    batchnorm: bool = True

    def __post_init__(self):
        widths = _tuple(self.widths, "widths")
        n = len(widths)
        trans = widths if self.transient_widths is None else _tuple(self.transient_widths, "transient_widths", n)
        blocks = _tuple(self.blocks, "blocks", n)
        strides = default_strides(n) if self.strides is None else _tuple(self.strides, "strides", n)
        for k, v in (("widths", widths), ("transient_widths", trans), ("blocks", blocks), ("strides", strides)):
            object.__setattr__(self, k, v)
        if not (len(trans) == len(blocks) == len(strides) == n and n > 0):
            raise ConfigError(f"widths {widths}, transient_widths {trans}, blocks {blocks} and strides {strides} "
                              f"must have one entry per stage")
        if min(widths + trans + blocks + strides) < 1:
            raise ConfigError("widths, transient_widths, blocks and strides must be positive integers")
        if self.shortcut_depth not in (1, 2, 3):
            raise ConfigError(f"shortcut_depth must be 1, 2 or 3, got {self.shortcut_depth}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.in_channels < 1 or self.num_classes < 1 or self.image_size < 1:
            raise ConfigError("in_channels, num_classes and image_size must be positive")


def _conv(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class RiRBlock(nn.Module):
    """`depth` generalized residual layers on the concatenated state (B, r_in + t_in, H, W) -> (B, r_out + t_out,
    H', W'), with the outer shortcut on the residual stream when depth >= 2 (see the module docstring).

    shortcut=False removes every shortcut, each layer's and the outer one (a plain two-stream CNN block).
    """

    def __init__(self, r_in: int, t_in: int, r_out: int, t_out: int, stride: int = 1, depth: int = 2,
                 batchnorm: bool = True, shortcut: bool = True):
        super().__init__()
        self.depth, self.r_in, self.t_in, self.r_out, self.t_out = depth, r_in, t_in, r_out, t_out
        for i in range(1, depth + 1):
            ri, ti, s = (r_in, t_in, stride) if i == 1 else (r_out, t_out, 1)
            # one bias per output stream when there is no BatchNorm to absorb it
            self.add_module(f"conv{i}_rr", _conv(ri, r_out, s, not batchnorm))
            self.add_module(f"conv{i}_tr", _conv(ti, r_out, s, False))
            self.add_module(f"conv{i}_rt", _conv(ri, t_out, s, not batchnorm))
            self.add_module(f"conv{i}_tt", _conv(ti, t_out, s, False))
            self.add_module(f"shortcut{i}", _shortcut(ri, r_out, s, batchnorm) if shortcut else None)
            self.add_module(f"bn{i}_r", _norm(r_out, batchnorm))
            self.add_module(f"bn{i}_t", _norm(t_out, batchnorm))
            self.add_module(f"relu{i}_r", nn.ReLU(inplace=False))
            self.add_module(f"relu{i}_t", nn.ReLU(inplace=False))
        outer = shortcut and depth >= 2
        self.shortcut = _shortcut(r_in, r_out, stride, batchnorm) if outer else None
        self.relu_out = nn.ReLU(inplace=False) if outer else None

    def layer_shortcut(self, i: int) -> nn.Module | None:
        """Layer i's own shortcut on the residual stream (None without shortcuts)."""
        return getattr(self, f"shortcut{i}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r0, t = h.split([self.r_in, self.t_in], dim=1)  # (B, r_in, H, W), (B, t_in, H, W)
        r = r0
        for i in range(1, self.depth + 1):
            c = lambda name, x: getattr(self, f"conv{i}_{name}")(x)  # noqa: E731
            z_r = c("rr", r) + c("tr", t)  # (B, r_out, H', W')
            if self.layer_shortcut(i) is not None:
                z_r = z_r + self.layer_shortcut(i)(r)
            z_t = c("rt", r) + c("tt", t)  # (B, t_out, H', W')
            r = getattr(self, f"relu{i}_r")(getattr(self, f"bn{i}_r")(z_r))
            t = getattr(self, f"relu{i}_t")(getattr(self, f"bn{i}_t")(z_t))
        if self.shortcut is not None:
            r = self.relu_out(r + self.shortcut(r0))  # the outer ResNet shortcut, residual stream only
        return torch.cat([r, t], dim=1)  # (B, r_out + t_out, H', W')


def _shortcut(c_in: int, c_out: int, stride: int, batchnorm: bool) -> nn.Module:
    """The identity, or a projection (strided 1x1 conv and its norm) where the width or resolution changes."""
    return make_projection(c_in, c_out, stride, batchnorm) if stride != 1 or c_in != c_out else nn.Identity()


class RiRStage(nn.Module):
    """Blocks `0`, `1`, ... then the `residual` and `transient` taps (identities on the last block's streams)."""

    def __init__(self, blocks: list[RiRBlock]):
        super().__init__()
        for b, block in enumerate(blocks):
            self.add_module(str(b), block)
        self.n_blocks = len(blocks)
        self.split = (blocks[-1].r_out, blocks[-1].t_out)
        self.residual = nn.Identity()
        self.transient = nn.Identity()

    def blocks(self) -> list[RiRBlock]:
        return [getattr(self, str(b)) for b in range(self.n_blocks)]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks():
            h = block(h)  # (B, r + t, H, W)
        r, t = h.split(self.split, dim=1)
        return torch.cat([self.residual(r), self.transient(t)], dim=1)  # (B, r + t, H, W)


class RiR(nn.Module):
    """stem -> layer1..layerN (two streams) -> pool -> fc. forward(x) -> logits (B, num_classes)."""

    def __init__(self, cfg: RiRConfig):
        super().__init__()
        self.cfg = cfg
        r_in, t_in = cfg.widths[0], cfg.transient_widths[0]
        self.stem = make_stem(cfg.in_channels, r_in + t_in, cfg.batchnorm)
        for s, (r, t, n, stride) in enumerate(zip(cfg.widths, cfg.transient_widths, cfg.blocks, cfg.strides), 1):
            blocks = [RiRBlock(r_in, t_in, r, t, stride, cfg.shortcut_depth, cfg.batchnorm)]
            blocks += [RiRBlock(r, t, r, t, 1, cfg.shortcut_depth, cfg.batchnorm) for _ in range(n - 1)]
            self.add_module(f"layer{s}", RiRStage(blocks))
            r_in, t_in = r, t
        self.num_stages = len(cfg.widths)
        self.pool = GlobalPool()
        self.fc = nn.Linear(r_in + t_in, cfg.num_classes)
        init_weights(self, cfg.init)
        if cfg.init == "zero":
            _zero_init(self)

    def stages(self) -> list[RiRStage]:
        return [getattr(self, f"layer{s}") for s in range(1, self.num_stages + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, r0 + t0, H, W)
        for stage in self.stages():
            h = stage(h)  # (B, r_s + t_s, H_s, W_s)
        return self.fc(self.pool(h))  # (B, num_classes)

    def tap_names(self) -> list[str]:
        """Module paths worth tapping, in forward order."""
        names = ["stem"]
        for s, stage in enumerate(self.stages(), start=1):
            names += [f"layer{s}.{b}" for b in range(stage.n_blocks)]
            names += [f"layer{s}.residual", f"layer{s}.transient", f"layer{s}"]
        return names + ["pool", "fc"]

    def chain_names(self) -> list[str]:
        """The taps on the main path, in order, each a function of the one before: block and stage outputs (both
        streams together). A stream alone is not: the next block reads both."""
        names = ["stem"]
        for s, stage in enumerate(self.stages(), start=1):
            names += [f"layer{s}.{b}" for b in range(stage.n_blocks)] + [f"layer{s}"]
        return names + ["pool", "fc"]


def _zero_init(model: nn.Module) -> None:
    """Every convolution into the residual stream (rr and tr, weights and biases) starts at zero, so each
    generalized layer's residual stream starts as σ(shortcut(r)); the transient stream's keep their init."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RiRBlock):
                for i in range(1, m.depth + 1):
                    for name in ("rr", "tr"):
                        conv = getattr(m, f"conv{i}_{name}")
                        nn.init.zeros_(conv.weight)
                        if conv.bias is not None:
                            nn.init.zeros_(conv.bias)


__all__ = ["RiR", "RiRConfig", "RiRBlock", "RiRStage"]
