"""ResNet autoencoder: a ResNet encoder, a linear 1x1-conv bottleneck and a mirrored, upsampling decoder.

Used for the autoencoding regime of Darlow & Storkey ("What Information Does a ResNet Compress?"). The
output is a sigmoid image in [0, 1] of the input's shape (C, H, W). Tap names: `encoder.stem`,
`encoder.layer1`, ..., `bottleneck`, `decoder.layer1`, ..., `decoder.head`, `output`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ibprobe.errors import ConfigError
from ibprobe.models.resnet import (INITS, BasicBlock, _tuple, default_strides, init_weights, make_stage, make_stem,
                                   stage_tap_names)


@dataclass(frozen=True)
class ResNetAEConfig:
    """Autoencoder architecture; encoder stages as in ResNetConfig, decoder mirrors them.

    bottleneck_channels: channels of the spatial code at the encoder's lowest resolution.
    """

    in_channels: int = 3
    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] | int = 1
    strides: tuple[int, ...] | None = None  # None: 1 for the first stage, 2 after
    shortcut_depth: int = 2
    init: str = "kaiming"
    batchnorm: bool = True
    bottleneck_channels: int = 8

    def __post_init__(self):
        widths = _tuple(self.widths, "widths")
        n = len(widths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "blocks", _tuple(self.blocks, "blocks", n))
        object.__setattr__(self, "strides", default_strides(n) if self.strides is None
                           else _tuple(self.strides, "strides", n))
        if not len(self.blocks) == len(self.strides) == n:
            raise ConfigError(f"widths {widths}, blocks {self.blocks} and strides {self.strides} need one entry per stage")
        if self.shortcut_depth not in (1, 2, 3):
            raise ConfigError(f"shortcut_depth must be 1, 2 or 3, got {self.shortcut_depth}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.bottleneck_channels < 1 or min(widths) < 1 or min(self.blocks) < 1 or min(self.strides) < 1:
            raise ConfigError("bottleneck_channels, widths, blocks and strides must be positive")
        total = 1
        for s in self.strides:
            total *= s
        if self.image_size % total:
            raise ConfigError(f"image_size {self.image_size} must be divisible by the product of strides {self.strides}")


class Encoder(nn.Module):
    def __init__(self, cfg: ResNetAEConfig):
        super().__init__()
        self.stem = make_stem(cfg.in_channels, cfg.widths[0], cfg.batchnorm)
        c_in = cfg.widths[0]
        for s, (c_out, n, stride) in enumerate(zip(cfg.widths, cfg.blocks, cfg.strides), start=1):
            self.add_module(f"layer{s}", make_stage(c_in, c_out, n, stride, cfg.shortcut_depth, cfg.batchnorm))
            c_in = c_out
        self.num_stages = len(cfg.widths)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{s}") for s in range(1, self.num_stages + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, w0, H, W)
        for stage in self.stages():
            h = stage(h)  # (B, w_s, H_s, W_s)
        return h


class Decoder(nn.Module):
    """Mirror of the encoder: decoder.layer j undoes encoder stage N+1-j (blocks at its width, then upsample)."""

    def __init__(self, cfg: ResNetAEConfig):
        super().__init__()
        n = len(cfg.widths)
        c_in = cfg.bottleneck_channels
        for j in range(1, n + 1):
            i = n - j  # mirrored encoder stage (0-based)
            stage = make_stage(c_in, cfg.widths[i], cfg.blocks[i], 1, cfg.shortcut_depth, cfg.batchnorm)
            if cfg.strides[i] > 1:
                stage.add_module("up", nn.Upsample(scale_factor=cfg.strides[i], mode="nearest"))
            self.add_module(f"layer{j}", stage)
            c_in = cfg.widths[i]
        self.num_stages = n
        self.head = nn.Conv2d(c_in, cfg.in_channels, 3, padding=1)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{s}") for s in range(1, self.num_stages + 1)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z  # (B, K, H', W')
        for stage in self.stages():
            h = stage(h)  # (B, w, H'', W'')
        return self.head(h)  # (B, C, H, W) logits


class ResNetAutoencoder(nn.Module):
    """forward(x) -> reconstruction in [0, 1], shape (B, C, H, W)."""

    def __init__(self, cfg: ResNetAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.bottleneck = nn.Conv2d(cfg.widths[-1], cfg.bottleneck_channels, 1)
        self.decoder = Decoder(cfg)
        self.output = nn.Sigmoid()
        init_weights(self, cfg.init)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.encoder(x))  # (B, K, H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.decoder(self.encode(x)))  # (B, C, H, W)

    def tap_names(self, branches: bool = True) -> list[str]:
        names = ["encoder.stem"] + stage_tap_names(self.encoder.stages(), "encoder.", branches)
        names.append("bottleneck")
        names += stage_tap_names(self.decoder.stages(), "decoder.", branches)
        return names + ["decoder.head", "output"]

    def chain_names(self) -> list[str]:
        """The taps on the main path, in order: each is a function of the one before."""
        return self.tap_names(branches=False)


__all__ = ["ResNetAEConfig", "ResNetAutoencoder", "BasicBlock"]
