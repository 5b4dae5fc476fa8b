"""Decoder files: {"format", "config", "state_dict", "extra"}, tensors and primitives only, written atomically
and read with torch.load(weights_only=True), so a decoder file from elsewhere cannot run code.

Also the one atomic writer (`atomic_write`, path first like every writer built on it) and the two helpers every
file of this project is made with: `cpu_state` (tensors copied to the CPU) and `jsonable` (plain JSON values).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from decoders.config import DecoderConfig
from decoders.errors import DecoderFileError
from decoders.pixelcnn import PixelCNNPP

FORMAT = "decoders.pixelcnnpp/2"
# Format 1 decoders were fitted before log-scales were capped (see mixture.bound_log_scales): the same weights
# give other likelihoods now, so they are refused rather than silently re-read.
_RETIRED = {"decoders.pixelcnnpp/1": "was fitted with uncapped log-scales, so its weights mean something else now"}


def save_decoder(model: PixelCNNPP, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `model` (config + weights, on CPU) and `extra` (primitives/tensors only) to `path` atomically."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "state_dict": cpu_state(model.state_dict()),
        "extra": extra,
    }
    return atomic_torch_save(path, payload)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(f)` on a temp file beside `path`, then os.replace it: a reader never sees a partial file, and a
    failed write (a full disk) leaves no temp file behind and raises an OSError naming `path`.

    The file gets the umask's mode (mkstemp alone would make it 0600), since results are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk fails a write that names no file: name it
            e.filename = str(path)
        raise
    return path


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save(obj) to `path` through atomic_write."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def cpu_state(obj: Any) -> Any:
    """A copy of `obj` (a tensor, or dicts/lists/tuples of them) with every tensor detached on the CPU, so a saved
    state holds no reference to live parameters and loads on any device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON values: dicts with string keys (sorted), lists for tuples and arrays, Python numbers for
    NumPy scalars, strings for paths and any other object."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def load_decoder(path: str | os.PathLike, map_location: Any = "cpu", *,
                 with_extra: bool = False) -> PixelCNNPP | tuple[PixelCNNPP, dict | None]:
    """Rebuild a decoder from `path` (eval mode); with `with_extra`, also return the saved `extra`.

    Raises FileNotFoundError for a missing file and DecoderFileError for anything else wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no decoder file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise DecoderFileError(f"{path} is not a readable decoder file ({type(e).__name__}: {e})") from None
    if isinstance(payload, dict) and payload.get("format") in _RETIRED:
        raise DecoderFileError(f"{path} {_RETIRED[payload['format']]} (format {payload['format']}, this version "
                               f"reads {FORMAT}); fit it again, e.g. delete its folder and rerun")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DecoderFileError(f"{path} is not a decoder file of format {FORMAT} (got {got!r})")
    raw = payload.get("config")
    known = {f.name for f in fields(DecoderConfig)}
    if not isinstance(raw, dict) or set(raw) - known:
        bad = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise DecoderFileError(f"{path}: decoder config has unknown fields {bad!r}")
    try:
        cfg = DecoderConfig(**raw)
    except (TypeError, ValueError) as e:
        raise DecoderFileError(f"{path}: invalid decoder config: {e}") from None
    model = PixelCNNPP(cfg)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as e:
        raise DecoderFileError(f"{path}: weights do not match the saved config: {e}") from None
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    return (model, payload.get("extra")) if with_extra else model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
