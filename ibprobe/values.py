"""Values given as text (`--train lr=3e-3`, `--model-arg num_classes=10`): parsed once, against the type a field or
a parameter needs, with one-line errors that name it; and the integer and seed checks every config uses."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from typing import Any

from ibprobe.errors import ConfigError

# ------------------------------------------------------------------------------------------------ values
def parse_value(text: str) -> Any:
    """A command-line value by its look, for a setting of unknown type: int, float, bool, None, comma list, else
    the string."""
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


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets: 'tuple[int,...]|None' -> ['tuple[int,...]', 'None'] for '|'."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _alternatives(annotation: Any) -> list[str]:
    ann = annotation if isinstance(annotation, str) else annotation_text(annotation)
    return [a for a in _split_top(ann.replace(" ", ""), "|") if a] or ["Any"]


def _tuple_items(base: str) -> tuple[list[str], bool]:
    """('tuple[int,...]') -> (['int'], True): the item types and whether the tuple has any length."""
    inner = _split_top(base[len("tuple["):-1], ",")
    return (inner[:1], True) if inner[-1] == "..." else (inner, False)


def annotation_text(annotation: Any) -> str:
    """A Python annotation in the grammar `typed` reads: 'int', 'float', 'bool', 'str', 'tuple[int,...]',
    'tuple[int,str]', 'A|B', 'None', 'Any' (for anything else). Lists and sequences read as tuples."""
    import collections.abc
    import inspect
    import types
    import typing

    if isinstance(annotation, str):
        return annotation.replace(" ", "").replace("typing.", "")
    if annotation is None or annotation is type(None):
        return "None"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    if annotation in (list, tuple):
        return "tuple[Any,...]"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return "|".join(annotation_text(a) for a in args)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{annotation_text(args[0])},...]"
        return f"tuple[{','.join(annotation_text(a) for a in args)}]"
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        return f"tuple[{annotation_text(args[0]) if args else 'Any'},...]"
    if annotation is inspect.Parameter.empty:
        return "Any"
    return "Any"


def typed(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the type a dataclass field declares (annotations as strings: 'int', 'float | None',
    'tuple[int, ...]', 'tuple[int, ...] | int', ...); a ConfigError says what was expected."""
    alts = _alternatives(annotation)
    if value is None:
        if "None" in alts or "Any" in alts:
            return None
        raise ConfigError(f"{name} cannot be none")
    if isinstance(value, list):
        value = tuple(value)
    alts = [a for a in alts if a != "None"] or ["Any"]
    if len(alts) == 1:
        return _typed_one(name, alts[0], value)
    ordered = sorted(alts, key=lambda a: a.startswith("tuple[") != isinstance(value, tuple))
    for alt in ordered:
        try:
            return _typed_one(name, alt, value)
        except ConfigError:
            pass
    raise ConfigError(f"{name} must be {' or '.join(_describe(a) for a in alts)}, got {value!r}")


def _describe(alt: str) -> str:
    if alt.startswith("tuple["):
        items, any_length = _tuple_items(alt)
        plural = {"int": "integers", "float": "numbers", "bool": "true/false values", "str": "strings"}
        return f"a comma list of {plural.get(items[0], 'values')}" if any_length else \
            f"{len(items)} comma-separated values"
    return {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}.get(alt, alt)


def _typed_one(name: str, base: str, value: Any) -> Any:
    if base.startswith("tuple[") and base.endswith("]"):
        items = value if isinstance(value, tuple) else (value,)
        inner, any_length = _tuple_items(base)
        if not any_length and len(inner) != len(items):
            raise ConfigError(f"{name} needs {len(inner)} comma-separated values, got {len(items)}")
        return tuple(typed(name, t, v) for v, t in zip(items, inner * len(items) if any_length else inner))
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


def from_text(name: str, annotation: Any, text: str) -> Any:
    """A command-line value parsed once, as the type `annotation` says (see `typed`): a 'str' keeps the text as
    given ('1e3' stays '1e3'), a tuple splits at commas, and a value of no known type is read by its look
    (`parse_value`). A ConfigError names `name` and says what was expected."""
    text = str(text)
    alts = _alternatives(annotation)
    if "None" in alts and text.strip().lower() in ("none", "null"):
        return None
    alts = [a for a in alts if a != "None"] or ["Any"]
    listed = "," in text
    ordered = sorted(alts, key=lambda a: a.startswith("tuple[") != listed)
    errors = []
    for alt in ordered:
        try:
            if alt == "str":
                return text
            if alt.startswith("tuple[") and alt.endswith("]"):
                parts = [p for p in text.split(",") if p.strip()]
                inner, any_length = _tuple_items(alt)
                if not any_length and len(inner) != len(parts):
                    raise ConfigError(f"{name} needs {len(inner)} comma-separated values, got {len(parts)}")
                try:
                    return tuple(from_text(name, t, p) for p, t in
                                 zip(parts, inner * len(parts) if any_length else inner))
                except ConfigError:
                    raise ConfigError(f"{name} must be {_describe(alt)}, got {text!r}") from None
            return typed(name, alt, parse_value(text))
        except ConfigError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(f"{name} must be {' or '.join(_describe(a) for a in alts)}, got {text!r}")


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
