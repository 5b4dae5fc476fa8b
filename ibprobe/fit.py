"""The fit stage -> DIR/decoders/: one decoder job per (checkpoint, layer) plus the references, their folders and
claims, the job index, the one paired fit, and the local worker pool.

A job is one decoder fit. Its folder is fixed (`JobSpec.job_dir`); it writes decoder.pt, fit_log.json and its
per-image NLLs in bits (test_nll_bits.npy, val_nll_bits.npy on its validation images, and for a mixture reference
mix_test_nll_bits.npy and mix_val_nll_bits.npy), then, last and atomically, result.json, which marks it done
(failed.json marks a job that could not finish, e.g. a NaN loss). Its fit resumes from its own fit_state.pt after a
kill, which is removed once result.json is written (unless the Runtime keeps it). Everything a job needs is in the
run folder (analysis.json, source.json, activations/), so a job is a function of (run_dir, job id) alone: this
process, a worker process, `ibprobe run-job RUN_DIR JOB_ID` or a cluster engine can run it, and a rerun skips
what is finished and resumes what was killed. With paired fitting every job but q0 starts from q0, so q0 (of each
repeat) goes first; the other jobs are independent of each other.

Concurrency: a job is claimed with an exclusive flock on <job_dir>/.lock, which the kernel drops when its process
dies: two processes on one folder never fit the same job twice, and a job killed with kill -9 is free at once.
flock holds on one machine; on a cluster, give each job to one worker (`ibprobe run-job`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from decoders import DecoderError, PixelCNNPP, load_decoder, save_decoder
from decoders import fitting as decoder_fitting
from decoders.errors import FitStateError
from decoders.progress import progress as progress_report
from ibprobe.capture import ActivationStore, codes_key
from ibprobe.config import Runtime, Settings, resolve_device
from ibprobe.errors import DataError, JobFailed, UserError
from ibprobe.folder import check_inputs, job_inputs, load_nll, read_job_file, read_pinned_analysis, refit_hint
from ibprobe.fsutil import atomic_np_save, atomic_write_json, epoch_dirname, read_json, sanitize_name, try_lock
from ibprobe.reference import code_mixture, label_mixture, mixture_nll_bits
from ibprobe.source import decoder_split, open_source, relative_to_run

REFERENCE = "_unconditional"  # the reference q(x): the one name of its job and folder
INIT = "_unconditional_init"  # q0(x) of paired fitting: q(x) and every q(x|h) start from it
LABELS = "_labels"  # q(x|y), the decoder of the label mixture reference
INDEX = "jobs.json"  # DIR/decoders/jobs.json, the job index


@dataclass(frozen=True)
class JobSpec:
    """One decoder fit: q(x|h) of `layer` at checkpoint `epoch`; or (layer None) the reference q(x), with `init` the
    q0(x) that paired fitting starts every decoder from, with `labels` q(x|y). `repeat` r > 0 is the same fit with
    another seed (--repeats), in DIR/decoders/_repeat<r>/."""

    layer: str | None
    epoch: int | None = None
    checkpoint: str | None = None
    init: bool = False
    labels: bool = False
    repeat: int = 0

    @property
    def key(self) -> str:
        """The job id: `layer@epoch`, `_unconditional`, `_unconditional_init` or `_labels`, and `#r` for repeat r."""
        base = (INIT if self.init else LABELS if self.labels else REFERENCE) if self.layer is None \
            else f"{self.layer}@{self.epoch}"
        return base + (f"#{self.repeat}" if self.repeat else "")

    @property
    def role(self) -> str:
        return "q0" if self.init else "labels" if self.labels else "reference" if self.layer is None \
            else "conditional"

    def job_dir(self, run_dir: str | os.PathLike) -> Path:
        base = Path(run_dir) / "decoders"
        if self.repeat:
            base = base / f"_repeat{int(self.repeat)}"
        if self.layer is None:
            return base / (INIT if self.init else LABELS if self.labels else REFERENCE)
        return base / sanitize_name(self.layer) / epoch_dirname(self.epoch)

    def again(self, repeat: int) -> "JobSpec":
        return dataclasses.replace(self, repeat=int(repeat))


def job_state(job_dir: Path) -> str:
    """'done', 'failed' or 'pending' from the files in a job folder."""
    if (job_dir / "result.json").exists():
        return "done"
    if (job_dir / "failed.json").exists():
        return "failed"
    return "pending"


def read_result(job_dir: Path) -> dict | None:
    """The job's result.json (status ok) or failed.json (status failed), or None while it is pending; a damaged
    one is a DataError saying what to do."""
    for name in ("result.json", "failed.json"):
        p = job_dir / name
        if p.exists():
            return read_job_file(p)
    return None


def finished_result(job_dir: Path, retry_failed: bool) -> dict | None:
    """The result of a job that is finished (done, or failed and not to be retried); None if it is still to run."""
    state = job_state(job_dir)
    if state == "done" or (state == "failed" and not retry_failed):
        return read_result(job_dir)
    return None


def reference_jobs(settings: Settings, labelled: bool) -> list[JobSpec]:
    """q0(x) (with paired fitting), q(x) and, where labels can make a better reference, q(x|y), in fitting order."""
    return ([JobSpec(None, init=True)] if settings.paired else []) + [JobSpec(None)] + \
        ([JobSpec(None, labels=True)] if labelled and settings.reference != "plain" else [])


def plan_jobs(source, layers) -> list[JobSpec]:
    """The conditional jobs, one per (checkpoint, layer), in checkpoint order."""
    return [JobSpec(layer, int(e), str(p)) for e, p in source.checkpoints for layer in layers]


def write_job_index(run_dir: Path, specs: list[JobSpec]) -> Path:
    """DIR/decoders/jobs.json: every job of the folder with its id, folder and checkpoint."""
    jobs = [{"id": s.key, "layer": s.layer, "epoch": s.epoch, "init": s.init, "labels": s.labels,
             "repeat": s.repeat, "checkpoint": relative_to_run(s.checkpoint, run_dir),
             "dir": str(s.job_dir(".").as_posix())} for s in specs]
    return atomic_write_json(run_dir / "decoders" / INDEX, {"jobs": jobs})


def read_job_index(run_dir: str | os.PathLike) -> list[JobSpec]:
    """The jobs of an analysed folder, references first, from DIR/decoders/jobs.json."""
    path = Path(run_dir) / "decoders" / INDEX
    if not path.is_file():
        raise UserError(f"{run_dir} has no job index ({path}); run `ibprobe run` or `ibprobe analyze` first")
    root = Path(run_dir)
    try:
        return [JobSpec(j["layer"], j["epoch"], None if j["checkpoint"] is None else str(root / j["checkpoint"])
                        if not Path(j["checkpoint"]).is_absolute() else j["checkpoint"], bool(j["init"]),
                        bool(j.get("labels")), int(j.get("repeat", 0)))
                for j in read_json(path)["jobs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is damaged ({type(e).__name__}); rerun `ibprobe run` or `ibprobe analyze` on "
                        f"{run_dir} to write it again") from None


def find_job(run_dir: str | os.PathLike, job_id: str) -> JobSpec:
    """The job of DIR with this id; a UserError lists the ids when there is none."""
    specs = read_job_index(run_dir)
    for s in specs:
        if s.key == job_id:
            return s
    shown = ", ".join(s.key for s in specs[:12]) + (", ..." if len(specs) > 12 else "")
    raise UserError(f"{run_dir} has no job {job_id!r}; its jobs: {shown}")


# ------------------------------------------------------------------------------------------------ one paired fit
@dataclass(frozen=True)
class Start:
    """The q0(x) a paired fit continues from: its weights (a model or a decoder.pt) and its best epoch, whose
    weights those are."""

    weights: PixelCNNPP | Path
    best_epoch: int

    @classmethod
    def from_dir(cls, job_dir: Path, expected: dict | None = None) -> "Start":
        """The finished q0 in `job_dir` (made from the `expected` inputs, see ibprobe.folder.job_inputs)."""
        res = read_result(job_dir)
        if res is None or res.get("status") != "ok":
            raise UserError(f"q0(x), the start of paired fitting, has not finished ({job_dir}); run its job "
                            f"{INIT} first")
        if expected is not None:
            check_inputs(job_dir, res, expected)
        try:
            return cls(load_decoder(job_dir / "decoder.pt"), int(res["best_epoch"]))
        except (DecoderError, FileNotFoundError) as e:
            raise DataError(f"{job_dir / 'decoder.pt'} is damaged or missing ({type(e).__name__}); "
                            f"{refit_hint(job_dir)}") from None


@dataclass
class Fitted:
    """A fitted decoder's per-image NLLs in bits: on the test images, on its validation images and, for a mixture
    reference, the mixture's on both. `model` is None when the fit was read from its folder."""

    test_nll: np.ndarray
    val_nll: np.ndarray
    info: dict
    mix_test_nll: np.ndarray | None = None
    mix_val_nll: np.ndarray | None = None
    model: PixelCNNPP | None = None


