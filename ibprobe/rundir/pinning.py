"""What a run folder holds and promises, and what each of its results was made from.

DIR/analysis.json pins the settings (resolved values, so a resume on other hardware cannot mix architectures), the
data and the inputs: the network (its spec and normalisation) and each checkpoint's content digest, by step. Every
finished decoder job records in its result.json what it was made from (`job_inputs`): the settings, the data side's
images, and for a q(x|h) the checkpoint's digest and the keys of its codes. So:

- a folder that holds results refuses a request with other settings, data, network or checkpoint contents, in one
  line, before any work (`claim`); a folder without results takes the new ones;
- a folder is claimed under its lock and then held shared for the whole analysis, so a second process cannot
  re-pin it under the first (the loser of a race is refused in one line);
- a result made from other inputs than the folder's is never measured (`check_results`): one line says which job
  and what to do;
- a damaged file the folder cannot rebuild ends in one line naming it and what to do (`read_job_file`, `load_nll`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ibprobe.capture import codes_key, images_key
from ibprobe.config import Settings
from ibprobe.errors import CheckpointError, ConfigError, DataError
from ibprobe.rundir.files import atomic_write_json, file_digest, jsonable, read_json, remove_stale_temps, try_lock
from ibprobe.rundir.paths import FAILED, Q0_FOLDER, RESULT, RunDir

ANALYSIS_FORMAT = "ibprobe.analysis/5"  # 4: + the inputs (network, checkpoint contents); 5: checkpoints keyed by step
_ACTIVE = ".active.lock"  # held shared by every process working on the folder's analysis
_BY_EPOCH = ("ibprobe.analysis/3", "ibprobe.analysis/4")  # formats whose checkpoints, jobs and tables are by epoch


# ------------------------------------------------------------------------------------------------ the folder
def source_inputs(source, run_dir: str | os.PathLike | None = None) -> dict:
    """What an analysis of `source` (a ModelSource) is made from, besides its settings and data: the network (the
    source without its checkpoints) and each checkpoint's content digest, keyed by step (and, for the reader, the file
    each digest was read from, relative to `run_dir` when inside it)."""
    d = source.to_dict(None if run_dir is None else Path(run_dir))
    return {"network": jsonable(source.network()),
            "checkpoints": {str(int(s)): file_digest(p) for s, p in source.checkpoints},
            "files": {str(int(s)): str(p) for s, p in d["checkpoints"]}}


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, settings: Settings, dataset_spec: dict, new_layers,
          inputs: dict) -> Iterator[list[str]]:
    """Pin (or check) DIR/analysis.json and hold the folder for the block; yields every layer the folder analyses.

    Under the folder's lock: a folder that holds results keeps its settings, data and inputs (other ones are refused
    with one line); one without results takes new ones, unless another process is working on it now (refused too).
    New checkpoints and layers are added. While the block runs the folder is held shared, so no process can
    re-pin it under this one; a process that finds it free first removes the temp files a kill left behind.
    """
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        with try_lock(run_dir / ".analysis.lock", wait=True):
            layers = _pin(run_dir, settings, dataset_spec, list(new_layers), inputs)
            stack.enter_context(try_lock(run_dir / _ACTIVE, shared=True, wait=True))
        yield layers


def pin_reference_candidates(run_dir: str | os.PathLike, names: list[str]) -> list[str]:
    """The reference's candidate densities of the folder (ibprobe.estimators.reference): `names` the first time,
    pinned in analysis.json; the pinned ones after that, so that the reference, and with it every number, does not
    change with the layers and checkpoints added later or with which jobs have finished."""
    run_dir = Path(run_dir)
    with try_lock(run_dir / ".analysis.lock", wait=True):
        meta = read_pinned_analysis(run_dir)
        if not isinstance(meta.get("reference_candidates"), list):
            meta["reference_candidates"] = list(names)
            atomic_write_json(RunDir(run_dir).pinned, meta)
        return [str(n) for n in meta["reference_candidates"]]


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an analysed folder shared while working on it without pinning (e.g. `ibprobe run-job`)."""
    with try_lock(Path(run_dir) / _ACTIVE, shared=True, wait=True):
        yield


