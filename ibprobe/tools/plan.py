"""A plan before a long run: the decoder jobs of a preset or of a run folder, the time each takes on the target
machine, and the expected wall time and cost on K workers.

One job's time = epochs x (train steps x seconds per step + validation images x eval seconds per image) + test
images x eval seconds per image (its final scoring). The step and eval times of each decoder (its size and code
shape, at the fit's batch size) are measured on this machine with a few steps on random data, or read from a bench
file measured on the target machine (`write_bench`; format BENCH_FORMAT, see `write_bench`). A worker also pays a
start-up (Python, torch and the data), once per worker on the local and Ray backends and once per task on Slurm.
Early stopping only shortens a fit: at these speeds the figures bound the fitting time from above. Wall time
counts the decoder jobs of each regime (the references one after the other, then the conditional jobs handed out in
order to the first free of K workers); training the network, capturing and drawing are not included.
"""
from __future__ import annotations

import heapq
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from decoders import DecoderConfig, FitConfig, PixelCNNPP
from decoders.tools.bench import timed
from decoders.device import autocast, eval_mode, setup_device
from decoders.fitting import make_train_step
from ibprobe.backends.tasks import number_of_tasks
from ibprobe.capture import ActivationStore, capture
from ibprobe.config import AnalysisConfig, Settings
from ibprobe.data import DATASET_SHAPES
from ibprobe.errors import ConfigError, DataError
from ibprobe.jobs import JobSpec, Role, job_state, read_job_index, reference_jobs
from ibprobe.models import build_model
from ibprobe.pipeline import preset_configs, regime_dirs
from ibprobe.presets import get_preset
from ibprobe.rundir.files import atomic_write_json, read_json
from ibprobe.rundir.paths import FIT_LOG, RunDir
from ibprobe.rundir.pinning import read_pinned
from ibprobe.rundir.sources import DECODER_TEST_FRACTION, HELDOUT_MIN, dataset, decoder_split, resolve_side

BENCH_FORMAT = "ibprobe.bench/1"
# (train, held-out) images of the named sets whose files may not be on this machine
KNOWN_SPLITS = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "cinic10": (90000, 180000),
                "svhn": (73257, 26032), "mnist": (60000, 10000), "fashion_mnist": (60000, 10000)}


@dataclass(frozen=True)
class PlannedJob:
    """One decoder job: its id, regime, role, decoder (with its code shape), fit and image counts."""

    key: str
    regime: str
    role: str
    decoder: DecoderConfig
    fit: FitConfig
    n_images: int  # given to the fit, which holds out val_fraction of them for validation
    n_test: int
    mixture: int = 0  # components of the mixture reference the job scores (codes, or labels), 0 for none
    state: str = "pending"
    measured_s: float | None = None  # a finished job's fitting time (train + validation), from its fit log

    @property
    def n_val(self) -> int:
        return max(1, int(round(self.n_images * self.fit.val_fraction)))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil((self.n_images - self.n_val) / self.fit.batch_size)


@dataclass(frozen=True)
class Speed:
    """Seconds per training step (one batch of `batch_size`) and per evaluated image, of one decoder."""

    train_step_s: float
    eval_image_s: float


def speed_key(cfg: DecoderConfig, fit: FitConfig) -> str:
    """What a bench entry is matched on: the decoder (with its code shape) and the training batch size."""
    return _bench_key(cfg.to_dict(), int(fit.batch_size))


def _bench_key(decoder: dict, batch_size) -> str:
    return json.dumps({"decoder": decoder, "batch_size": batch_size}, sort_keys=True)


# ------------------------------------------------------------------------------------------------ the jobs
def jobs_of_preset(name: str, *, data_root: str | None = None, device: str = "auto", layers=None,
                   regimes=None) -> list[PlannedJob]:
    """The decoder jobs `ibprobe run --preset NAME` would fit, with the settings it would pin on this device."""
    preset = get_preset(name)
    out = []
    for regime in regime_dirs(".", preset, regimes):
        tcfg, acfg = preset_configs(preset, regime, AnalysisConfig(device=device, layers=tuple(layers or ())),
                                    data_root=data_root)
        n_images, n_test, shape, levels, side = _split_sizes(tcfg.dataset_spec(), acfg.decoder_data)
        settings = acfg.settings(shape, levels, side)
        classes = DATASET_SHAPES.get(tcfg.dataset, (0, 10))[1]
        model = build_model(tcfg.model, in_shape=shape, num_classes=classes, **dict(tcfg.model_args))
        codes = capture(model, np.zeros((2, *shape), np.uint8), list(acfg.layers), levels=levels)
        steps = tcfg.schedule_steps(tcfg.steps_per_epoch(_train_images(tcfg.dataset_spec())))
        specs = reference_jobs(settings, labelled=classes > 1) + [JobSpec.conditional(layer, s) for s in steps
                                                                    for layer in acfg.layers]
        out += [_planned(s, regime, settings, n_images, n_test, classes if s.role is Role.LABELS else
                         None if s.layer is None else codes[s.layer].shape[1:]) for s in specs]
    return out


