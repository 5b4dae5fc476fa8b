"""The decoder jobs of a run folder -> DIR/decoders/: what each job is (JobSpec and its Role), the job index, the
claim on a job, and running jobs in this process (ibprobe.backends hands them to other processes).

A job is one decoder fit (ibprobe.fit). Its folder is fixed (`JobSpec.job_dir`); it writes decoder.pt,
fit_log.json and its per-image NLLs in bits, then, last and atomically, result.json, which marks it done
(failed.json marks a job that could not finish, e.g. a NaN loss). Its fit resumes from its own fit_state.pt after a
kill. Everything a job needs is in the run folder (analysis.json, source.json, activations/), so a job is a function
of (run_dir, job id) alone: this process, a worker process, `ibprobe run-job RUN_DIR JOB_ID` or a cluster engine can
run it, and a rerun skips what is finished and resumes what was killed. With paired fitting every job but q0 starts
from q0, so q0 (of each repeat) goes first; the other jobs are independent of each other.

Concurrency: a job is claimed with an exclusive flock on <job_dir>/.lock, which the kernel drops when its process
dies: two processes on one folder never fit the same job twice, and a job killed with kill -9 is free at once.
flock holds on one machine; on a cluster, give each job to one worker (`ibprobe run-job`).
"""
from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decoders import DecoderError, load_decoder
from decoders.progress import progress as progress_report
from ibprobe.capture import ActivationStore, codes_key
from ibprobe.config import Runtime, Settings, resolve_device
from ibprobe.errors import DataError, UserError
from ibprobe.fit import FitData, Mixture, Start, fit_decoder
from ibprobe.rundir import paths
from ibprobe.rundir.files import atomic_write_json, read_json, try_lock
from ibprobe.rundir.pinning import check_inputs, job_inputs, read_job_file, read_pinned_analysis, refit_hint
from ibprobe.rundir.sources import decoder_split, open_source, relative_to_run


class Role(str, enum.Enum):
    """What a decoder job fits."""

    Q0 = "q0"  # q0(x), where paired fitting starts every other decoder
    REFERENCE = "reference"  # the plain q(x)
    LABELS = "labels"  # q(x|y), the decoder of the label-mixture reference
    CONDITIONAL = "conditional"  # q(x|h) of one layer at one checkpoint


FOLDERS = {Role.Q0: "_unconditional_init", Role.REFERENCE: "_unconditional", Role.LABELS: "_labels"}
INIT, REFERENCE, LABELS = FOLDERS[Role.Q0], FOLDERS[Role.REFERENCE], FOLDERS[Role.LABELS]


@dataclass(frozen=True)
class JobSpec:
    """One decoder fit: its role, and for a q(x|h) the layer and checkpoint (its step, its file). `repeat` r > 0 is the
    same fit with another seed (--repeats), in DIR/decoders/_repeat<r>/."""

    role: Role
    layer: str | None = None
    step: int | None = None
    checkpoint: str | None = None
    repeat: int = 0

    def __post_init__(self):
        object.__setattr__(self, "role", Role(self.role))
        if (self.role is Role.CONDITIONAL) != (self.layer is not None):
            raise ValueError("a conditional job has a layer, the others none")

    @classmethod
    def q0(cls, repeat: int = 0) -> "JobSpec":
        return cls(Role.Q0, repeat=repeat)

    @classmethod
    def reference(cls, repeat: int = 0) -> "JobSpec":
        return cls(Role.REFERENCE, repeat=repeat)

    @classmethod
    def labels(cls, repeat: int = 0) -> "JobSpec":
        return cls(Role.LABELS, repeat=repeat)

    @classmethod
    def conditional(cls, layer: str, step: int, checkpoint: str | None = None, repeat: int = 0) -> "JobSpec":
        return cls(Role.CONDITIONAL, layer, int(step), checkpoint, repeat)

    @property
    def key(self) -> str:
        """The job id: `layer@step`, `_unconditional`, `_unconditional_init` or `_labels`, and `#r` for repeat r."""
        base = f"{self.layer}@{self.step}" if self.role is Role.CONDITIONAL else FOLDERS[self.role]
        return base + (f"#{self.repeat}" if self.repeat else "")

    def job_dir(self, run_dir: str | os.PathLike) -> Path:
        run = paths.RunDir(run_dir)
        if self.role is Role.CONDITIONAL:
            return run.job(self.layer, self.step, self.repeat)
        return run.job(FOLDERS[self.role], repeat=self.repeat)

    def again(self, repeat: int) -> "JobSpec":
        return dataclasses.replace(self, repeat=int(repeat))


def job_state(job_dir: Path) -> str:
    """'done', 'failed' or 'pending' from the files in a job folder."""
    if (job_dir / paths.RESULT).exists():
        return "done"
    if (job_dir / paths.FAILED).exists():
        return "failed"
    return "pending"


def read_result(job_dir: Path) -> dict | None:
    """The job's result.json (status ok) or failed.json (status failed), or None while it is pending; a damaged
    one is a DataError saying what to do."""
    for name in (paths.RESULT, paths.FAILED):
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
    return ([JobSpec.q0()] if settings.paired else []) + [JobSpec.reference()] + \
        ([JobSpec.labels()] if labelled and settings.reference != "plain" else [])


def plan_jobs(source, layers) -> list[JobSpec]:
    """The conditional jobs, one per (checkpoint, layer), in checkpoint order."""
    return [JobSpec.conditional(layer, int(s), str(p)) for s, p in source.checkpoints for layer in layers]


