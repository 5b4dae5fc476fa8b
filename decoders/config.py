"""DecoderConfig: everything needed to build a PixelCNN++ decoder, saved beside every decoder file."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from decoders.errors import DecoderConfigError

MAX_LEVELS = 256  # samples are uint8
VECTOR_CONDS = ("linear", "mlp")  # DecoderConfig.vector_cond


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise DecoderConfigError(f"DecoderConfig.{name} must be a tuple of ints, got {value!r}") from None
    if any(isinstance(v, bool) for v in value) or any(float(v) != int(v) for v in value):
        raise DecoderConfigError(f"DecoderConfig.{name} must be a tuple of ints, got {value!r}")
    return out


@dataclass(frozen=True)
class DecoderConfig:
    """A (conditional) PixelCNN++ decoder over integer images with `levels` intensity levels.

    Args:
        image_shape: (C, H, W); H and W multiples of 4 (two 2x down-samplings).
        levels: L; images hold integers in [0, L-1], 2 <= L <= 256.
        nr_resnet: gated residual blocks per resolution and stream in the up pass.
        nr_filters: channels of both streams.
        nr_mix: logistic mixture components per pixel.
        dropout: dropout probability inside each gated block (train mode only).
        code_shape: None (unconditional), (D,) for a vector code, (C', H', W') for a spatial code of any size.
        cond_filters: width of the conditioning network: its channels for a spatial code, its hidden units for a
            vector code under vector_cond="mlp" (unused for unconditional decoders).
        vector_cond: how a vector code reaches the blocks: "linear" (each block's own linear map of the code to a
            per-channel bias) or "mlp" (two ELU layers of cond_filters units first, so that a bias can be a
            non-monotone function of a scalar code, such as bit 0 of a template id T given as one number).
    """

    image_shape: tuple[int, int, int]
    levels: int = 256
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_mix: int = 10
    dropout: float = 0.5
    code_shape: tuple[int, ...] | None = None
    cond_filters: int = 64
    vector_cond: str = "linear"

    def __post_init__(self) -> None:
        shape = _int_tuple(self.image_shape, "image_shape")
        if len(shape) != 3 or min(shape) < 1:
            raise DecoderConfigError(f"DecoderConfig.image_shape must be (C, H, W) with positive sizes, got "
                                     f"{self.image_shape!r}")
        if shape[1] % 4 or shape[2] % 4:
            raise DecoderConfigError(f"DecoderConfig.image_shape {shape}: H and W must be multiples of 4 "
                             f"(the network halves the resolution twice); pad or crop the images")
        object.__setattr__(self, "image_shape", shape)
        code = self.code_shape
        if code is not None:
            code = _int_tuple(code, "code_shape")
            if len(code) not in (1, 3) or min(code) < 1:
                raise DecoderConfigError(f"DecoderConfig.code_shape must be None, (D,) or (C', H', W') with positive "
                                         f"sizes, "
                                 f"got {self.code_shape!r}")
            object.__setattr__(self, "code_shape", code)
        for name, lo in (("levels", 2), ("nr_resnet", 1), ("nr_filters", 1), ("nr_mix", 1), ("cond_filters", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < lo:
                raise DecoderConfigError(f"DecoderConfig.{name} must be an integer >= {lo}, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.vector_cond not in VECTOR_CONDS:
            raise DecoderConfigError(f"DecoderConfig.vector_cond must be one of {', '.join(VECTOR_CONDS)}, got "
                                     f"{self.vector_cond!r}")
        if self.levels > MAX_LEVELS:
            raise DecoderConfigError(f"DecoderConfig.levels must be <= {MAX_LEVELS} (samples are uint8), got "
                                     f"{self.levels}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise DecoderConfigError(f"DecoderConfig.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def num_subpixels(self) -> int:
        """D = C*H*W, the divisor for bits/dim."""
        c, h, w = self.image_shape
        return c * h * w

    @property
    def code_kind(self) -> str:
        """'none', 'vector' or 'spatial'."""
        if self.code_shape is None:
            return "none"
        return "vector" if len(self.code_shape) == 1 else "spatial"

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples as lists); DecoderConfig(**d) rebuilds it."""
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["code_shape"] = None if self.code_shape is None else list(self.code_shape)
        return d
