"""Small shared helpers: seeding, atomic writes, device resolution, names, key=value parsing."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from decoders.io import atomic_torch_save as _atomic_torch_save
from decoders.io import atomic_write
from ibprobe.errors import ConfigError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU generator seeded the same for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` via a temp file and os.replace, so readers never see a partial file."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save through a temp file and os.replace (decoders.io's, with ibprobe's path-first order)."""
    return _atomic_torch_save(obj, path)


def atomic_np_save(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array))


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu. Asking for cuda without one is a user error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return dev


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str) -> str:
    """Turn a layer name (module path) into a safe single folder name.

    Keeps letters, digits, '.', '_' and '-'; everything else becomes '_'. A name made only of dots
    (which would walk up the tree) is prefixed, so the result can never leave its parent folder.
    """
    s = _SAFE.sub("_", str(name)).strip()
    if not s or set(s) <= {"."} or s.startswith("."):
        s = "_" + s
    return s[:200]


def parse_value(text: str) -> Any:
    """Parse a CLI value: int, float, bool, None, comma list, else string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    if "," in t:
        return tuple(parse_value(p) for p in t.split(",") if p.strip())
    return t


def parse_kv(items: Iterable[str] | None, what: str = "option") -> dict[str, Any]:
    """Parse ['a=1', 'b=x'] (each item may also hold several space-separated pairs) into a dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in str(item).split():
            if "=" not in part:
                raise ConfigError(f"{what} {part!r} is not of the form KEY=VALUE")
            k, v = part.split("=", 1)
            k = k.strip().replace("-", "_")
            if not k:
                raise ConfigError(f"{what} {part!r} has an empty key")
            out[k] = parse_value(v)
    return out


def parse_epochs(text: str | Iterable[int] | None) -> list[int] | None:
    """'0,1,3,10' -> [0, 1, 3, 10] (sorted, unique)."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            vals = [int(p) for p in text.replace(" ", "").split(",") if p]
        except ValueError:
            raise ConfigError(f"epochs {text!r} must be a comma-separated list of integers") from None
    else:
        vals = [int(v) for v in text]
    if any(v < 0 for v in vals):
        raise ConfigError(f"epochs must be >= 0, got {vals}")
    return sorted(set(vals))


def epoch_dirname(epoch: int) -> str:
    """The one name for a checkpoint epoch on disk: epoch_0003."""
    return f"epoch_{int(epoch):04d}"


def apply_overrides(cfg, overrides: dict | None, what: str = "config"):
    """dataclasses.replace(cfg, **overrides), with a ConfigError naming the valid fields for unknown keys.

    List values are turned into tuples so frozen configs stay hashable and comparable.
    """
    import dataclasses

    if not overrides:
        return cfg
    names = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {', '.join(unknown)}; valid fields: {', '.join(names)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(cfg, **clean)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what}: {e}") from None