def jobs_of_run(run_dir: str | Path) -> list[PlannedJob]:
    """The decoder jobs of an analysed folder (DIR/decoders/jobs.json), with their state and, when finished, the
    seconds their fit took."""
    run_dir = Path(run_dir)
    settings, spec, _ = read_pinned(run_dir)
    ds = dataset(spec)
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    run = RunDir(run_dir)
    store = ActivationStore(run.activations)
    config = run.config  # a trained run says its regime; an analysed folder of your own has none
    regime = (_read_or_none(config) or {}).get("regime") or "-"
    out = []
    for s in read_job_index(run_dir):
        shape = ds.num_classes if s.role is Role.LABELS else None if s.layer is None else \
            store.read(s.step, s.layer, "fit").shape[1:]
        job = _planned(s, regime, settings, len(fit_idx), len(test_idx), shape)
        state = job_state(s.job_dir(run_dir))
        log = s.job_dir(run_dir) / FIT_LOG
        try:  # what the fit took, as its log says: a damaged log says nothing
            took = float(sum(r["seconds"] for r in read_json(log)["curve"])) if state == "done" else None
        except (OSError, ValueError, KeyError, TypeError):
            took = None
        out.append(replace(job, state=state, measured_s=took))
    return out


def _read_or_none(path: Path) -> dict | None:
    """A JSON object file, or None where it is missing or damaged."""
    try:
        d = read_json(path)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _planned(s: JobSpec, regime: str, settings: Settings, n_images: int, n_test: int, code_shape) -> PlannedJob:
    fit = settings.stage_fit("q0") if s.role is Role.Q0 else settings.fit  # the others: the same budget
    if isinstance(code_shape, int):  # the label decoder: one-hot codes of this many classes, a K-way mixture
        code_shape, mixture = (code_shape,), code_shape
    else:
        mixture = settings.mixture_codes if s.role is Role.CONDITIONAL and settings.reference != "plain" else 0
    return PlannedJob(s.key, regime, s.role.value, settings.decoder_for(code_shape), fit, int(n_images), int(n_test),
                      int(mixture))


def _train_images(spec: dict) -> int:
    """The images the network trains on (its training split, or the max_train subset), which set the steps of an
    epoch and so where a step schedule puts the checkpoints: loaded when here, else the known size of the set."""
    try:
        return len(dataset(spec).train_idx)
    except DataError:
        if spec["name"] not in KNOWN_SPLITS:
            raise
        return min(KNOWN_SPLITS[spec["name"]][0], int(spec.get("max_train") or KNOWN_SPLITS[spec["name"]][0]))


def _split_sizes(spec: dict, requested_side: str = "auto") -> tuple[int, int, tuple, int, str]:
    """(decoder training images, test images, image shape, levels, data side) of a data set: loaded when it is
    here, else from the known sizes of the named sets."""
    try:
        ds = dataset(spec)
        side = resolve_side(ds, requested_side)
        fit, test = decoder_split(ds, side, int(spec.get("seed", 0)))
        return len(fit), len(test), ds.image_shape, ds.levels, side
    except DataError:
        name = spec["name"]
        if name not in KNOWN_SPLITS:
            raise
        shape, _, levels = DATASET_SHAPES[name]
        train, heldout = KNOWN_SPLITS[name]
        side = requested_side if requested_side != "auto" else "heldout" if heldout >= HELDOUT_MIN else "train"
        n = heldout if side == "heldout" else train
        n_test = round(n * DECODER_TEST_FRACTION)
        return n - n_test, n_test, shape, spec.get("levels") or levels, side


