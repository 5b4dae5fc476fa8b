"""Named end-to-end configurations for `ibprobe run`: what to train, which layers to tap, how big the decoders are.

- digits-quick: the embedded default (sklearn digits, 8x8, 17 levels); minutes on a laptop CPU.
- digits: fuller CPU study, both regimes (classify and autoencode), more layers, and checkpoints log-spaced over the
  run's steps (`checkpoint_schedule=log:8`: steps 0, 1, 3, 9, 27, 80, 235, 690 of 30 epochs of 23 steps), so the
  first stage, early and short, is seen.
- cifar10-paper / cinic10-paper: Darlow & Storkey's scale for a GPU: PixelCNN++ 5x160x10 decoders on 32x32x3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ibprobe.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """One `ibprobe run` configuration. `train` holds TrainConfig fields; `decoder`/`fit` override the defaults."""

    name: str
    description: str
    train: dict
    layers: dict  # regime -> tuple of layer names
    regimes: tuple = ("classify",)
    autoencoder: str = "resnet_ae"  # the model of the autoencode regime (same model_args as `train`)
    decoder: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    init_epochs: int | None = None  # epochs of q0(x), the shared start of paired fitting (None: fit epochs)
    gallery_layers: tuple | None = None  # None: every layer
    gallery_epochs: tuple | None = None  # None: every checkpoint


_DIGITS_NET = {"widths": (16, 32, 64), "blocks": (1, 1, 1)}


def _paper(dataset: str, description: str) -> Preset:
    """Darlow & Storkey's scale on a 32x32x3 data set: a ResNet-18-sized net, 200 epochs, 5x160x10 decoders."""
    return Preset(
        name=f"{dataset}-paper",
        description=description,
        train=dict(dataset=dataset, model="resnet",
                   model_args={"widths": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)}, epochs=200,
                   checkpoint_epochs=(0, 1, 10, 100, 200), optimizer="sgd", lr=0.1, batch_size=128, augment=True),
        layers={"classify": ("layer1", "layer2", "layer3", "layer4")},
        decoder=dict(nr_resnet=5, nr_filters=160, nr_mix=10, dropout=0.5),
        fit=dict(epochs=100, batch_size=64, lr=2e-4, patience=10),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="digits-quick",
            description="embedded sklearn digits, 3 layers x 4 checkpoints, tiny decoders; about 5 min on 2 CPU cores",
            train=dict(dataset="digits", model="resnet", model_args=_DIGITS_NET, epochs=8,
                       checkpoint_epochs=(0, 1, 3, 8), optimizer="adam", lr=3e-3, batch_size=64),
            layers={"classify": ("layer1", "layer2", "pool")},
            decoder=dict(nr_resnet=1, nr_filters=24, nr_mix=3, dropout=0.0),
            fit=dict(epochs=4, batch_size=64, lr=4e-3, lr_decay=0.9, patience=2),
            init_epochs=8,
            gallery_epochs=(0, 8),
        ),
        Preset(
            name="digits",
            description="embedded digits, classify and autoencode, 5 and 4 layers x 8 log-spaced checkpoints "
                        "(step 0 and 3 inside the first epoch); its time with this schedule is not measured yet",
            train=dict(dataset="digits", model="resnet", model_args=_DIGITS_NET, epochs=30,
                       checkpoint_schedule="log:8", optimizer="adam", lr=3e-3, batch_size=64),
            layers={
                "classify": ("stem", "layer1", "layer2", "layer3", "pool"),
                "autoencode": ("encoder.layer1", "encoder.layer2", "bottleneck", "decoder.layer1"),
            },
            regimes=("classify", "autoencode"),
            decoder=dict(nr_resnet=2, nr_filters=32, nr_mix=5, dropout=0.0),
            fit=dict(epochs=4, batch_size=64, lr=4e-3, lr_decay=0.9, patience=2),
            init_epochs=12,
            gallery_epochs=(0, 30),
        ),
        _paper("cifar10", "CIFAR-10 from --data-root at Darlow & Storkey's scale: PixelCNN++ 5x160x10; needs a GPU"),
        _paper("cinic10", "CINIC-10 (ImageFolder at --data-root) at Darlow & Storkey's scale; needs a GPU"),
    ]
}

DEFAULT_PRESET = "digits-quick"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
