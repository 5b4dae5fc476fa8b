"""How option values become typed settings, in one place: `typed` checks a `K=V` value against the type its
dataclass field declares, `check_int` and `check_seed` the integers with their ranges. Every config's
`__post_init__` and every typed command-line flag (ibprobe.cli.flags) is built on them, so a bad value fails before
any work starts, with one line that says what was expected."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ibprobe.errors import ConfigError

def typed(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the type a dataclass field declares (annotations as strings: 'int', 'float | None',
    'tuple[int, ...]', ...); a ConfigError says what was expected."""
    ann = str(annotation).replace(" ", "")
    if value is None:
        if ann.endswith("|None") or ann in ("Any", "None"):
            return None
        raise ConfigError(f"{name} cannot be none")
    base = ann[:-len("|None")] if ann.endswith("|None") else ann
    if isinstance(value, list):
        value = tuple(value)
    if base.startswith("tuple[") and base.endswith("]"):
        items = value if isinstance(value, tuple) else (value,)
        inner = base[len("tuple["):-1].split(",")
        each = inner[0] if inner[-1] == "..." else None
        if each is None and len(inner) != len(items):
            raise ConfigError(f"{name} needs {len(inner)} comma-separated values, got {len(items)}")
        return tuple(typed(name, each or t, v) for v, t in zip(items, inner if each is None else [each] * len(items)))
    if base == "int":
        return check_int(name, value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if base == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if base == "str":
        if isinstance(value, tuple):
            raise ConfigError(f"{name} takes one value, got the list {','.join(map(str, value))}")
        return value if isinstance(value, (str, bool)) else str(value)
    if base == "dict" and not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping of keyword arguments, got {value!r}")
    return value


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int within [lo, hi]: an integral number (2.0 is 2; 1.5, true or '3' are errors)."""
    ok = not isinstance(value, bool) and (isinstance(value, (int, np.integer)) or (
        isinstance(value, float) and np.isfinite(value) and value.is_integer()))
    if not ok:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}" if lo is not None else f"<= {hi}"
        raise ConfigError(f"{name} must be an integer {rng}, got {v}")
    return v


SEED_MAX = 2**63 - 1  # seeds are 64-bit integers: numpy, torch and the CUDA generators take them all


def check_seed(value: Any, name: str = "--seed") -> int:
    """A seed: an integer in 0..2**63-1."""
    return check_int(name, value, 0, SEED_MAX)
