"""Conditional PixelCNN++ decoders (Salimans et al., 2017, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications").

The measuring instrument of ibprobe, but independent of it: this package never imports `ibprobe`.

One decoder is fitted at a time. Fitting several small decoders as one group (torch.func.stack_module_state +
vmap, i.e. grouped convolutions) measured 1.1x the sequential fits on one CPU core at the digits presets'
sizes (8 decoders, 1x8x8, 1x24x3 and 2x32x5, batch 64), 1.6x only at 1x16 with batch 32, too little for a
fitting loop with per-decoder early stopping and resumes; on a GPU it is unmeasured.
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
