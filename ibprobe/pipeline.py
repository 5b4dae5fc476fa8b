"""The analysis pipeline: every (checkpoint, layer) of a network -> I(X;H), I(Y;H) -> analysis/mi.csv.

    capture activations (activation store)  ->  fit q(x) once  ->  fit q(x|h) per (layer, checkpoint)
    ->  paired per-image differences on held-out images + a probe for I(Y;H)  ->  analysis/mi.csv

Everything a job needs is on disk in the run folder (`source.json`, `analysis.json`, `activations/`), so a job is a
function of `(run_dir, JobSpec)` alone: `run_job` can be called by this process, by a worker process (`jobs > 1`),
or by a cluster engine, and a rerun skips what is finished and resumes what was killed.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ibprobe.errors import ConfigError, DataError, UserError
from ibprobe.jobs import JobSpec, job_state, read_result, try_lock
from ibprobe.utils import (
    apply_overrides,
    atomic_write_json,
    atomic_write_text,
    read_json,
    resolve_device,
)

MI_COLUMNS = [
    "epoch", "checkpoint", "layer", "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high", "h_x_bits",
    "h_x_given_h_bits", "bits_per_dim", "i_yh_bits", "n_test", "decoder", "status", "error",
]


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild the analysed network at each checkpoint. Saved as DIR/source.json.

    kind "run": one of our training runs (checkpoints carry their own config).
    kind "spec": a model spec (`resnet`, `torchvision:NAME`, `pkg.mod:callable`) plus foreign checkpoints.
    """

    kind: str
    model: str
    model_args: dict = field(default_factory=dict)
    in_shape: tuple = ()
    num_classes: int = 10
    checkpoints: tuple = ()  # ((epoch, path), ...) sorted by epoch
    normalize: tuple | None = None  # ((mean per channel), (std per channel)) after scaling to [0, 1]

    def __post_init__(self):
        if self.normalize:  # JSON lists or numpy arrays -> ((mean, ...), (std, ...)) of floats
            mean, std = self.normalize
            object.__setattr__(self, "normalize", (tuple(float(v) for v in mean), tuple(float(v) for v in std)))
        elif self.normalize is not None:
            object.__setattr__(self, "normalize", None)

    def load_model(self, path: str | os.PathLike, device: str = "cpu"):
        """The network at checkpoint `path`, in eval mode, on `device`."""
        if self.kind == "run":
            from ibprobe.train import load_run_model

            model, _ = load_run_model(path, device=device)
        elif self.kind == "spec":
            from ibprobe.checkpoints import load_weights
            from ibprobe.models import build_model

            model = build_model(
                self.model, in_shape=tuple(self.in_shape), num_classes=self.num_classes, **dict(self.model_args)
            )
            load_weights(model, path)
            model = model.to(device)
        else:
            raise ConfigError(f"unknown model source kind {self.kind!r}")
        return model.eval()

    def to_dict(self, root: Path | None = None) -> dict:
        d = asdict(self)
        d["checkpoints"] = [[int(e), _relative(p, root)] for e, p in self.checkpoints]
        return d

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> "ModelSource":
        d = dict(d)
        d["in_shape"] = tuple(d.get("in_shape") or ())
        d["checkpoints"] = tuple((int(e), _absolute(p, root)) for e, p in d.get("checkpoints", ()))
        return cls(**d)


@dataclass(frozen=True)
class AnalysisConfig:
    """What to measure and how hard. `decoder`/`fit` override fields of the default Decoder/FitConfig."""

    layers: tuple = ()
    decoder: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    device: str = "auto"
    jobs: int = 1  # decoder jobs at once; 0 = one per CPU core (CPU) or 1 (CUDA)
    seed: int = 0
    probe: bool = True
    warm_start: bool = True  # paired fitting: q(x) and every q(x|h) continue from one q0(x), same budget
    init_epochs: int | None = None  # epochs of q0(x) in paired fitting (None: the fit's epochs)
    retry_failed: bool = False
    progress: bool = True


# Fields that change the numbers: a rerun on the same folder must keep them.
_RESULT_FIELDS = ("decoder", "fit", "seed", "probe", "warm_start", "init_epochs")