# ------------------------------------------------------------------------------------------------ speeds
def measure_speeds(jobs: list[PlannedJob], *, device: str = "auto", threads: int | None = None, steps: int = 3,
                   log=None) -> dict[str, Speed]:
    """{speed_key: Speed} of each distinct decoder of `jobs` on this machine with `threads` torch threads (a
    worker's): a warm-up step, then `steps` timed training steps and two timed evaluation batches, on random images
    and codes."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads or before))
    speeds: dict[str, Speed] = {}
    try:
        for job in jobs:
            key = speed_key(job.decoder, job.fit)
            if key not in speeds:
                speeds[key] = _measure(job.decoder, job.fit, device, steps)
                if log:
                    log(f"measured {job.key}: {speeds[key].train_step_s * 1e3:.1f} ms per step, "
                        f"{speeds[key].eval_image_s * 1e3:.3f} ms per evaluated image")
    finally:
        torch.set_num_threads(before)  # the caller's threads, whatever a worker of the plan would use
    return speeds


def _measure(cfg: DecoderConfig, fit: FitConfig, device: str, steps: int) -> Speed:
    setup = setup_device(device, bf16=fit.bf16, channels_last=fit.channels_last, compile=fit.compile)
    torch.manual_seed(0)
    model = PixelCNNPP(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.levels, (fit.batch_size, *cfg.image_shape), generator=g)  # (B, C, H, W)
    c = None if cfg.code_shape is None else torch.randn((fit.batch_size, *cfg.code_shape), generator=g)  # (B, ...)
    if c is not None:
        model.set_code_stats(c)
        c = c.to(setup.device)
    model.to(setup.device)
    x = x.to(setup.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = make_train_step(model, opt, setup, fit.grad_clip, 1.0 / x[0].numel())
    model.train()
    step(x, c)  # warm-up
    train_s = timed(lambda: step(x, c), steps, setup.device) / steps
    with eval_mode(model), torch.no_grad():
        def evaluate():
            with autocast(setup, enabled=fit.eval_bf16):
                model.nll_bits(x, c)
        evaluate()
        eval_s = timed(evaluate, 2, setup.device) / 2 / len(x)
    return Speed(train_s, eval_s)


def measure_startup() -> float:
    """Seconds a fresh worker process takes to start Python and import torch and ibprobe's fit stage."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ibprobe.fit"], check=True, capture_output=True)
    return time.perf_counter() - t0


