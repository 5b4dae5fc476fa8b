"""Models that are not ours: torchvision classifiers and the user's own `package.module:callable`.

`build_external(spec, in_shape=..., num_classes=..., **model_args)` is what `build_model` calls for any name
containing ":". The built model is randomly initialised; weights come from the user's checkpoints
(ibprobe.rundir.checkpoints). Pretrained weights are never downloaded.

Input handling (the same for every spec): the model sees the data set's images at their native resolution,
as float in [0, 1] (optionally normalised per channel). Nothing is resized, because I(X;H) is about the
images as stored. ResNets and most torchvision classifiers end in adaptive pooling, so 32x32 (or even 8x8)
inputs work; a few (e.g. inception_v3, or a ViT without `image_size=`) need larger inputs and fail at the
first forward pass with a clear error.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Any

from torch import nn

from ibprobe.config import annotation_text
from ibprobe.errors import ConfigError

TORCHVISION = "torchvision"


def build_external(spec: str, *, in_shape: tuple[int, int, int], num_classes: int, **model_args: Any) -> nn.Module:
    """Build a model from `torchvision:NAME` or `package.module:callable` (also `path/to/file.py:callable`).

    Args:
        spec: "torchvision:resnet18", "mypkg.nets:make_net", "nets.py:Net".
        in_shape: (C, H, W) of the images the model will see.
        num_classes: output classes (torchvision models; user callables that declare `num_classes`).
        model_args: keyword arguments for the constructor, as given (--model-arg K=V).
    Raises:
        ConfigError: unknown name, import failure, bad arguments, or a callable that returns no nn.Module.
    """
    prefix, sep, name = str(spec).partition(":")
    if not sep or not prefix or not name:
        raise ConfigError(f"model spec {spec!r} must be 'torchvision:NAME' or 'package.module:callable'")
    if prefix == TORCHVISION:
        return build_torchvision(name, in_shape=in_shape, num_classes=num_classes, **model_args)
    return build_user_model(prefix, name, in_shape=in_shape, num_classes=num_classes, **model_args)


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (no detection/segmentation/video)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def build_torchvision(name: str, *, in_shape: tuple[int, int, int], num_classes: int, **model_args: Any) -> nn.Module:
    """torchvision.models.get_model(name, weights=None, num_classes=...), adapted to `in_shape[0]` channels.

    If the images do not have 3 channels, the first convolution is replaced by a fresh one with C input channels
    and otherwise the same settings (out-channels, kernel, stride, padding, dilation, bias). Image size is not
    adapted (see the module docstring).
    """
    import torchvision.models as tvm

    names = torchvision_classifiers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; e.g. {', '.join(names[:5])}"
        what = "is not a classification model" if name in tvm.list_models() else "is not a torchvision model"
        raise ConfigError(f"torchvision:{name} {what}{hint}")
    if "weights" in model_args and model_args["weights"] is not None:
        raise ConfigError("torchvision pretrained weights are never downloaded; pass your weights with --checkpoints")
    model_args.pop("weights", None)
    model_args.setdefault("num_classes", num_classes)
    try:
        model = tvm.get_model(name, weights=None, **model_args)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"torchvision:{name} rejected the model arguments {model_args}: {e}") from None
    c = int(in_shape[0])
    if c != 3:
        adapt_input_channels(model, c)
    return model


def adapt_input_channels(model: nn.Module, channels: int) -> str:
    """Replace the first Conv2d that takes 3 channels by one taking `channels`; return its module path."""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3 and mod.groups == 1:
            new = nn.Conv2d(
                channels,
                mod.out_channels,
                kernel_size=mod.kernel_size,
                stride=mod.stride,
                padding=mod.padding,
                dilation=mod.dilation,
                bias=mod.bias is not None,
                padding_mode=mod.padding_mode,
            )
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, new)
            return path
    raise ConfigError(f"cannot adapt this model to {channels}-channel images: it has no 3-channel first Conv2d")


def _import_module(module: str) -> Any:
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model file {module} does not exist (relative to {os.getcwd()})")
        name = f"_ibprobe_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    return importlib.import_module(module)


def resolve_user_callable(module: str, attr: str) -> Any:
    """The callable `attr` of the user's `module` (imported from the current folder, or a file.py)."""
    spec = f"{module}:{attr}"
    try:
        mod = _import_module(module)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's import failed; say why in one line
        raise ConfigError(
            f"could not import {module!r} for model {spec} (current folder {os.getcwd()}): {type(e).__name__}: {e}"
        ) from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n, None))]
            close = difflib.get_close_matches(attr, public, n=5, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it defines {', '.join(public[:10]) or 'none'}"
            raise ConfigError(f"module {module!r} has no callable {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{spec} is not callable")
    return obj


def external_arg_types(spec: str) -> tuple[dict[str, str], bool]:
    """({parameter: annotation text (see ibprobe.config.typed)}, whether it takes other keywords too) of an
    external spec's callable: a user callable's signature, its annotations or else its defaults' types. A
    torchvision builder passes its keywords on unread, so nothing is known of it: ({}, True)."""
    prefix, sep, name = str(spec).partition(":")
    if not sep or not prefix or not name:
        raise ConfigError(f"model spec {spec!r} must be 'torchvision:NAME' or 'package.module:callable'")
    if prefix == TORCHVISION:
        return {}, True
    return callable_arg_types(resolve_user_callable(prefix, name))


def callable_arg_types(obj: Any) -> tuple[dict[str, str], bool]:
    """({keyword parameter: annotation text}, takes **kwargs) of a callable; see external_arg_types."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}, True
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: read them as written
        hints = {}
    types, open_ = {}, False
    for p in params.values():
        if p.kind is p.VAR_KEYWORD:
            open_ = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            ann = hints.get(p.name, p.annotation)
            if ann is inspect.Parameter.empty:
                ann = _default_type(p.default)
            types[p.name] = annotation_text(ann)
    return types, open_


def _default_type(default: Any) -> str:
    """The type a parameter's default suggests: 'int' for 4, 'tuple[int,...]' for (16, 32); 'Any' for None."""
    if isinstance(default, (bool, int, float, str)):
        return type(default).__name__
    if isinstance(default, (tuple, list)) and default and len({type(v) for v in default}) == 1 and \
            isinstance(default[0], (bool, int, float, str)):
        return f"tuple[{type(default[0]).__name__},...]"
    return "Any"


def build_user_model(
    module: str, attr: str, *, in_shape: tuple[int, int, int], num_classes: int, **model_args: Any
) -> nn.Module:
    """Import `module` (current folder on sys.path) and call `attr(**model_args)`.

    Only `model_args` are passed, plus `num_classes`, `in_channels` and `in_shape` when the callable declares a
    parameter of exactly that name and `model_args` does not already set it. A constructor that fails is the
    user's arguments' (or code's) fault: one ConfigError that names them.
    """
    spec = f"{module}:{attr}"
    obj = resolve_user_callable(module, attr)
    kwargs = dict(model_args)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("num_classes", num_classes), ("in_channels", int(in_shape[0])), ("in_shape", tuple(in_shape))):
        if key in params and key not in kwargs:
            kwargs[key] = value
    try:
        model = obj(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor refused these arguments
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"{spec} could not be called with {kwargs}: {type(e).__name__}: {msg}; check --model-arg") \
            from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
