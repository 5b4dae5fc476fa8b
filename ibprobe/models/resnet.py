"""CIFAR-style ResNet classifier (He et al., 2016) with configurable shortcut depth and initialisation.

`shortcut_depth` k is how many conv layers each residual branch holds, i.e. how many layers a shortcut skips
(Li et al., "Demystifying ResNet", 2016; k = 2 is the standard basic block). `init="zero"` starts every
residual branch at zero output (small weights elsewhere), so each block whose shortcut is the identity is
itself the identity map on its non-negative (post-ReLU) input.

Module paths are the tap names: `stem`, `layer1`, `layer1.0`, `layer1.0.relu_out`, ..., `pool` (pre-logits
features, a flat vector) and `fc`. Every ReLU is its own, non-inplace module, used once, so a captured
activation is never overwritten later in the forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ibprobe.errors import ConfigError

INITS = ("kaiming", "xavier", "orthogonal", "zero")
ZERO_INIT_SCALE = 0.1  # init="zero": non-final branch convs get kaiming weights times this


@dataclass(frozen=True)
class ResNetConfig:
    """Classifier architecture. Widths/blocks/strides are per stage; `blocks` may be one int for all stages,
    `strides` None means 1 for the first stage and 2 for each later one."""

    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] | int = 1
    strides: tuple[int, ...] | None = None
    shortcut_depth: int = 2
    init: str = "kaiming"
    batchnorm: bool = True

    def __post_init__(self):
        widths = _tuple(self.widths, "widths")
        n = len(widths)
        blocks = _tuple(self.blocks, "blocks", n)
        strides = default_strides(n) if self.strides is None else _tuple(self.strides, "strides", n)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "strides", strides)
        if not (len(blocks) == len(strides) == n and n > 0):
            raise ConfigError(f"widths {widths}, blocks {blocks} and strides {strides} must have one entry per stage")
        if min(widths) < 1 or min(blocks) < 1 or min(strides) < 1:
            raise ConfigError("widths, blocks and strides must be positive integers")
        if self.shortcut_depth not in (1, 2, 3):
            raise ConfigError(f"shortcut_depth must be 1, 2 or 3, got {self.shortcut_depth}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.in_channels < 1 or self.num_classes < 1 or self.image_size < 1:
            raise ConfigError("in_channels, num_classes and image_size must be positive")


def default_strides(n: int) -> tuple[int, ...]:
    return (1,) + (2,) * (n - 1)


def _tuple(v, name: str, n: int | None = None) -> tuple[int, ...]:
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return (int(v),) * (n or 1)
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or a comma-separated list of ints, got {v!r}") from None
    return t


def _norm(ch: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(ch) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """relu_out(branch(x) + shortcut(x)); the branch is `depth` 3x3 convs (conv{i}, bn{i}, relu{i} between)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, depth: int = 2, batchnorm: bool = True):
        super().__init__()
        self.depth = depth
        for i in range(1, depth + 1):
            conv = nn.Conv2d(c_in if i == 1 else c_out, c_out, 3, stride=stride if i == 1 else 1, padding=1,
                             bias=not batchnorm)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", _norm(c_out, batchnorm))
            if i < depth:
                self.add_module(f"relu{i}", nn.ReLU(inplace=False))
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = make_projection(c_in, c_out, stride, batchnorm)
        else:
            self.shortcut = nn.Identity()
        self.relu_out = nn.ReLU(inplace=False)

    @property
    def is_identity_shortcut(self) -> bool:
        return isinstance(self.shortcut, nn.Identity)

    def branch_last(self) -> tuple[nn.Conv2d, nn.Module]:
        return getattr(self, f"conv{self.depth}"), getattr(self, f"bn{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, C_in, H, W)
        for i in range(1, self.depth + 1):
            h = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h))  # (B, C_out, H', W')
            if i < self.depth:
                h = getattr(self, f"relu{i}")(h)
        return self.relu_out(h + self.shortcut(x))  # (B, C_out, H', W')


class GlobalPool(nn.Module):
    """Global average pool and flatten: (B, C, H, W) -> (B, C). The pre-logits features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (B, C)


def make_stage(c_in: int, c_out: int, n_blocks: int, stride: int, depth: int, batchnorm: bool) -> nn.Sequential:
    blocks = [BasicBlock(c_in, c_out, stride, depth, batchnorm)]
    blocks += [BasicBlock(c_out, c_out, 1, depth, batchnorm) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def make_projection(c_in: int, c_out: int, stride: int, batchnorm: bool) -> nn.Sequential:
    """The projection shortcut of a block that changes width or resolution: a strided 1x1 conv and its norm."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batchnorm), _norm(c_out, batchnorm))


def make_stem(c_in: int, c_out: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm), _norm(c_out, batchnorm), nn.ReLU(inplace=False))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem -> layer1..layerN -> pool -> fc. forward(x) -> logits (B, num_classes)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = make_stem(cfg.in_channels, w[0], cfg.batchnorm)
        c_in = w[0]
        for s, (c_out, n, stride) in enumerate(zip(w, cfg.blocks, cfg.strides), start=1):
            self.add_module(f"layer{s}", make_stage(c_in, c_out, n, stride, cfg.shortcut_depth, cfg.batchnorm))
            c_in = c_out
        self.num_stages = len(w)
        self.pool = GlobalPool()
        self.fc = nn.Linear(c_in, cfg.num_classes)
        init_weights(self, cfg.init)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{s}") for s in range(1, self.num_stages + 1)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, w0, H, W)
        for stage in self.stages():
            h = stage(h)  # (B, w_s, H_s, W_s)
        return self.pool(h)  # (B, w_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, num_classes)

    def tap_names(self) -> list[str]:
        """Module paths worth tapping, in forward order."""
        return ["stem"] + stage_tap_names(self.stages(), "") + ["pool", "fc"]

    def chain_names(self) -> list[str]:
        """The taps on the main path, in order: each is a function of the one before (a residual branch's inner
        activations are not), so none can hold more information about the input than the one before."""
        return ["stem"] + stage_tap_names(self.stages(), "", branches=False) + ["pool", "fc"]


def stage_tap_names(stages: list[nn.Sequential], prefix: str, branches: bool = True) -> list[str]:
    """Block and stage outputs of `stages`, and with `branches` the activations inside each residual branch."""
    names = []
    for s, stage in enumerate(stages, start=1):
        for b, block in enumerate(stage):
            if isinstance(block, BasicBlock):
                names.append(f"{prefix}layer{s}.{b}")
                for i in range(1, block.depth if branches else 1):
                    names.append(f"{prefix}layer{s}.{b}.relu{i}")
        names.append(f"{prefix}layer{s}")
    return names


def init_weights(model: nn.Module, init: str) -> None:
    """Initialise convs/linears by `init`; BN gamma 1, beta 0. See the module docstring for "zero"."""
    gain = nn.init.calculate_gain("relu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init in ("kaiming", "zero"):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if init == "zero":
        for m in model.modules():
            if isinstance(m, BasicBlock):
                with torch.no_grad():
                    for i in range(1, m.depth):
                        getattr(m, f"conv{i}").weight.mul_(ZERO_INIT_SCALE)
                    conv, bn = m.branch_last()
                    if isinstance(bn, nn.BatchNorm2d):
                        # Zero gamma only (conv stays small): both zero would give zero gradients to both.
                        nn.init.zeros_(bn.weight)
                        conv.weight.mul_(ZERO_INIT_SCALE)
                    else:
                        nn.init.zeros_(conv.weight)
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
