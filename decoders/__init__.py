"""Conditional PixelCNN++ decoders (Salimans et al., 2017, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications").

The measuring instrument of ibprobe, but independent of it: this package never imports `ibprobe`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DecoderConfig": "decoders.config",
    "PixelCNNPP": "decoders.pixelcnn",
    "save_decoder": "decoders.io",
    "load_decoder": "decoders.io",
    "FitConfig": "decoders.fitting",
    "FitResult": "decoders.fitting",
    "fit": "decoders.fitting",
    "NonFiniteLossError": "decoders.fitting",
    "check_images": "decoders.inputs",
    "evaluate_nll_bits": "decoders.fitting",
    "DecoderError": "decoders.errors",
    "DecoderConfigError": "decoders.errors",
    "DecoderInputError": "decoders.errors",
    "DecoderFileError": "decoders.errors",
    "FitStateError": "decoders.errors",
    "IncompatibleWeightsError": "decoders.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'decoders' has no attribute {name!r}")