def _pin(run_dir: Path, settings: Settings, dataset_spec: dict, new_layers: list[str], inputs: dict) -> list[str]:
    path = RunDir(run_dir).pinned
    new = {"format": ANALYSIS_FORMAT, "dataset": jsonable(dataset_spec), "settings": settings.to_dict(),
           "inputs": jsonable(inputs)}
    with try_lock(run_dir / _ACTIVE, wait=False) as alone:
        if alone:  # no other process works here: what a kill left behind can go
            run = RunDir(run_dir)
            for sub in (run.decoders, run.activations, run.analysis):
                remove_stale_temps(sub, recursive=True)
            remove_stale_temps(run_dir, (run.pinned.name, run.source.name))
        try:
            old = _read_analysis(path) if path.exists() else None
            why = None if old is None else _describe_diff(old, new)
        except ConfigError as e:  # damaged or of another version
            if has_results(run_dir):
                raise
            old, why = None, str(e)
        if why:
            if has_results(run_dir):
                raise ConfigError(f"{run_dir} already holds results made with other {why}; use a new --out folder, "
                                  f"or delete its decoders/ and analysis/ to start over")
            if not alone:
                raise ConfigError(f"another process is analysing {run_dir} with other {why}; wait for it to "
                                  f"finish, or use another --out folder")
            shutil.rmtree(RunDir(run_dir).decoders, ignore_errors=True)  # partial fits of the old settings
            old = None
    if old is not None:
        for k in ("checkpoints", "files"):
            new["inputs"][k] = {**old["inputs"].get(k, {}), **new["inputs"].get(k, {})}
    layers = list(dict.fromkeys([*(old or {}).get("layers", []), *new_layers]))
    kept = {"reference_candidates": old["reference_candidates"]} if old and "reference_candidates" in old else {}
    atomic_write_json(path, {**new, "layers": layers, **kept})
    return layers


def read_pinned(run_dir: str | os.PathLike) -> tuple[Settings, dict, list[str]]:
    """(Settings, dataset spec, layers) pinned in DIR/analysis.json."""
    meta = read_pinned_analysis(run_dir)
    return Settings.from_dict(meta["settings"]), meta["dataset"], list(meta.get("layers", []))


def read_inputs(run_dir: str | os.PathLike) -> dict:
    """The inputs pinned in DIR/analysis.json: {"network": ..., "checkpoints": {step (str): digest}}."""
    return read_pinned_analysis(run_dir)["inputs"]


def read_pinned_analysis(run_dir: str | os.PathLike) -> dict:
    """DIR/analysis.json, checked: its "settings" (Settings.to_dict), "dataset" (the data spec), "inputs" (see
    read_inputs) and "layers", for a caller that needs several of them from one read."""
    path = RunDir(run_dir).pinned
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no analysis (no analysis.json); run `ibprobe run` or "
                          f"`ibprobe analyze` first")
    return _read_analysis(path)


def has_results(run_dir: str | os.PathLike) -> bool:
    """Whether any decoder job of the folder has finished (or failed for good)."""
    base = RunDir(run_dir).decoders
    return base.is_dir() and any(next(base.rglob(n), None) for n in (RESULT, "row.json", FAILED))


def _read_analysis(path: Path) -> dict:
    start_over = (f"analyse into a new --out folder, or delete {path.name} (and the folder's decoders/ and "
                  f"analysis/) to start the analysis over")
    try:
        meta = read_json(path)
    except ValueError as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); {start_over}") from None
    if not isinstance(meta, dict) or meta.get("format") != ANALYSIS_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        if got in _BY_EPOCH:
            raise ConfigError(f"{path} is of format {got}, whose checkpoints are keyed by epoch; use a new --out "
                              f"folder to analyse the run again (checkpoints are keyed by step since {ANALYSIS_FORMAT})")
        raise ConfigError(f"{path} is of format {got!r}, not {ANALYSIS_FORMAT} (an older ibprobe's, or not ours); "
                          f"{start_over}")
    ok = (isinstance(meta.get("settings"), dict) and isinstance(meta.get("dataset"), dict)
          and isinstance(meta.get("inputs"), dict) and isinstance(meta["inputs"].get("checkpoints"), dict)
          and isinstance(meta.get("layers", []), list))
    if not ok:
        raise ConfigError(f"{path} lacks its settings, data or inputs; {start_over}")
    return meta


