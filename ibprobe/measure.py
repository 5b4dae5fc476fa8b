"""The measure stage -> DIR/analysis/: Î(X;H) from paired per-image NLLs with a 95% CI, Î(Y;H) from a probe
(ibprobe.probe), and the schema of analysis/mi.csv with its writer and reader.

Ĥ(X) is the held-out cross-entropy of the unconditional decoder q(x), Ĥ(X|H) that of a conditional decoder q(x|h);
both are scored on the SAME test images, so the estimate and its interval come from per-image paired differences.
Both are upper bounds of their entropies, so Î is an estimate, not a bound: it is reported as is, negative values
included. Units: bits per image unless named `bits_per_dim` (bits per sub-pixel, D = C·H·W).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from ibprobe.capture import ActivationStore
from ibprobe.config import Settings
from ibprobe.errors import DataError
from ibprobe.fit import REFERENCE, JobSpec, read_result
from ibprobe.fsutil import atomic_write_text
from ibprobe.probe import probe_i_yh
from ibprobe.source import dataset, relative_to_run

MI_COLUMNS = [
    "epoch", "checkpoint", "layer", "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high", "h_x_bits",
    "h_x_given_h_bits", "bits_per_dim", "i_yh_bits", "n_test", "decoder", "status", "error",
]
_INT_COLUMNS = {"epoch", "n_test"}
_TEXT_COLUMNS = {"checkpoint", "layer", "decoder", "status", "error"}


@dataclass(frozen=True)
class MIEstimate:
    """One I(X;H) estimate. Bits per image unless stated; `bits_per_dim` = bits / D."""

    bits: float                       # Î(X;H) = mean over test images of Ĥ(x) − Ĥ(x|h)
    ci_low: float                     # 95% t-interval of the paired differences
    ci_high: float
    h_x_bits: float                   # held-out mean −log2 q(x)
    h_x_given_h_bits: float           # held-out mean −log2 q(x|h)
    bits_per_dim: float
    n_test: int
    i_yh_bits: float | None = None    # H(Y) − CE(probe), when labels are given
    h_y_bits: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def paired_mi(h_x_per_image, h_x_given_h_per_image, *, dims: int) -> dict:
    """Î = mean of per-image differences −log2 q(x) + log2 q(x|h) on the same test images, bits per image.

    The 95% CI is a Student-t interval on the paired differences (mean ± t_{0.975,n−1}·sd/√n); it is
    symmetric around, hence always contains, the estimate. Returns keys bits, ci_low, ci_high, h_x_bits,
    h_x_given_h_bits, bits_per_dim, n_test (and se_bits, the standard error).
    """
    a = np.asarray(h_x_per_image, dtype=np.float64).reshape(-1)
    b = np.asarray(h_x_given_h_per_image, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise DataError(f"paired_mi needs NLLs of the same test images: got {a.size} and {b.size} values")
    if a.size < 2:
        raise DataError(f"paired_mi needs at least 2 test images for a CI, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("paired_mi: per-image NLLs contain NaN or inf")
    d = a - b  # (N,) bits
    n = d.size
    bits = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.975, n - 1)) * se
    return {"bits": bits, "ci_low": bits - half, "ci_high": bits + half, "h_x_bits": float(a.mean()),
            "h_x_given_h_bits": float(b.mean()), "bits_per_dim": bits / int(dims), "n_test": int(n),
            "se_bits": se}


def estimate(h_x_per_image, h_x_given_h_per_image, *, dims: int, probe: dict | None = None) -> MIEstimate:
    """An MIEstimate from the two decoders' per-image test NLLs (bits) and, optionally, a probe result."""
    mi = paired_mi(h_x_per_image, h_x_given_h_per_image, dims=dims)
    return MIEstimate(bits=mi["bits"], ci_low=mi["ci_low"], ci_high=mi["ci_high"], h_x_bits=mi["h_x_bits"],
                      h_x_given_h_bits=mi["h_x_given_h_bits"], bits_per_dim=mi["bits_per_dim"],
                      n_test=mi["n_test"], i_yh_bits=None if probe is None else probe["i_yh_bits"],
                      h_y_bits=None if probe is None else probe["h_y_bits"])


# ------------------------------------------------------------------------------------------------ a run folder
def measure_jobs(run_dir: str | os.PathLike, specs: list[JobSpec], settings: Settings, dataset_spec: dict,
                 results: dict[str, dict | None]) -> list[dict]:
    """The mi.csv rows of the conditional jobs `specs`, from their per-image test NLLs, the reference's, and a
    probe on the stored codes; a job that failed (or whose reference failed) gives a failed row saying why."""
    run_dir = Path(run_dir)
    ref_dir = JobSpec(None).job_dir(run_dir)
    ref = results.get(REFERENCE) or read_result(ref_dir)
    ds = dataset(dataset_spec)
    dims = int(np.prod(ds.image_shape))
    store = ActivationStore(run_dir / "activations")
    h_x = np.load(ref_dir / "test_nll_bits.npy") if ref is not None and ref.get("status") == "ok" else None
    rows = []
    for s in specs:
        res = results.get(s.key) or read_result(s.job_dir(run_dir))
        where = dict(epoch=s.epoch, checkpoint=relative_to_run(s.checkpoint, run_dir), layer=s.layer)
        if h_x is None:
            reason = (ref or {}).get("error") or "did not finish"
            rows.append(failed_row(**where, error=f"unconditional reference failed: {reason}"))
            continue
        if res is None or res.get("status") != "ok":
            rows.append(failed_row(**where, error=(res or {}).get("error") or "did not finish"))
            continue
        probe = None
        labels_train, labels_test = ds.labels[ds.train_idx], ds.labels[ds.test_idx]
        if settings.probe and len(np.unique(labels_train)) > 1:
            probe = probe_i_yh(store.read(s.epoch, s.layer, "train"), labels_train,
                               store.read(s.epoch, s.layer, "test"), labels_test, num_classes=ds.num_classes,
                               seed=settings.seed)
        est = estimate(h_x, np.load(s.job_dir(run_dir) / "test_nll_bits.npy"), dims=dims, probe=probe)
        rows.append(mi_row(est, **where, decoder=res["decoder"]))
    return rows


# ------------------------------------------------------------------------------------------------ mi.csv
def mi_row(est: MIEstimate, *, epoch: int, checkpoint: str | None, layer: str, decoder: str) -> dict:
    """One row of analysis/mi.csv for a finished (checkpoint, layer)."""
    row = {c: None for c in MI_COLUMNS}
    row.update(epoch=int(epoch), checkpoint=checkpoint, layer=layer, i_xh_bits=est.bits, i_xh_ci_low=est.ci_low,
               i_xh_ci_high=est.ci_high, h_x_bits=est.h_x_bits, h_x_given_h_bits=est.h_x_given_h_bits,
               bits_per_dim=est.bits_per_dim, i_yh_bits=est.i_yh_bits, n_test=int(est.n_test), decoder=decoder,
               status="ok", error="")
    return row


def failed_row(*, epoch: int | None, checkpoint: str | None, layer: str | None, error: str) -> dict:
    """A row of analysis/mi.csv for a (checkpoint, layer) whose job could not finish; `error` says why."""
    row = {c: None for c in MI_COLUMNS}
    row.update(epoch=epoch, checkpoint=checkpoint, layer=layer, status="failed",
               error=str(error).replace("\n", " ")[:500])
    return row


def write_mi_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
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
