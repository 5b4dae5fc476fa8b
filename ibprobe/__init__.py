"""ibprobe: what does each layer of an image classifier keep about its input, and what does it forget?

Estimates I(X;H) with conditional PixelCNN++ decoders and I(Y;H) with probe classifiers, for any layer at
any checkpoint (Darlow & Storkey, "What Information Does a ResNet Compress?").

The notebook API, imported lazily so that `import ibprobe` stays cheap:

    estimate_mi, paired_mi, paired_difference      the decoder estimate of I(X;H) (bits per image, 95% CI)
    probe_i_yh                                     I(Y;H) from a probe classifier
    binning_mi, kde_mi                             the binning and KDE baselines
    kid                                            the Kernel Inception Distance of two sets of features
    run_preset, Preset                             train, measure and draw a whole run into a folder
    read_table, info_plane                         a run folder's tables, and its information plane

Every estimator returns a frozen dataclass with its quantity (`bits` for information; `kid` for KID), a CI where
there is one (`ci_low`, `ci_high`) and `n`, the number of images it was computed on.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "estimate_mi": "ibprobe.estimators.decoder",
    "paired_mi": "ibprobe.estimators.decoder",
    "paired_difference": "ibprobe.estimators.decoder",
    "MIEstimate": "ibprobe.estimators.decoder",
    "Difference": "ibprobe.estimators.decoder",
    "probe_i_yh": "ibprobe.estimators.probe",
    "ProbeEstimate": "ibprobe.estimators.probe",
    "binning_mi": "ibprobe.estimators.binning",
    "kde_mi": "ibprobe.estimators.kde",
    "BaselineEstimate": "ibprobe.estimators.binning",
    "kid": "ibprobe.estimators.kid",
    "KidResult": "ibprobe.estimators.kid",
    "run_preset": "ibprobe.pipeline",
    "Preset": "ibprobe.presets",
    "read_table": "ibprobe.rundir.tables",
    "info_plane": "ibprobe.report.plots",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ibprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
