"""Known-answer validation: synthetic images whose H(X) and I(X;H) are known exactly.

Every family draws a template id T uniformly from K, and each sub-pixel independently as
x = band·b(T, pixel) + U{0, …, band−1}, with band indices b that never let two bands overlap. So X determines T
(the band of each pixel is x // band) and, exactly,

    H(X) = log2 K + D·log2 band,   I(X; f(T)) = H(f(T)),   I(X; noise) = 0,   I(X; X) = H(X).

Families (L = 17, 1×8×8, so the top level 16 is never used):
- `flat4`: K=4 constant templates, band 4 (H(X) = 130 bits). Codes: independent noise (0), one-hot of T mod 2
  (1), one-hot of T (2), T as a 2×2 spatial map (2), the band map x//4 as an 8×8 map (2), the image itself (130).
  Constant templates are the friendly case for a convolutional decoder: after the first pixel the band is in
  the pixel above/left, so q(x) can be nearly exact.
- `flat8`: K=8 constant templates, band 2 (H(X) = 67 bits). Codes: a constant (0), one-hot T mod 2 (1),
  scalar T // 2 (2), scalar T (3): a narrower band and more templates, and scalar rather than one-hot codes.
- `random4` (full run only): K=4 templates whose band varies per pixel at random (H(X) = 130 bits), code T (2).
  Hard for q(x): it must recognise which of K memorised patterns it is in from the pixels above and to the left,
  and any doubt costs bits at every later pixel; the conditional decoder must map T to a whole pattern.

What is hard, and why: a discretized logistic mixture cannot make a flat band exactly, so both decoders pay a
small excess per sub-pixel; it is the same excess when both know the band, and cancels in the paired difference.
The image-as-code case needs near-deterministic outputs (log-scale near its floor) from the conditioning path, so
its Ĥ(X|H) converges last; its tolerance (5% of 130 = 6.5 bits) is the loosest in absolute terms.
Tolerance per case: |estimate − truth| ≤ max(0.5 bits, 5% of truth). The estimates must also order as the truth.

Known gap (measured, `ibprobe validate --quick --device cpu`, seed 0): with the quick budget the estimates order
as the truth, the null and 1-bit codes land within about 0.6 bits, but q(x) ends ~13 bits/image above H(X)
(2.23 vs 2.03 bits/dim). Its excess sits where the band must be inferred from few neighbours (first row and
column), which a code shortcuts, so informative codes are overestimated (id: 4.1, id map: 10.3 for a truth of 2)
and so is the image (141.8 for 130: Î(X;X) inherits all of q(x)'s excess). Meeting every tolerance needs q(x) within
~0.5 bits of H(X), i.e. a decoder trained to convergence; the quick budget is too small for that on a CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ibprobe.estimate import estimate_mi

LEVELS = 17
SHAPE = (1, 8, 8)
D = int(np.prod(SHAPE))


@dataclass
class Case:
    """One known-answer case: codes and the exact I(X;H) they carry, bits per image."""

    name: str
    codes: np.ndarray
    truth: float


@dataclass
class Family:
    name: str
    images: np.ndarray          # uint8 [N, 1, 8, 8]
    h_x: float                  # exact H(X), bits per image
    cases: list[Case]
    order: list[str]            # case names whose truths strictly increase


@dataclass
class Row:
    family: str
    case: str
    truth: float
    estimate: float
    ci_low: float
    ci_high: float
    tolerance: float
    ok: bool


@dataclass
class ValidationReport:
    rows: list[Row]
    ordering: dict[str, bool]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(self.ordering.values())


def tolerance(truth: float) -> float:
    """Allowed |estimate − truth|: max(0.5 bits, 5% of the truth)."""
    return max(0.5, 0.05 * abs(truth))


def _draw(bands: np.ndarray, band: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """bands: int [K, 1, 8, 8] band index per template and pixel -> (images uint8 [N,1,8,8], ids [N])."""
    k = bands.shape[0]
    ids = rng.integers(0, k, n)
    x = band * bands[ids] + rng.integers(0, band, (n, *SHAPE))  # (N, 1, 8, 8)
    assert x.max() < LEVELS
    return x.astype(np.uint8), ids


def _onehot(v: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[v]


def flat4(n: int, seed: int, *, quick: bool) -> Family:
    rng = np.random.default_rng(seed)
    bands = np.broadcast_to(np.arange(4)[:, None, None, None], (4, *SHAPE))
    x, t = _draw(bands, 4, n, rng)
    h_x = math.log2(4) + D * math.log2(4)
    cases = [
        Case("noise", rng.standard_normal((n, 2)).astype(np.float32), 0.0),
        Case("id mod 2", _onehot(t % 2, 2), 1.0),
        Case("id", _onehot(t, 4), 2.0),
        Case("id map 2x2", np.broadcast_to(t[:, None, None, None], (n, 1, 2, 2)).astype(np.float32).copy(), 2.0),
        Case("band map 8x8", (x // 4).astype(np.float32), 2.0),
        Case("image", x.astype(np.float32), h_x),
    ]
    if quick:
        cases = [c for c in cases if c.name != "band map 8x8"]
    return Family("flat4", x, h_x, cases, ["noise", "id mod 2", "id", "image"])


def flat8(n: int, seed: int, *, quick: bool) -> Family:
    rng = np.random.default_rng(seed + 1)
    bands = np.broadcast_to(np.arange(8)[:, None, None, None], (8, *SHAPE))
    x, t = _draw(bands, 2, n, rng)
    cases = [
        Case("constant", np.zeros((n, 1), np.float32), 0.0),
        Case("id mod 2", _onehot(t % 2, 2), 1.0),
        Case("id // 2", (t // 2).astype(np.float32), 2.0),
        Case("id", t.astype(np.float32), 3.0),
    ]
    return Family("flat8", x, math.log2(8) + D, cases, ["constant", "id mod 2", "id // 2", "id"])


def random4(n: int, seed: int, *, quick: bool) -> Family:
    rng = np.random.default_rng(seed + 2)
    while True:
        bands = rng.integers(0, 4, (4, *SHAPE))
        if len({b.tobytes() for b in bands}) == 4:  # distinct patterns, so X determines T
            break
    x, t = _draw(bands, 4, n, rng)
    cases = [Case("noise", rng.standard_normal((n, 2)).astype(np.float32), 0.0), Case("id", _onehot(t, 4), 2.0)]
    return Family("random4", x, math.log2(4) + D * 2, cases, ["noise", "id"])


# Budgets: the quick one is sized for about a minute on 2 idle CPU cores (7 tiny fits of 8 epochs).
QUICK = {"n": 400, "families": (flat4,), "warm_start": True,
         "decoder": {"nr_resnet": 1, "nr_filters": 32, "nr_mix": 4, "dropout": 0.0},
         "fit": {"epochs": 8, "batch_size": 16, "lr": 3e-3, "lr_decay": 0.9, "patience": 0}}
# The full suite has not been run to completion on the 2-core development box; its budget is a guess that
# extends the quick one (more images, longer schedules, a slightly wider decoder).
FULL = {"n": 1000, "families": (flat4, flat8, random4), "warm_start": True,
        "decoder": {"nr_resnet": 2, "nr_filters": 48, "nr_mix": 5, "dropout": 0.0},
        "fit": {"epochs": 20, "batch_size": 16, "lr": 3e-3, "lr_decay": 0.9, "patience": 0}}


def run_validation(*, quick: bool = False, device: str = "auto", seed: int = 0, progress: bool = True,
                   log=print) -> ValidationReport:
    """Estimate I(X;H) on every known-answer case and compare with the truth."""
    import torch

    from ibprobe.utils import resolve_device

    plan = QUICK if quick else FULL
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if quick and resolve_device(device).type == "cpu":
        torch.set_num_threads(1)  # tiny 8x8 decoders: OpenMP overhead outweighs a second thread
    try:
        return _run(plan, quick, device, seed, progress, log, t0)
    finally:
        torch.set_num_threads(threads)


def _run(plan: dict, quick: bool, device: str, seed: int, progress: bool, log, t0: float) -> ValidationReport:
    rows: list[Row] = []
    ordering: dict[str, bool] = {}
    for make in plan["families"]:
        fam = make(plan["n"], seed, quick=quick)
        if log:
            log(f"{fam.name}: {len(fam.cases)} codes, H(X) = {fam.h_x:.2f} bits, N = {len(fam.images)}")
        est = estimate_mi(fam.images, {c.name: c.codes for c in fam.cases}, levels=LEVELS,
                          decoder=plan["decoder"], fit=plan["fit"], seed=seed, device=device, progress=progress,
                          warm_start=plan["warm_start"])
        for c in fam.cases:
            e = est[c.name]
            tol = tolerance(c.truth)
            rows.append(Row(fam.name, c.name, c.truth, e.bits, e.ci_low, e.ci_high, tol,
                            abs(e.bits - c.truth) <= tol))
        vals = [est[name].bits for name in fam.order]
        ordering[fam.name] = all(a < b for a, b in zip(vals, vals[1:]))
    return ValidationReport(rows, ordering, time.perf_counter() - t0)


def format_table(report: ValidationReport) -> str:
    """The table: case | truth | estimate | 95% CI | ok (bits per image)."""
    head = f"{'case':<24} {'truth':>8} {'estimate':>9} {'95% CI':>20} {'tol':>5}  ok"
    lines = [head, "-" * len(head)]
    for r in report.rows:
        ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
        lines.append(f"{r.family + ': ' + r.case:<24} {r.truth:>8.2f} {r.estimate:>9.2f} {ci:>20} {r.tolerance:>5.2f}"
                     f"  {'yes' if r.ok else 'NO'}")
    for fam, ok in report.ordering.items():
        lines.append(f"ordering {fam}: {'yes' if ok else 'NO'} (estimates increase with the truth)")
    lines.append(f"{'PASS' if report.ok else 'FAIL'} in {report.seconds:.0f} s")
    return "\n".join(lines)
