"""Model registry: a name and keyword arguments -> an nn.Module that remembers how it was built.

`build_model("resnet", in_shape=(C, H, W), num_classes=10, widths=(16, 32, 64))`. A name containing ":"
(`torchvision:resnet18`, `pkg.mod:callable`) is delegated to `ibprobe.models.external.build_external`.
The built model carries `model.ibprobe_build = {"model", "model_args", "in_shape", "num_classes"}`, JSON-ready,
so a checkpoint or config.json can rebuild it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch.nn as nn

from ibprobe.config import check_int, from_text, parse_value
from ibprobe.errors import ConfigError
from ibprobe.models.autoencoder import ResNetAEConfig, ResNetAutoencoder
from ibprobe.models.external import build_external, external_arg_types
from ibprobe.models.resnet import ResNet, ResNetConfig
from ibprobe.models.rir import RiR, RiRConfig
from ibprobe.rundir.files import jsonable


def _build_resnet(in_shape, num_classes, **args) -> nn.Module:
    return ResNet(ResNetConfig(in_channels=in_shape[0], image_size=in_shape[1], num_classes=num_classes, **args))


def _build_rir(in_shape, num_classes, **args) -> nn.Module:
    return RiR(RiRConfig(in_channels=in_shape[0], image_size=in_shape[1], num_classes=num_classes, **args))


def _build_resnet_ae(in_shape, num_classes, **args) -> nn.Module:
    return ResNetAutoencoder(ResNetAEConfig(in_channels=in_shape[0], image_size=in_shape[1], **args))


# name -> (builder, config class, fields set from in_shape/num_classes rather than model_args)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], type, tuple[str, ...]]] = {
    "resnet": (_build_resnet, ResNetConfig, ("in_channels", "image_size", "num_classes")),
    "resnet_ae": (_build_resnet_ae, ResNetAEConfig, ("in_channels", "image_size")),
    "rir": (_build_rir, RiRConfig, ("in_channels", "image_size", "num_classes")),
}
MODEL_NAMES = tuple(_REGISTRY)


def model_arg_names(name: str) -> list[str]:
    """The model_args a registered model accepts."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)} "
                          f"(or an external spec such as torchvision:resnet18 or pkg.module:callable)")
    _, cfg_cls, implied = _REGISTRY[name]
    return [f.name for f in dataclasses.fields(cfg_cls) if f.name not in implied]


def model_arg_types(name: str) -> tuple[dict[str, str], bool]:
    """({model arg: annotation text}, whether other keywords are passed on unread) of a model spec: our config
    dataclass's fields, a user callable's signature, nothing known of a torchvision builder."""
    if ":" in str(name):
        return external_arg_types(name)
    model_arg_names(name)  # an unknown name is a ConfigError
    _, cfg_cls, implied = _REGISTRY[name]
    return {f.name: str(f.type) for f in dataclasses.fields(cfg_cls) if f.name not in implied}, False


def parse_model_args(name: str, texts: dict[str, str], what: str = "--model-arg") -> dict[str, Any]:
    """`--model-arg K=V` texts parsed once, each as the parameter it goes to needs (ibprobe.config.from_text):
    a value that cannot be what its parameter takes, or a parameter the model does not have, is a ConfigError
    naming it. `num_classes` (which ibprobe also reads) is an integer >= 1 for every model."""
    types, open_ = model_arg_types(name)
    out: dict[str, Any] = {}
    for key, text in texts.items():
        if key == "num_classes":
            out[key] = check_int(f"{what} num_classes", parse_value(str(text)), 1)
        elif key in types:
            out[key] = from_text(f"{what} {key}", types[key], text)
        elif open_:
            out[key] = parse_value(str(text))
        else:
            raise ConfigError(f"{what} {key}: model {name} has no parameter {key!r}; it takes "
                              f"{', '.join(types) or 'none'}")
    return out


def build_model(name: str, *, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                **model_args: Any) -> nn.Module:
    """Build a registered model (or delegate an external spec containing ':'); see the module docstring."""
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 3:
        raise ConfigError(f"in_shape must be (C, H, W), got {in_shape}")
    if ":" in str(name):
        model = build_external(name, in_shape=in_shape, num_classes=int(num_classes), **model_args)
    else:
        valid = model_arg_names(name)
        unknown = sorted(set(model_args) - set(valid))
        if unknown:
            raise ConfigError(f"unknown model arg(s) {', '.join(unknown)} for {name!r}; valid: {', '.join(valid)}")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items()}
        builder = _REGISTRY[name][0]
        try:
            model = builder(in_shape, int(num_classes), **args)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid model args for {name!r}: {e}") from None
    model.ibprobe_build = {"model": str(name), "model_args": jsonable(dict(model_args)),
                           "in_shape": list(in_shape), "num_classes": int(num_classes)}
    return model
