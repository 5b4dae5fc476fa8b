"""ibprobe: what does each layer of an image classifier keep about its input, and what does it forget?

Estimates I(X;H) with conditional PixelCNN++ decoders and I(Y;H) with probe classifiers, for any layer at
any checkpoint (Darlow & Storkey, "What Information Does a ResNet Compress?").
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["estimate_mi", "MIEstimate", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import ibprobe` stays cheap and the CLI starts fast.
    if name in ("estimate_mi", "MIEstimate"):
        from ibprobe import estimate  # lazy, so `import ibprobe` stays cheap and the CLI starts fast

        return getattr(estimate, name)
    raise AttributeError(f"module 'ibprobe' has no attribute {name!r}")