def _relative(p: str | os.PathLike, root: Path | None) -> str:
    p = Path(p)
    if root is not None:
        try:
            return str(p.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(p.resolve()) if p.exists() else str(p)


def _absolute(p: str, root: Path | None) -> str:
    q = Path(p)
    return str(q if q.is_absolute() or root is None else (Path(root) / q))


# ----------------------------------------------------------------------------------------------------------------
# Settings on disk


def _save_settings(run_dir: Path, source: ModelSource, dataset_spec: dict, cfg: AnalysisConfig) -> None:
    """Write source.json / analysis.json; refuse to mix results of different settings in one folder."""
    new = {k: _jsonable(getattr(cfg, k)) for k in _RESULT_FIELDS}
    path = run_dir / "analysis.json"
    if path.exists():
        old = read_json(path)
        old_res = old.get("settings", {})
        diff = [k for k in _RESULT_FIELDS if _jsonable(old_res.get(k)) != new[k]]
        if diff:
            raise ConfigError(
                f"{run_dir} already holds results made with different {', '.join(diff)} "
                f"({'; '.join(f'{k}: {old_res.get(k)} -> {new[k]}' for k in diff)}); "
                "use a new --out folder, or delete its decoders/ and analysis/ to start over"
            )
        if old.get("dataset") != _jsonable(dataset_spec):
            raise ConfigError(f"{run_dir} already holds results for another dataset ({old.get('dataset')}); use a new --out")
        # keep earlier layers listed, so a rerun with more layers extends the table
        layers = list(dict.fromkeys(list(old.get("layers", [])) + list(cfg.layers)))
    else:
        layers = list(cfg.layers)
    atomic_write_json(run_dir / "source.json", source.to_dict(run_dir))
    atomic_write_json(
        path,
        {"dataset": _jsonable(dataset_spec), "settings": new, "layers": layers, "format": "ibprobe.analysis/1"},
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def open_source(run_dir: str | os.PathLike):
    """(ModelSource, Dataset) of an analysed run folder, from its source.json and analysis.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "source.json").exists() or not (run_dir / "analysis.json").exists():
        raise UserError(f"{run_dir} holds no analysis (no source.json/analysis.json); run `ibprobe run` or `ibprobe analyze` first")
    source = ModelSource.from_dict(read_json(run_dir / "source.json"), run_dir)
    return source, _load_dataset(_freeze(read_json(run_dir / "analysis.json")["dataset"]))


def _freeze(d: Any) -> Any:
    if isinstance(d, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in d.items()))
    if isinstance(d, list):
        return tuple(_freeze(v) for v in d)
    return d


def _thaw_spec(frozen: tuple) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in frozen}


@lru_cache(maxsize=2)
def _load_dataset(frozen_spec: tuple):
    from ibprobe.data import load_dataset

    return load_dataset(**_thaw_spec(frozen_spec))


# ----------------------------------------------------------------------------------------------------------------
# One job


class _Context:
    """Everything a job reads, rebuilt from the run folder (cached per process)."""

    def __init__(self, run_dir: Path):
        from ibprobe.estimate import default_decoder_config, default_fit_config
        from ibprobe.taps import ActivationStore

        self.run_dir = run_dir
        meta = read_json(run_dir / "analysis.json")
        self.settings = meta["settings"]
        self.source, self.dataset = open_source(run_dir)
        self.device = resolve_device(_RUNTIME.get("device", "auto"))
        ds = self.dataset
        self.images_train = ds.images[ds.train_idx]
        self.images_test = ds.images[ds.test_idx]
        self.labels_train = ds.labels[ds.train_idx]
        self.labels_test = ds.labels[ds.test_idx]
        shape = tuple(ds.images.shape[1:])
        dev = self.device.type
        self.decoder_base = apply_overrides(
            default_decoder_config(shape, ds.levels, None, dev), self.settings["decoder"], "--decoder"
        )
        fit_cfg = default_fit_config(shape, dev, self.settings["seed"])
        fit_cfg = apply_overrides(fit_cfg, {"progress": _RUNTIME.get("progress", True)}, "--fit")
        self.fit_cfg = apply_overrides(fit_cfg, self.settings["fit"], "--fit")
        self.store = ActivationStore(run_dir / "activations")

    def decoder_cfg(self, code_shape):
        import dataclasses

        return dataclasses.replace(self.decoder_base, code_shape=None if code_shape is None else tuple(code_shape))


_RUNTIME: dict = {}  # per-process runtime options (device, progress): not part of the results


@lru_cache(maxsize=4)
def _context(run_dir: str) -> _Context:
    return _Context(Path(run_dir))


def run_job(run_dir: str | os.PathLike, spec: JobSpec, *, retry_failed: bool = False) -> dict | None:
    """Run one decoder job unless finished or held by another process. Returns its row (None if held)."""
    run_dir = Path(run_dir)
    job_dir = spec.job_dir(run_dir)
    state = job_state(job_dir)
    if state == "done" or (state == "failed" and not retry_failed):
        return read_result(job_dir)
    with try_lock(job_dir / ".lock") as mine:
        if not mine:
            return None
        state = job_state(job_dir)  # someone may have finished it while we waited
        if state == "done" or (state == "failed" and not retry_failed):
            return read_result(job_dir)
        (job_dir / "failed.json").unlink(missing_ok=True)
        ctx = _context(str(run_dir))
        try:
            row = _fit_job(ctx, spec, job_dir)
        except (FloatingPointError, UserError) as e:
            row = _failed_row(ctx, spec, f"{type(e).__name__}: {e}")
            atomic_write_json(job_dir / "failed.json", row)
            return row
        atomic_write_json(job_dir / "row.json", row)
        return row


def _failed_row(ctx: _Context, spec: JobSpec, error: str) -> dict:
    row = {c: None for c in MI_COLUMNS}
    row.update(epoch=spec.epoch, checkpoint=_relative(spec.checkpoint, ctx.run_dir) if spec.checkpoint else None,
               layer=spec.layer, status="failed", error=error.replace("\n", " ")[:500])
    return row


def _fit_job(ctx: _Context, spec: JobSpec, job_dir: Path) -> dict:
    from ibprobe.estimate import decoder_id, fit_decoder, paired_mi, probe_i_yh

    desc = spec.key
    paired = bool(ctx.settings.get("warm_start"))
    did = decoder_id(ctx.decoder_base, ctx.fit_cfg) + ("-paired" if paired else "")
    if spec.layer is None:
        cfg = ctx.decoder_cfg(None)
        if spec.init:
            init, fit_cfg = None, _stage1(ctx)
        else:
            init, fit_cfg = _stage2(ctx) if paired else (None, ctx.fit_cfg)
        nll, info = fit_decoder(ctx.images_train, None, ctx.images_test, None, cfg, fit_cfg,
                                workdir=job_dir, init_from=init, desc=desc)
        return {"layer": None, "status": "ok", "error": "", "h_x_bits": float(np.mean(nll)),
                "n_test": int(len(nll)), "epochs_run": int(info.get("epochs_run", 0)), "decoder": did}

    uncond_dir = JobSpec(None).job_dir(ctx.run_dir)
    uncond = read_result(uncond_dir)
    if uncond is None or uncond.get("status") != "ok":
        raise UserError(f"the unconditional reference q(x) has not finished ({uncond_dir})")
    h_x = np.load(uncond_dir / "test_nll_bits.npy")

    codes_train = ctx.store.read(spec.epoch, spec.layer, "train")
    codes_test = ctx.store.read(spec.epoch, spec.layer, "test")
    cfg = ctx.decoder_cfg(tuple(codes_train.shape[1:]))
    init, fit_cfg = _stage2(ctx) if paired else (None, ctx.fit_cfg)
    h_xh, info = fit_decoder(ctx.images_train, codes_train, ctx.images_test, codes_test, cfg, fit_cfg,
                             workdir=job_dir, init_from=init, desc=desc)
    dims = int(np.prod(ctx.images_test.shape[1:]))
    mi = paired_mi(h_x, h_xh, dims=dims)
    row = {c: None for c in MI_COLUMNS}
    row.update(
        epoch=int(spec.epoch), checkpoint=_relative(spec.checkpoint, ctx.run_dir), layer=spec.layer,
        i_xh_bits=mi["bits"], i_xh_ci_low=mi["ci_low"], i_xh_ci_high=mi["ci_high"], h_x_bits=mi["h_x_bits"],
        h_x_given_h_bits=mi["h_x_given_h_bits"], bits_per_dim=mi["bits_per_dim"], n_test=int(mi["n_test"]),
        decoder=did, status="ok", error="",
    )
    if ctx.settings.get("probe", True) and len(np.unique(ctx.labels_train)) > 1:
        pr = probe_i_yh(codes_train, ctx.labels_train, codes_test, ctx.labels_test,
                        num_classes=ctx.dataset.num_classes, seed=ctx.settings["seed"])
        row["i_yh_bits"] = pr["i_yh_bits"]
    return row


def _stage1(ctx: _Context):
    """FitConfig of q0(x), the first stage of paired fitting."""
    n = ctx.settings.get("init_epochs")
    return ctx.fit_cfg if n is None else replace(ctx.fit_cfg, epochs=int(n))


def _stage2(ctx: _Context):
    """(init decoder path, FitConfig) of paired fitting's second stage: continue q0's decayed schedule."""
    from ibprobe.estimate import continued_fit_config

    init_dir = JobSpec(None, init=True).job_dir(ctx.run_dir)
    q0 = read_result(init_dir)
    if q0 is None or q0.get("status") != "ok":
        raise UserError(f"q0(x), the start of paired fitting, has not finished ({init_dir})")
    return init_dir / "decoder.pt", continued_fit_config(ctx.fit_cfg, int(q0.get("epochs_run", 0)))


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the parent process dies (e.g. kill -9 of `ibprobe run`),
    so no orphan keeps fitting a job whose parent is gone."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_init(runtime: dict, threads: int) -> None:
    import torch

    _die_with_parent()
    torch.set_num_threads(threads)
    _RUNTIME.update(runtime)


def _worker_run(run_dir: str, spec: JobSpec, retry_failed: bool) -> tuple[str, dict | None, str | None]:
    try:
        return spec.key, run_job(run_dir, spec, retry_failed=retry_failed), None
    except Exception:  # a bug: keep its traceback for the parent
        return spec.key, None, traceback.format_exc()


# ----------------------------------------------------------------------------------------------------------------
# The whole analysis


def plan_jobs(source: ModelSource, layers) -> list[JobSpec]:
    """The conditional jobs, one per (checkpoint, layer), in checkpoint order."""
    return [JobSpec(layer, int(e), str(p)) for e, p in source.checkpoints for layer in layers]


def capture_activations(run_dir: Path, source: ModelSource, dataset, layers, *, device, progress: bool) -> None:
    """Fill DIR/activations for every checkpoint x layer x split that is not stored yet."""
    from ibprobe.taps import ActivationStore, capture_to_store

    store = ActivationStore(run_dir / "activations")
    splits = {"train": dataset.images[dataset.train_idx], "test": dataset.images[dataset.test_idx]}
    for epoch, path in source.checkpoints:
        todo = [(l, s) for l in layers for s in splits if not store.has(epoch, l, s)]
        if not todo:
            continue
        with try_lock(run_dir / "activations" / f".capture_{int(epoch)}.lock", wait=True):
            todo = [(l, s) for l, s in todo if not store.has(epoch, l, s)]
            if not todo:
                continue
            model = source.load_model(path, device=str(device))
            for split in splits:
                missing = [l for l, s in todo if s == split]
                if missing:
                    capture_to_store(model, splits[split], missing, store, epoch=int(epoch), split=split,
                                     levels=dataset.levels, normalize=source.normalize, device=device)
        if progress:
            print(f"captured activations at epoch {epoch} ({len(todo)} layer x split)", file=sys.stderr)


def run_analysis(out_dir: str | os.PathLike, source: ModelSource, dataset_spec: dict,
                 cfg: AnalysisConfig) -> list[dict]:
    """Measure every (checkpoint, layer) of `source`; write out_dir/analysis/mi.csv and return its rows.

    Resumable and idempotent: finished jobs are kept, killed ones resume, settings that change the numbers must
    match those already in the folder.
    """
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not source.checkpoints:
        raise UserError("no checkpoints to analyse")
    if not cfg.layers:
        raise UserError("no layers to analyse; list some with --layers (see `ibprobe layers`)")
    _save_settings(run_dir, source, dataset_spec, cfg)
    _RUNTIME.update(device=cfg.device, progress=cfg.progress)
    _context.cache_clear()
    dataset = _load_dataset(_freeze(_jsonable(dataset_spec)))
    if len(dataset.test_idx) < 2:
        raise DataError(f"the test split has {len(dataset.test_idx)} images; need at least 2 for a confidence interval")
    device = resolve_device(cfg.device)
    cfg = replace(cfg, jobs=resolve_jobs(cfg.jobs, device))
    capture_activations(run_dir, source, dataset, cfg.layers, device=device, progress=cfg.progress)

    refs = ([JobSpec(None, init=True)] if cfg.warm_start else []) + [JobSpec(None)]
    for ref in _progress(refs, cfg.progress, "unconditional q(x)"):
        uncond = run_job(run_dir, ref, retry_failed=cfg.retry_failed)
        if uncond is None:  # another process is fitting it: wait for it
            with try_lock(ref.job_dir(run_dir) / ".lock", wait=True):
                pass
            uncond = run_job(run_dir, ref, retry_failed=cfg.retry_failed)
        if uncond is None or uncond.get("status") != "ok":
            break

    specs = plan_jobs(source, cfg.layers)
    results: dict[str, dict | None] = {}
    if uncond is None or uncond.get("status") != "ok":
        reason = (uncond or {}).get("error") or "did not finish"
        ctx = _context(str(run_dir))
        for s in specs:
            results[s.key] = _failed_row(ctx, s, f"unconditional reference failed: {reason}")
    elif cfg.jobs <= 1:
        for s in _progress(specs, cfg.progress, "decoder jobs"):
            results[s.key] = run_job(run_dir, s, retry_failed=cfg.retry_failed)
    else:
        results.update(_run_parallel(run_dir, specs, cfg))
    # Jobs another process held: wait for them, then read their results.
    for s in specs:
        if results.get(s.key) is None:
            with try_lock(s.job_dir(run_dir) / ".lock", wait=True):
                pass
            results[s.key] = run_job(run_dir, s, retry_failed=False)
    rows = [results[s.key] or _failed_row(_context(str(run_dir)), s, "did not finish") for s in specs]
    write_mi_csv(run_dir / "analysis" / "mi.csv", rows)
    return rows


def _run_parallel(run_dir: Path, specs: list[JobSpec], cfg: AnalysisConfig) -> dict:
    import multiprocessing as mp

    n = max(1, int(cfg.jobs))
    threads = max(1, cpu_count() // n)
    out: dict = {}
    bugs: list[str] = []
    runtime = {"device": cfg.device, "progress": False}
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(runtime, threads)) as pool:
        futs = [pool.submit(_worker_run, str(run_dir), s, cfg.retry_failed) for s in specs]
        for f in _progress(as_completed(futs), cfg.progress, "decoder jobs", total=len(futs)):
            key, row, bug = f.result()
            out[key] = row
            if bug:
                bugs.append(f"job {key}:\n{bug}")
    if bugs:
        raise RuntimeError("decoder job(s) crashed:\n" + "\n".join(bugs))
    return out


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_jobs(jobs: int, device) -> int:
    """`jobs` if > 0; else automatic: one job per CPU core (at most 8) on CPU, one at a time on CUDA."""
    if int(jobs) > 0:
        return int(jobs)
    return 1 if resolve_device(device).type == "cuda" else max(1, min(8, cpu_count()))


def _progress(it, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False)


def write_mi_csv(path: Path, rows: list[dict]) -> Path:
    """analysis/mi.csv, one row per (checkpoint, layer), columns MI_COLUMNS (empty cell = no value)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MI_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in MI_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}" if np.isfinite(v) else str(v)
    return str(v)


# How to type the columns of analysis/mi.csv; any other column is a float when it parses, else text.
_INT_COLUMNS = {"epoch", "n_test"}
_TEXT_COLUMNS = {"checkpoint", "layer", "decoder", "status", "error"}


def _typed(column: str, text: str | None) -> Any:
    if text is None or text.strip() == "":
        return None
    t = text.strip()
    if column in _TEXT_COLUMNS:
        return t
    try:
        if column in _INT_COLUMNS:
            return int(float(t))
        return float(t)
    except ValueError:
        if column in _INT_COLUMNS:
            raise DataError(f"column {column!r} holds {t!r}, not an integer") from None
        return t


def read_mi_csv(path: str | os.PathLike) -> list[dict]:
    """Read analysis/mi.csv into typed rows (ints, floats in bits, text; an empty cell -> None).

    The header decides the columns; a missing `status` column means every row is "ok".
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; run `ibprobe run` or `ibprobe analyze` first")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "layer" not in reader.fieldnames or "epoch" not in reader.fieldnames:
            raise DataError(f"{path} is not an MI table (needs at least the columns 'epoch' and 'layer')")
        rows = [{k: _typed(k, v) for k, v in r.items() if k is not None} for r in reader]
    for r in rows:
        if r.get("status") is None:
            r["status"] = "ok"
    return rows