def write_bench(path: str | Path, jobs: list[PlannedJob], speeds: dict[str, Speed], startup_s: float,
                device: str) -> Path:
    """A bench file: JSON {"format": BENCH_FORMAT, "device", "host", "torch", "threads", "startup_s", "decoders":
    [{"decoder": DecoderConfig dict (with code_shape), "batch_size", "train_step_s", "eval_image_s"}, ...]}.
    Seconds per training step (one batch) and per evaluated image; `startup_s` is one worker's start-up."""
    entries, seen = [], set()
    for job in jobs:
        key = speed_key(job.decoder, job.fit)
        if key in speeds and key not in seen:
            seen.add(key)
            entries.append({**json.loads(key), "train_step_s": speeds[key].train_step_s,
                            "eval_image_s": speeds[key].eval_image_s})
    return atomic_write_json(path, {"format": BENCH_FORMAT, "device": str(device), "host": platform.node(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "startup_s": float(startup_s), "decoders": entries})


def read_bench(path: str | Path, jobs: list[PlannedJob]) -> tuple[dict[str, Speed], float, str]:
    """(speeds, start-up seconds, device) from a bench file; a ConfigError names the decoders it lacks."""
    try:
        meta = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--bench {path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != BENCH_FORMAT:
        raise ConfigError(f"--bench {path} is not a bench file of format {BENCH_FORMAT}")
    speeds = {_bench_key(e["decoder"], e["batch_size"]): Speed(float(e["train_step_s"]), float(e["eval_image_s"]))
              for e in meta["decoders"]}
    missing = sorted({j.key for j in jobs if speed_key(j.decoder, j.fit) not in speeds})
    if missing:
        raise ConfigError(f"--bench {path} has no speed for the decoders of job(s) {', '.join(missing[:6])}; make "
                          f"it with this plan's flags and --write-bench FILE on the target machine")
    return speeds, float(meta.get("startup_s", 0.0)), str(meta.get("device", "?"))


# ------------------------------------------------------------------------------------------------ the plan
def job_seconds(job: PlannedJob, speed: Speed) -> float:
    """Upper bound of one job's fitting time (seconds): every epoch of its budget, then its test scoring, and its
    mixture reference's (one pass over the validation and test images per component)."""
    per_epoch = job.steps_per_epoch * speed.train_step_s + job.n_val * speed.eval_image_s
    scoring = (1 + job.mixture) * (job.n_test + job.n_val) * speed.eval_image_s
    return job.fit.epochs * per_epoch + scoring


def wall_seconds(jobs: list[PlannedJob], seconds: dict, workers: int, *, jobs_per_task: int = 1,
                 startup_s: float = 0.0, per_task_startup: bool = False) -> float:
    """Expected wall time (seconds) of `jobs` on `workers` workers: per regime, q0 (which every other job starts
    from), then the other jobs in tasks of `jobs_per_task`, each task to the first free worker, in order. A worker
    starts up once (`per_task_startup`: once per task, as a Slurm array task does)."""
    total = 0.0
    for regime in dict.fromkeys(j.regime for j in jobs):
        mine = [j for j in jobs if j.regime == regime]
        refs = [seconds[j.key, regime] for j in mine if j.role == "q0"]
        cond = [seconds[j.key, regime] for j in mine if j.role != "q0"]
        tasks = [sum(cond[i:i + jobs_per_task]) for i in range(0, len(cond), max(1, jobs_per_task))]
        total += sum(refs) + (startup_s * len(refs) if per_task_startup else 0.0)
        if tasks:
            free = [0.0 if per_task_startup else startup_s] * max(1, min(int(workers), len(tasks)))
            for t in tasks:  # list scheduling: a pool's (or an engine's) queue in submission order
                heapq.heappush(free, heapq.heappop(free) + t + (startup_s if per_task_startup else 0.0))
            total += max(free)
    return total


@dataclass(frozen=True)
class Plan:
    """The jobs, each one's expected seconds ({(job id, regime): s}), a worker's start-up and where the speeds
    come from."""

    jobs: list
    seconds: dict
    startup_s: float
    speeds_from: str

    @classmethod
    def of(cls, jobs: list[PlannedJob], speeds: dict[str, Speed], startup_s: float, speeds_from: str) -> "Plan":
        return cls(jobs, {(j.key, j.regime): job_seconds(j, speeds[speed_key(j.decoder, j.fit)]) for j in jobs},
                   float(startup_s), speeds_from)

    def wall(self, workers: int, *, left_only: bool = False, jobs_per_task: int = 1, backend: str = "local") -> float:
        jobs = [j for j in self.jobs if not left_only or j.state != "done"]
        return wall_seconds(jobs, self.seconds, workers, jobs_per_task=jobs_per_task, startup_s=self.startup_s,
                            per_task_startup=backend == "slurm")


def format_plan(plan: Plan, workers: int, *, price_per_hour: float | None = None, jobs_per_task: int = 1,
                backend: str = "local") -> str:
    """The plan as text: one line per job, then the expected wall time, worker-hours and cost on 1, 2, 4, ... and
    `workers` workers."""
    lines = [f"{'job':<24} {'regime':<10} {'role':<11} {'decoder':<11} {'code':<10} {'epochs':>6} {'steps':>6} "
             f"{'est. s':>8} {'fit s':>8}  state"]
    for j in plan.jobs:
        d = j.decoder
        code = "-" if d.code_shape is None else "x".join(map(str, d.code_shape))
        took = "" if j.measured_s is None else f"{j.measured_s:.1f}"
        lines.append(f"{j.key:<24} {j.regime:<10} {j.role:<11} {f'{d.nr_resnet}x{d.nr_filters}x{d.nr_mix}':<11} "
                     f"{code:<10} {j.fit.epochs:>6} {j.steps_per_epoch:>6} {plan.seconds[j.key, j.regime]:>8.1f} "
                     f"{took:>8}  {j.state}")
    left = any(j.state == "done" for j in plan.jobs)
    n_after = sum(j.role != "q0" for j in plan.jobs)
    lines += ["", f"{len(plan.jobs)} decoder jobs ({n_after} after q0, "
              f"{number_of_tasks(n_after, jobs_per_task)} task(s) of {jobs_per_task}); speeds "
              f"{plan.speeds_from}; worker start-up {plan.startup_s:.1f} s "
              f"({'per task' if backend == 'slurm' else 'per worker'})",
              "est. s: a job's whole budget (early stopping shortens it); fit s: what a finished fit took",
              "", f"{'workers':>7} {'wall':>10}" + (f" {'wall, left':>10}" if left else "")
              + f" {'worker-h':>9}" + (f" {'cost':>10}" if price_per_hour is not None else "")]
    for k in sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= int(workers)} | {int(workers)}):
        wall = plan.wall(k, jobs_per_task=jobs_per_task, backend=backend)
        row = f"{k:>7} {_hms(wall):>10}"
        if left:
            row += f" {_hms(plan.wall(k, left_only=True, jobs_per_task=jobs_per_task, backend=backend)):>10}"
        row += f" {k * wall / 3600:>9.2f}"
        if price_per_hour is not None:
            row += f" {price_per_hour * k * wall / 3600:>10.2f}"
        lines.append(row)
    lines.append("wall: the decoder jobs only (not training, capture or figures); worker-h: workers x wall"
                 + ("; cost: worker-h x price per hour" if price_per_hour is not None else ""))
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