def _describe_diff(old: dict, new: dict) -> str | None:
    """What differs between two pinned analyses, in words (None: nothing that changes a number)."""
    if old["dataset"] != new["dataset"]:
        return f"data ({old['dataset']} -> {new['dataset']})"
    if old["settings"] != new["settings"]:
        return "settings (" + "; ".join(_dict_diff(old["settings"], new["settings"])) + ")"
    a, b = old["inputs"], new["inputs"]
    if a.get("network") != b.get("network"):
        return "network (" + "; ".join(_dict_diff(a.get("network") or {}, b.get("network") or {})) + ")"
    changed = sorted((int(s) for s in set(a["checkpoints"]) & set(b["checkpoints"])
                      if a["checkpoints"][s] != b["checkpoints"][s]))
    if changed:
        was, now = a.get("files", {}), b.get("files", {})
        return "checkpoint content (" + "; ".join(
            f"step {s}: was {was.get(str(s), '?')} ({a['checkpoints'][str(s)][:12]}), now {now.get(str(s), '?')} "
            f"({b['checkpoints'][str(s)][:12]})" for s in changed) + ")"
    return None


def _dict_diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += [f"{k}.{j}: {a[k].get(j)} -> {b[k].get(j)}" for j in sorted(set(a[k]) | set(b[k]))
                    if a[k].get(j) != b[k].get(j)]
        elif a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} -> {b.get(k)}")
    return out


# ------------------------------------------------------------------------------------------------ one result
def settings_digest(settings: Settings) -> str:
    """A digest of everything pinned about how the numbers are made."""
    blob = json.dumps(settings.to_dict(), sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def job_inputs(settings: Settings, x_fit: np.ndarray, x_test: np.ndarray, *, source=None,
               checkpoint: str | None = None) -> dict:
    """What one decoder job is made from, as its result.json records it: the settings, the data side's fit and test
    images and, for a q(x|h) (`source` and the `checkpoint`'s content digest given), the keys of its codes."""
    out = {"settings": settings_digest(settings), "data": f"{images_key(x_fit)}/{images_key(x_test)}",
           "checkpoint": checkpoint, "codes": None}
    if checkpoint is not None:
        out["codes"] = {"fit": codes_key(x_fit, source, checkpoint), "test": codes_key(x_test, source, checkpoint)}
    return out


def check_inputs(job_dir: Path, result: dict, expected: dict) -> None:
    """A DataError (one line) unless a finished job was made from `expected` (see `job_inputs`)."""
    got = result.get("inputs")
    what = "what it was made from" if not isinstance(got, dict) else \
        ", ".join(k for k in expected if got.get(k) != expected[k])
    if what:
        again = refit_hint(job_dir)
        raise DataError(f"{job_dir / 'result.json'} was made from other inputs than the folder holds now (differs in: "
                        f"{what}); it was changed by hand or by a process with other inputs; {again}")


def refit_hint(job_dir: Path) -> str:
    """What to do about a damaged or stale job folder."""
    if job_dir.name == Q0_FOLDER:
        return (f"every paired fit starts from {job_dir.name} (q0): delete {job_dir.parent} and rerun to fit them all "
                f"again")
    return f"delete {job_dir} and rerun the command to fit that job again"


def read_job_file(path: Path) -> dict:
    """A job's result.json or failed.json; a damaged or foreign one is a DataError saying what to do."""
    try:
        res = read_json(path)
    except ValueError as e:
        res, why = None, f"is unreadable ({type(e).__name__})"
    else:
        why = "is not a job result"
    if isinstance(res, dict) and res.get("status") in ("ok", "failed") and (
            res["status"] == "failed" or {"decoder", "best_epoch", "curve"} <= set(res)):
        return res
    raise DataError(f"{path} {why}; {refit_hint(path.parent)}")


def load_nll(path: Path, n: int | None = None) -> np.ndarray:
    """Per-image NLLs in bits (float64 [n]) from a job's *_nll_bits.npy; a damaged file is a DataError."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {refit_hint(path.parent)}") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}); {refit_hint(path.parent)}") from None
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating) or (n is not None and len(a) != n):
        raise DataError(f"{path} holds {a.dtype} {tuple(a.shape)}, not the {n or 'N'} per-image NLLs of the test "
                        f"images; {refit_hint(path.parent)}")
    return a.astype(np.float64)


def check_checkpoints(run_dir: str | os.PathLike, source) -> None:
    """A CheckpointError unless every checkpoint of `source` still has the content the folder pinned."""
    pinned = read_inputs(run_dir)["checkpoints"]
    for s, p in source.checkpoints:
        if str(int(s)) in pinned and file_digest(p) != pinned[str(int(s))]:
            raise CheckpointError(f"checkpoint {p} (step {s}) has other content than when {run_dir} was analysed; "
                                  f"restore it, or analyse it into a new --out folder")