def write_job_index(run_dir: Path, specs: list[JobSpec]) -> Path:
    """DIR/decoders/jobs.json: every job of the folder with its id, role, folder and checkpoint."""
    jobs = [{"id": s.key, "role": s.role.value, "layer": s.layer, "step": s.step, "repeat": s.repeat,
             "checkpoint": relative_to_run(s.checkpoint, run_dir), "dir": str(s.job_dir(".").as_posix())}
            for s in specs]
    return atomic_write_json(paths.RunDir(run_dir).job_index, {"jobs": jobs})


def _role(j: dict) -> Role:
    if "role" in j:
        return Role(j["role"])
    # an index written before jobs had roles: a layer, or the init / labels flags
    return Role.CONDITIONAL if j["layer"] is not None else Role.Q0 if j["init"] else \
        Role.LABELS if j.get("labels") else Role.REFERENCE


def read_job_index(run_dir: str | os.PathLike) -> list[JobSpec]:
    """The jobs of an analysed folder, references first, from DIR/decoders/jobs.json."""
    path = paths.RunDir(run_dir).job_index
    if not path.is_file():
        raise UserError(f"{run_dir} has no job index ({path}); run `ibprobe run` or `ibprobe analyze` first")
    root = Path(run_dir)
    try:
        jobs = read_json(path)["jobs"]
        if any("step" not in j and "epoch" in j for j in jobs):
            raise UserError(f"{path} keys its checkpoints by epoch (an older ibprobe's); analyse the run into a new "
                            f"--out folder, where checkpoints are keyed by step")
        return [JobSpec(_role(j), j["layer"], j["step"], None if j["checkpoint"] is None else
                        str(root / j["checkpoint"]) if not Path(j["checkpoint"]).is_absolute() else j["checkpoint"],
                        int(j.get("repeat", 0)))
                for j in jobs]
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


# ------------------------------------------------------------------------------------------------ one job
def q0_start(job_dir: Path, expected: dict | None = None) -> Start:
    """The finished q0 in `job_dir` (made from the `expected` inputs, see ibprobe.rundir.pinning.job_inputs), where
    the other paired fits of its repeat start."""
    res = read_result(job_dir)
    if res is None or res.get("status") != "ok":
        raise UserError(f"q0(x), the start of paired fitting, has not finished ({job_dir}); run its job {INIT} "
                        f"first")
    if expected is not None:
        check_inputs(job_dir, res, expected)
    try:
        return Start(load_decoder(job_dir / paths.DECODER), int(res["best_epoch"]))
    except (DecoderError, FileNotFoundError) as e:
        raise DataError(f"{job_dir / paths.DECODER} is damaged or missing ({type(e).__name__}); "
                        f"{refit_hint(job_dir)}") from None


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
    with try_lock(job_dir / paths.LOCK) as mine:
        if not mine:
            return None
        res = finished_result(job_dir, retry_failed)  # someone may have finished it while we waited
        if res is not None:
            return res
        settings, data, kwargs = _job_args(run_dir, spec, job_dir)
        (job_dir / paths.FAILED).unlink(missing_ok=True)
        try:
            fit_decoder(settings, runtime, spec.role.value, data, **kwargs)
        except UserError as e:
            atomic_write_json(job_dir / paths.FAILED, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        return read_result(job_dir)


def _job_args(run_dir: Path, spec: JobSpec, job_dir: Path) -> tuple[Settings, FitData, dict]:
    """The arguments of `fit_decoder` for one job, every input read and checked."""
    meta = read_pinned_analysis(run_dir)  # analysis.json, read once
    settings = Settings.from_dict(meta["settings"])
    source, ds = open_source(run_dir, meta["dataset"])
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    x_fit, x_test = ds.images[fit_idx], ds.images[test_idx]
    digest = meta["inputs"]["checkpoints"].get(str(spec.step)) if spec.role is Role.CONDITIONAL else None
    inputs = job_inputs(settings, x_fit, x_test, source=source, checkpoint=digest)  # each image set hashed once
    plain = {**inputs, "checkpoint": None, "codes": None}  # what a reference (and q0) is made from
    q0 = None
    if settings.paired and spec.role is not Role.Q0:
        q0 = q0_start(JobSpec.q0(spec.repeat).job_dir(run_dir), plain)
    kw = dict(workdir=job_dir, q0=q0, repeat=spec.repeat, desc=spec.key, inputs=plain)
    if spec.role in (Role.Q0, Role.REFERENCE):
        return settings, FitData(x_fit, None, x_test, None), kw
    if spec.role is Role.LABELS:
        y_fit, y_test = ds.labels[fit_idx], ds.labels[test_idx]
        onehot = np.eye(ds.num_classes, dtype=np.float32)
        return settings, FitData(x_fit, onehot[y_fit], x_test, onehot[y_test]), \
            {**kw, "mixture": Mixture(onehot, labels=y_fit)}
    # no pinned digest (a hand-edited analysis.json): keys under which nothing is stored, so the read says so
    keys = inputs["codes"] or {"fit": codes_key(x_fit, source, digest), "test": codes_key(x_test, source, digest)}
    store = ActivationStore(paths.RunDir(run_dir).activations)
    codes_fit = store.read(spec.step, spec.layer, "fit", keys["fit"])
    codes_test = store.read(spec.step, spec.layer, "test", keys["test"])
    mixture = settings.mixture_codes if settings.reference != "plain" and settings.mixture_codes > 0 else None
    return settings, FitData(x_fit, codes_fit, x_test, codes_test), {**kw, "inputs": inputs, "mixture": mixture}


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
            with try_lock(s.job_dir(run_dir) / paths.LOCK, wait=True):
                pass
            out[s.key] = run_job(run_dir, s, runtime, retry_failed=False)
    return out  # type: ignore[return-value]
