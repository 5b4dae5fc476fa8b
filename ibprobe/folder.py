"""What a run folder holds and promises: the settings pinned in DIR/analysis.json (resolved values, so a resume on
other hardware cannot mix architectures), claimed atomically under the folder's lock."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ibprobe.config import Settings
from ibprobe.errors import ConfigError
from ibprobe.fsutil import atomic_write_json, jsonable, read_json, try_lock

ANALYSIS_FORMAT = "ibprobe.analysis/3"  # 3: + the data side, the reference rule and the code-mixture size


def pin_settings(run_dir: str | os.PathLike, settings: Settings, dataset_spec: dict, new_layers) -> list[str]:
    """Write (or check) DIR/analysis.json under the folder's lock; return every layer the folder analyses.

    A folder that holds results keeps its settings and data: other ones are refused with one line. A folder
    without results (e.g. a first run that failed) takes the new settings, and loses the partial fits of the old.
    """
    run_dir = Path(run_dir)
    path = run_dir / "analysis.json"
    new = {"format": ANALYSIS_FORMAT, "dataset": jsonable(dataset_spec), "settings": settings.to_dict()}
    with try_lock(run_dir / ".analysis.lock", wait=True):
        old = _read_analysis(path) if path.exists() else None
        layers = list(dict.fromkeys([*(old or {}).get("layers", []), *new_layers]))
        if old is not None and (old["settings"], old["dataset"]) != (new["settings"], new["dataset"]):
            if has_results(run_dir):
                raise ConfigError(f"{run_dir} already holds results made with other "
                                  f"{_describe_diff(old, new)}; use a new --out folder, or delete its decoders/ "
                                  f"and analysis/ to start over")
            shutil.rmtree(run_dir / "decoders", ignore_errors=True)  # partial fits of the old settings
            layers = list(dict.fromkeys(new_layers))
        atomic_write_json(path, {**new, "layers": layers})
    return layers


def read_pinned(run_dir: str | os.PathLike) -> tuple[Settings, dict, list[str]]:
    """(Settings, dataset spec, layers) pinned in DIR/analysis.json."""
    path = Path(run_dir) / "analysis.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no analysis (no analysis.json); run `ibprobe run` or "
                          f"`ibprobe analyze` first")
    meta = _read_analysis(path)
    return Settings.from_dict(meta["settings"]), meta["dataset"], list(meta.get("layers", []))


def has_results(run_dir: str | os.PathLike) -> bool:
    """Whether any decoder job of the folder has finished (or failed for good)."""
    base = Path(run_dir) / "decoders"
    return base.is_dir() and any(next(base.rglob(n), None) for n in ("result.json", "row.json", "failed.json"))


def _read_analysis(path: Path) -> dict:
    try:
        meta = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); delete it (and the folder's decoders/ "
                          f"and analysis/) to start the analysis over") from None
    if not isinstance(meta, dict) or meta.get("format") != ANALYSIS_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"{path} is of format {got!r}, not {ANALYSIS_FORMAT} (it pinned overrides, not resolved "
                          f"settings); analyse into a new --out folder, or delete its decoders/ and analysis/")
    return meta


def _describe_diff(old: dict, new: dict) -> str:
    if old["dataset"] != new["dataset"]:
        return f"data ({old['dataset']} -> {new['dataset']})"
    a, b = old["settings"], new["settings"]
    diff = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            diff += [f"{k}.{j}: {a[k].get(j)} -> {b[k].get(j)}" for j in sorted(set(a[k]) | set(b[k]))
                     if a[k].get(j) != b[k].get(j)]
        elif a.get(k) != b.get(k):
            diff.append(f"{k}: {a.get(k)} -> {b.get(k)}")
    return "settings (" + "; ".join(diff) + ")"