_OUTPUTS = ("test_nll", "val_nll", "mix_test_nll", "mix_val_nll")  # each saved as <name>_bits.npy


def fit_decoder(settings: Settings, runtime: Runtime, role: str, images_train, codes_train, images_test,
                codes_test, *, workdir: Path | None = None, q0: Start | None = None, repeat: int = 0,
                mixture: int | tuple[np.ndarray, np.ndarray] | None = None, desc: str = "",
                inputs: dict | None = None) -> Fitted:
    """Fit one decoder of an analysis and score it (bits per image).

    role: "q0" (paired fitting's start), "reference" (q(x)), "labels" (q(x|y)) or "conditional" (q(x|h)). With
    paired settings, every role but q0 starts from `q0` and continues its learning-rate schedule. `mixture`: a
    mixture reference to score too: (codes [K, ...], weights [K]), or M for M codes drawn from the decoder's training
    codes (never its validation ones, which choose the reference). With `workdir` the fit is resumable and
    idempotent: a folder holding result.json is read, not refitted; a damaged fit_state.pt (its resume point) is
    dropped and the fit started again. `inputs`: what the fit is made from, recorded in its result.
    """
    if workdir is not None and (workdir / "result.json").exists():
        return Fitted(info=read_job_file(workdir / "result.json"),
                      **{k: _load(workdir / f"{k}_bits.npy") for k in _OUTPUTS})
    if role != "q0" and settings.paired and q0 is None:
        raise ValueError("paired fitting: give the q0 to start from")
    cfg = settings.decoder_for(None if codes_train is None else codes_train.shape[1:])
    stage = settings.stage_fit("q0" if role == "q0" else "q", q0.best_epoch if q0 is not None else None, repeat)
    fit_cfg = runtime.fit_config(stage)

    def fresh() -> PixelCNNPP:
        torch.manual_seed(fit_cfg.seed)  # weight init
        m = PixelCNNPP(cfg)
        if role != "q0" and settings.paired:
            m.start_from(q0.weights if isinstance(q0.weights, PixelCNNPP) else load_decoder(q0.weights))
        return m

    def fit(m: PixelCNNPP):
        return decoder_fitting.fit(m, images_train, codes_train, fit_cfg, eval_images=images_test,
                                   eval_codes=codes_test, workdir=workdir, desc=desc)

    try:
        model = fresh()
        try:
            res = fit(model)
        except FitStateError:  # a damaged or foreign resume point: start the fit over
            (workdir / decoder_fitting.STATE_FILE).unlink(missing_ok=True)
            model = fresh()
            res = fit(model)
        out = Fitted(test_nll=np.asarray(res.eval_nll_bits, np.float64), val_nll=res.val_nll_bits, info={},
                     model=model)
        if mixture is not None:
            if isinstance(mixture, int):
                train_rows = np.setdiff1d(np.arange(len(images_train)), res.val_idx)
                codes, weights = code_mixture(_rows(codes_train, train_rows), mixture, settings.seed), None
            else:
                codes, weights = mixture
            out.mix_test_nll = mixture_nll_bits(model, images_test, codes, weights)
            out.mix_val_nll = mixture_nll_bits(model, _rows(images_train, res.val_idx), codes, weights)
    except FloatingPointError as e:
        raise JobFailed(f"{desc or role}: {e}; try a lower fit lr or grad_clip") from e
    except DecoderError as e:
        raise DataError(f"{desc or role}: {e}") from None
    out.info = {"status": "ok", "role": role, "decoder": settings.decoder_id, "curve": res.curve,
                "best_epoch": int(res.best_epoch), "epochs_run": int(res.epochs_run), "epochs": fit_cfg.epochs,
                "stopped_early": bool(res.stopped_early), "n_test": int(len(out.test_nll)),
                "h_bits": float(np.mean(out.test_nll)), "mixture": None if mixture is None else len(codes),
                "inputs": inputs}
    if workdir is not None:
        save_decoder(model, workdir / "decoder.pt", extra={"decoder_id": settings.decoder_id, "desc": desc})
        atomic_write_json(workdir / "fit_log.json", {**out.info, "decoder_config": cfg.to_dict(),
                                                     "fit_config": asdict(fit_cfg)})
        for k in _OUTPUTS:
            if getattr(out, k) is not None:
                atomic_np_save(workdir / f"{k}_bits.npy", getattr(out, k))
        atomic_write_json(workdir / "result.json", out.info)
        if not runtime.keep_fit_state:
            (workdir / decoder_fitting.STATE_FILE).unlink(missing_ok=True)
    return out


