"""A pilot of a paper-scale run: the paper preset's decoder fitted to convergence on known-answer images of the
paper's shape, then the speeds that `ibprobe plan --bench` turns into the full run's GPU-hours.

The images are the `planes` family of ibprobe.tools.validate at 3x32x32 and L = 256: a template id T uniform over
K = 4; channel 0 is 255 * (T mod 2) and channel 1 is 255 * (T // 2) over the whole image (the extreme levels, which
a mean pushed past the edge predicts with certainty); channel 2 is i.i.d. discretized-logistic noise (mean 128,
scale 1 level, 2.905 bits per pixel). So exactly

    H(X) = log2 K + 1024 * H(noise pixel) = 2976.9 bits,   I(X; onehot(T)) = 2,   I(X; independent noise) = 0,

and a PixelCNN++ can represent the law exactly. The informative code is one-hot T, the null code two independent
normals. Both are estimated with `estimate_mi` as a run does it (paired fitting, the best reference), with the
preset's decoder and its fit (batch, learning rate, Adam's betas, and its learning-rate decay PER STEP, so
`lr_decay` is rescaled to the pilot's shorter epochs); the budget is the pilot's own (PILOT): `epochs` is a cap,
and a fit that was still improving at its cap is reported as not converged. A case is ok when it is within
ibprobe validate's tolerance, max(0.5 bit, 5% of the truth), and its decoders converged.

Then the speeds: one timed training step and evaluation per distinct decoder of the preset's jobs (`measure_speeds`,
as `ibprobe plan --write-bench` does) go into DIR/bench.json, and the plan's timing model is checked against the
pilot's own fit: its predicted seconds per epoch (steps x seconds per step + validation images x seconds per image)
beside the measured ones. bench/paper_pilot.sh then runs `ibprobe plan --preset cinic10-paper --bench
DIR/bench.json`, which prints every job's time and the run's wall time and worker-hours on 1..K GPUs.

`smoke` runs the same path on a CPU in seconds: 48 images, a 1x8x2 decoder, 2 epochs, and the speeds of
digits-quick's (small) decoders instead of the paper's; it checks that everything runs, not the tolerance.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from decoders import DecoderConfig, FitConfig
from decoders.device import one_cpu_thread
from ibprobe.config import resolve_device
from ibprobe.estimators.decoder import estimate_mi
from ibprobe.presets import PIXELCNN_STEP_DECAY, get_preset
from ibprobe.rundir.files import read_json
from ibprobe.rundir.paths import FIT_LOG, sanitize_name
from ibprobe.tools import plan
from ibprobe.tools.validate import Case, Family, Row, entropy_bits, logistic_pmf, tolerance

LEVELS = 256
SHAPE = (3, 32, 32)
# The pilot's budget (our choice): 2,000 images give 1,440 training images per epoch (23 steps of 64); the cap is
# 60 epochs (about 1,400 steps), a fit stops after 8 epochs without a better validation NLL.
PILOT = {"n": 2000, "epochs": 60, "patience": 8, "preset": "cinic10-paper", "plan_preset": "cinic10-paper",
         "decoder": None, "batch_size": None, "mixture_codes": 16}
SMOKE = {"n": 48, "epochs": 2, "patience": 0, "preset": "cinic10-paper", "plan_preset": "digits-quick",
         "decoder": {"nr_resnet": 1, "nr_filters": 8, "nr_mix": 2, "dropout": 0.0}, "batch_size": 16,
         "mixture_codes": 2}
TEST_FRACTION = 0.2  # estimate_mi's default split


def pilot_family(n: int, seed: int) -> Family:
    """`planes` at 3x32x32, L = 256 (module docstring): the images and the two codes with their exact I(X;H)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, n)
    x = np.empty((n, *SHAPE), np.uint8)
    x[:, 0] = ((LEVELS - 1) * (t % 2))[:, None, None]
    x[:, 1] = ((LEVELS - 1) * (t // 2))[:, None, None]
    pmf = logistic_pmf(128.0, 1.0, LEVELS)
    x[:, 2] = rng.choice(LEVELS, size=(n, *SHAPE[1:]), p=pmf)
    h_x = 2.0 + SHAPE[1] * SHAPE[2] * entropy_bits(pmf)
    cases = [Case("noise", rng.standard_normal((n, 2)).astype(np.float32), 0.0),
             Case("id", np.eye(4, dtype=np.float32)[t], 2.0)]
    return Family("planes32", x, h_x, cases, ["noise", "id"], t)


def pilot_settings(budget: dict) -> tuple[dict, dict]:
    """(decoder, fit) overrides: the preset's, with the pilot's epochs, patience and (smoke) decoder and batch, and
    the preset's per-step learning-rate decay over one of the pilot's epochs."""
    preset = get_preset(budget["preset"])
    decoder = dict(budget["decoder"] or preset.decoder)
    fit = dict(preset.fit, epochs=budget["epochs"], patience=budget["patience"])
    if budget["batch_size"]:
        fit["batch_size"] = budget["batch_size"]
    n_fit = budget["n"] - round(budget["n"] * TEST_FRACTION)
    steps = math.ceil((n_fit - max(1, round(n_fit * 0.1))) / fit["batch_size"])  # FitConfig.val_fraction 0.1
    fit["lr_decay"] = PIXELCNN_STEP_DECAY ** steps
    return decoder, fit


@dataclass
class PilotFit:
    """One decoder of the pilot, from its fit log: epochs run, best epoch, cap, seconds per epoch and in all."""

    name: str
    epochs_run: int
    best_epoch: int
    epochs: int
    seconds: float
    epoch_s: float  # median over its epochs after the first (the first pays for warm-up)

    @property
    def converged(self) -> bool:
        """Its best validation epoch came before its cap: it had stopped improving."""
        return self.best_epoch < self.epochs


@dataclass
class PilotReport:
    rows: list  # ibprobe.tools.validate.Row
    fits: list[PilotFit]
    h_x: float
    h_x_ref: float
    planned_epoch_s: float
    bench: Path
    device: str
    seconds: float
    smoke: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Smoke: it ran. Otherwise every case within tolerance and every decoder converged."""
        return self.smoke or (all(r.ok for r in self.rows) and all(f.converged for f in self.fits))


def run_pilot(out: str | Path, *, smoke: bool = False, device: str = "auto", seed: int = 0, progress: bool = True,
              log=None) -> PilotReport:
    """Fit the pilot's decoders into OUT/fits (resumable: finished fits are read back), write OUT/bench.json with
    the speeds of `plan_preset`'s decoders on this machine, and report (module docstring)."""
    budget = SMOKE if smoke else PILOT
    dev = resolve_device("cpu" if smoke else device)
    out = Path(out)
    fam = pilot_family(budget["n"], seed)
    decoder, fit = pilot_settings(budget)
    t0 = time.perf_counter()
    if log:
        log(f"pilot on {dev}: {budget['n']} images 3x32x32, H(X) = {fam.h_x:.1f} bits; decoder {decoder}; fit {fit}")
    with one_cpu_thread(dev) if smoke else nullcontext():
        est = estimate_mi(fam.images, {c.name: c.codes for c in fam.cases}, levels=LEVELS, decoder=decoder, fit=fit,
                          seed=seed, device=str(dev), workdir=out / "fits", progress=progress,
                          mixture_codes=budget["mixture_codes"])
    fits = [_fit_log(out / "fits" / sub, name) for sub, name in
            [("_unconditional_init", "q0(x)"), ("_unconditional", "q(x)")] +
            [(sanitize_name(c.name), f"q(x|{c.name})") for c in fam.cases]]
    rows = [_row(fam.name, c.name, c.truth, est[c.name], tolerance(c.truth)) for c in fam.cases]
    jobs = plan.jobs_of_preset(budget["plan_preset"], device=str(dev))
    threads = 1 if dev.type == "cpu" else None
    speeds = plan.measure_speeds(jobs, device=str(dev), threads=threads, log=log)
    bench = plan.write_bench(out / "bench.json", jobs, speeds, plan.measure_startup(), str(dev))
    planned = _planned_epoch_s(decoder, fit, budget["n"], est["id"], str(dev), threads)
    first = est[fam.cases[0].name]
    return PilotReport(rows, fits, fam.h_x, first.h_x_bits, planned, bench, str(dev), time.perf_counter() - t0, smoke)


def _row(family: str, case: str, truth: float, e, tol: float) -> Row:
    return Row(family, case, truth, e.bits, e.ci_low, e.ci_high, tol, abs(e.bits - truth) <= tol)


def _fit_log(job_dir: Path, name: str) -> PilotFit:
    info = read_json(job_dir / FIT_LOG)
    secs = [float(r["seconds"]) for r in info["curve"]]
    return PilotFit(name, int(info["epochs_run"]), int(info["best_epoch"]), int(info["epochs"]), float(sum(secs)),
                    float(np.median(secs[1:] if len(secs) > 1 else secs)))


def _planned_epoch_s(decoder: dict, fit: dict, n: int, est, device: str, threads) -> float:
    """The plan's seconds per epoch for the pilot's q(x|id) fit, at speeds measured here for that decoder."""
    cfg = DecoderConfig(SHAPE, LEVELS, code_shape=(4,), **decoder)
    fcfg = FitConfig(**fit)
    n_test = int(est.n)
    job = plan.PlannedJob("pilot", "-", "conditional", cfg, fcfg, n - n_test, n_test)
    speed = plan.measure_speeds([job], device=device, threads=threads)[plan.speed_key(cfg, fcfg)]
    return job.steps_per_epoch * speed.train_step_s + job.n_val * speed.eval_image_s


def format_report(r: PilotReport) -> str:
    """The known-answer table, each decoder's fit, the plan's model of an epoch beside the measured one."""
    head = f"{'case':<18} {'truth':>7} {'estimate':>9} {'95% CI':>18} {'tol':>5}  ok"
    lines = [head, "-" * len(head)]
    for row in r.rows:
        ci = f"[{row.ci_low:.2f}, {row.ci_high:.2f}]"
        lines.append(f"{row.family + ': ' + row.case:<18} {row.truth:>7.2f} {row.estimate:>9.2f} {ci:>18} "
                     f"{row.tolerance:>5.2f}  {'yes' if row.ok else 'NO'}")
    lines.append(f"reference: H(X) = {r.h_x:.2f}, chosen {r.h_x_ref:.2f} bits (eps_X = {r.h_x_ref - r.h_x:+.2f})")
    lines += ["", f"{'decoder':<12} {'epochs':>6} {'best':>5} {'cap':>4} {'s/epoch':>8} {'s in all':>9}  converged"]
    for f in r.fits:
        lines.append(f"{f.name:<12} {f.epochs_run:>6} {f.best_epoch:>5} {f.epochs:>4} {f.epoch_s:>8.2f} "
                     f"{f.seconds:>9.1f}  {'yes' if f.converged else 'NO'}")
    measured = [f.epoch_s for f in r.fits if f.name == "q(x|id)"][0]
    lines += ["", f"an epoch of q(x|id): measured {measured:.2f} s, planned {r.planned_epoch_s:.2f} s "
              f"(the plan's model at the speeds measured here)",
              f"speeds of the plan's decoders: {r.bench}",
              f"{'SMOKE (checks that it runs, not the tolerance)' if r.smoke else 'PASS' if r.ok else 'FAIL'} "
              f"on {r.device} in {r.seconds:.0f} s"]
    return "\n".join(lines)


__all__ = ["PILOT", "SMOKE", "PilotFit", "PilotReport", "format_report", "pilot_family", "pilot_settings", "run_pilot"]