def _load(path: Path) -> np.ndarray | None:
    return load_nll(path) if path.exists() else None


def _rows(arr, idx: np.ndarray) -> np.ndarray:
    return np.asarray(arr[np.asarray(idx)])


# ------------------------------------------------------------------------------------------------ one job
def run_job(run_dir: str | os.PathLike, spec: JobSpec, runtime: Runtime = Runtime(), *,
            retry_failed: bool = False) -> dict | None:
    """Run one decoder job unless finished or held by another process. Returns its result (None if held).

    Only the fit itself can fail a job for good (failed.json, e.g. a NaN loss); a missing or damaged input, or the
    file system, raises and leaves the job pending."""
    run_dir = Path(run_dir)
    job_dir = spec.job_dir(run_dir)
    res = finished_result(job_dir, retry_failed)
    if res is not None:
        return res
    with try_lock(job_dir / ".lock") as mine:
        if not mine:
            return None
        res = finished_result(job_dir, retry_failed)  # someone may have finished it while we waited
        if res is not None:
            return res
        args, kwargs = _job_args(run_dir, spec, job_dir, runtime)
        (job_dir / "failed.json").unlink(missing_ok=True)
        try:
            fit_decoder(*args, **kwargs)
        except UserError as e:
            atomic_write_json(job_dir / "failed.json", {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        return read_result(job_dir)


def _job_args(run_dir: Path, spec: JobSpec, job_dir: Path, runtime: Runtime) -> tuple[tuple, dict]:
    """The arguments of `fit_decoder` for one job, every input read and checked."""
    meta = read_pinned_analysis(run_dir)  # analysis.json, read once
    settings = Settings.from_dict(meta["settings"])
    source, ds = open_source(run_dir, meta["dataset"])
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    x_fit, x_test = ds.images[fit_idx], ds.images[test_idx]
    digest = meta["inputs"]["checkpoints"].get(str(spec.epoch)) if spec.role == "conditional" else None
    inputs = job_inputs(settings, x_fit, x_test, source=source, checkpoint=digest)  # each image set hashed once
    plain = {**inputs, "checkpoint": None, "codes": None}  # what a reference (and q0) is made from
    q0 = None
    if settings.paired and not spec.init:
        q0 = Start.from_dir(JobSpec(None, init=True, repeat=spec.repeat).job_dir(run_dir), plain)
    kw = dict(workdir=job_dir, q0=q0, repeat=spec.repeat, desc=spec.key, inputs=plain)
    if spec.role in ("q0", "reference"):
        return (settings, runtime, spec.role, x_fit, None, x_test, None), kw
    if spec.labels:
        y_fit, y_test = ds.labels[fit_idx], ds.labels[test_idx]
        onehot = np.eye(ds.num_classes, dtype=np.float32)
        return (settings, runtime, "labels", x_fit, onehot[y_fit], x_test, onehot[y_test]), \
            {**kw, "mixture": label_mixture(y_fit, ds.num_classes)}
    # no pinned digest (a hand-edited analysis.json): keys under which nothing is stored, so the read says so
    keys = inputs["codes"] or {"fit": codes_key(x_fit, source, digest), "test": codes_key(x_test, source, digest)}
    store = ActivationStore(run_dir / "activations")
    codes_fit = store.read(spec.epoch, spec.layer, "fit", keys["fit"])
    codes_test = store.read(spec.epoch, spec.layer, "test", keys["test"])
    mixture = settings.mixture_codes if settings.reference != "plain" and settings.mixture_codes > 0 else None
    return (settings, runtime, "conditional", x_fit, codes_fit, x_test, codes_test), \
        {**kw, "inputs": inputs, "mixture": mixture}


# ------------------------------------------------------------------------------------------------ many jobs
def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """torch's CPU threads for each of `workers` processes: the cores shared out, at least one."""
    return max(1, cpu_count() // workers)


def resolve_jobs(jobs: int, device) -> int:
    """`jobs` if > 0; else automatic: one job per CPU core (at most 8) on CPU, one at a time on CUDA."""
    if int(jobs) > 0:
        return int(jobs)
    return 1 if resolve_device(device).type == "cuda" else max(1, min(8, cpu_count()))


def run_jobs(run_dir: Path, specs: list[JobSpec], runtime: Runtime, *, retry_failed: bool = False,
             desc: str = "decoder jobs") -> dict[str, dict]:
    """Run `specs` one after another in this process (ibprobe.backends hands them to several) and wait for those
    that other processes hold; returns {job id: result}."""
    out: dict[str, dict | None] = {}
    for s in progress_report(specs, enabled=runtime.progress, desc=desc, unit="job"):
        out[s.key] = run_job(run_dir, s, runtime, retry_failed=retry_failed)
    for s in specs:  # jobs another process held: wait for them, then read their results
        if out.get(s.key) is None:
            with try_lock(s.job_dir(run_dir) / ".lock", wait=True):
                pass
            out[s.key] = run_job(run_dir, s, runtime, retry_failed=False)
    return out  # type: ignore[return-value]
