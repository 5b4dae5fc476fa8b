"""Baseline estimates of I(X;T) and I(T;Y) from stored activations: binning and the KDE upper bound.

These are the estimators users of IDNNs (Shwartz-Ziv & Tishby 2017) and ibsgd (Saxe et al., "On the Information
Bottleneck Theory of Deep Learning", ICLR 2018) know; ibprobe draws them beside its decoder estimate on the same
layers and checkpoints, so the reader sees where they disagree. T is a layer's activation, flattened to a vector;
X is the held-out image, each one a distinct value of X (uniform over the N images); Y is its label. Bits.

Binning. The activations of a layer are cut into `bins` equal-width bins spanning the layer's observed range at
that checkpoint (its min and max over all units and images; IDNNs' fixed [-1, 1] range clips ReLU and
unbounded codes, a known pitfall). For a deterministic network T_binned is a function of X, so
I(X;T) = H(T_binned): the entropy of the discretised code, at most log2 N (every image in its own cell). I(T;Y)
is read off the binned joint distribution, H(T_binned) + H(Y) - H(T_binned, Y). Both depend strongly on `bins`
(`binning_sensitivity`): with fine bins any injective layer scores log2 N at every checkpoint.

KDE. T is replaced by T + Z with Gaussian noise Z ~ N(0, σ² I) (σ² = `noise_var`), which makes I(X;T) finite:
I(X;T+Z) = H(T+Z) - H(Z). H(T+Z) is the entropy of an equal mixture of Gaussians centred on the N codes, bounded
above by Kolchinsky & Tracey's pairwise-distance (KL) estimator ("Estimating Mixture Entropy with Pairwise
Distances", Entropy 2017), as ibsgd does:
    H(T+Z) <= H(Z) - (1/N) Σ_i ln (1/N) Σ_j exp(-||t_i - t_j||² / (2σ²))   [nats]
so I(X;T) <= -(1/N) Σ_i ln (1/N) Σ_j exp(-||t_i - t_j||² / 2σ²), at most ln N; H(Z) = (d/2) ln(2πeσ²) cancels.
I(T;Y) = H(T+Z) - Σ_y p(y) H(T+Z | Y=y), each term the same bound within class y (ibsgd's per-class terms).
Converted from nats to bits. Pairwise distances are computed in row blocks in float64 (on centred codes), so
memory stays O(block · N) and N of a few thousand with thousands of dimensions is fine.

On a run folder (`write_baselines`, part of the measure stage): every analysed (checkpoint, layer) on the decoders'
test images, the activation store's "test" split, with their labels -> analysis/baselines.csv (binning at `bins`,
KDE at `noise_var`) and analysis/binning_sensitivity.csv (binning over SENSITIVITY_BINS).
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from decoders.progress import progress as progress_report
from ibprobe.capture import ActivationStore, codes_key
from ibprobe.config import Settings
from ibprobe.errors import ConfigError, DataError, UserError
from ibprobe.fit import JobSpec
from ibprobe.folder import read_inputs
from ibprobe.measure import write_table
from ibprobe.source import decoder_split, open_source

LN2 = math.log(2.0)
_BLOCK_BYTES = 64 * 2**20  # activations read per block when streaming a (memory-mapped) store
BASELINE_COLUMNS = ("epoch", "layer", "estimator", "bins", "noise_var", "i_xh_bits", "i_yh_bits", "n", "dims",
                    "act_min", "act_max", "status", "error")
SENSITIVITY_BINS = (1, 2, 4, 8, 16, 30, 64, 128, 256, 1024)
SENSITIVITY_COLUMNS = ("epoch", "layer", "bins", "i_xh_bits", "i_yh_bits", "n", "dims", "ceiling_bits")


@dataclass(frozen=True)
class BinningConfig:
    """`bins` equal-width bins over each layer's observed activation range at each checkpoint."""

    bins: int = 30

    def __post_init__(self):
        if int(self.bins) < 1:
            raise ConfigError(f"bins must be >= 1, got {self.bins}")


@dataclass(frozen=True)
class KdeConfig:
    """Gaussian noise variance σ² added to the codes (in the activations' own units), and the row block size."""

    noise_var: float = 0.1
    block: int = 512

    def __post_init__(self):
        if not float(self.noise_var) > 0 or int(self.block) < 1:
            raise ConfigError(f"noise_var must be > 0 and block >= 1, got {self.noise_var}, {self.block}")


@dataclass(frozen=True)
class BaselineEstimate:
    """I(X;T) and I(T;Y) in bits (i_yh_bits None without labels), from n codes of `dims` numbers."""

    i_xh_bits: float
    i_yh_bits: float | None
    n: int
    dims: int


# ----------------------------------------------------------------------------------------------- helpers
def _as_codes(acts: np.ndarray) -> np.ndarray:
    """[N, ...] -> a [N, D] view (no copy for C-contiguous arrays or memmaps)."""
    a = acts if isinstance(acts, np.ndarray) else np.asarray(acts)
    if a.ndim < 1 or a.shape[0] < 1:
        raise DataError(f"activations must be an array [N, ...] with N >= 1, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def _labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels).reshape(-1)
    if len(y) != n:
        raise DataError(f"{len(y)} labels for {n} activation rows; pass one label per image")
    return y


def _row_blocks(n: int, row_bytes: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


# ----------------------------------------------------------------------------------------------- binning
def activation_range(acts: np.ndarray) -> tuple[float, float]:
    """(min, max) over all units and rows, read in blocks; DataError on NaN or inf."""
    t = _as_codes(acts)
    lo, hi = math.inf, -math.inf
    for i, j in _row_blocks(len(t), t.shape[1] * t.itemsize):
        block = np.asarray(t[i:j], dtype=np.float64)
        if not np.isfinite(block).all():
            raise DataError("activations contain NaN or inf; the network has diverged at this checkpoint")
        lo, hi = min(lo, float(block.min(initial=math.inf))), max(hi, float(block.max(initial=-math.inf)))
    return lo, hi


def binned_cells(acts: np.ndarray, bins: int, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Cell id (0..K-1, first-seen order) of each row's binned code: bin b = floor((a - lo) / (hi - lo) · bins),
    the top edge in the last bin; `value_range` defaults to `activation_range(acts)`.

    Rows are compared by a 128-bit BLAKE2 digest of their bin indices, so memory stays one block of rows.
    """
    t = _as_codes(acts)
    lo, hi = activation_range(t) if value_range is None else value_range
    width = (hi - lo) / int(bins)
    dtype = np.uint8 if bins <= 2**8 else np.uint16 if bins <= 2**16 else np.uint32
    digests = []
    for i, j in _row_blocks(len(t), t.shape[1] * t.itemsize):
        block = np.asarray(t[i:j], dtype=np.float64)
        idx = np.zeros(block.shape, dtype) if width <= 0 else \
            np.clip(np.floor((block - lo) / width), 0, bins - 1).astype(dtype)  # (B, D)
        digests += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in idx]
    cells: dict[bytes, int] = {}
    return np.array([cells.setdefault(d, len(cells)) for d in digests], dtype=np.int64)


def binning_mi(acts: np.ndarray, labels: np.ndarray | None = None, *, bins: int = 30,
               value_range: tuple[float, float] | None = None) -> BaselineEstimate:
    """Binning estimate: I(X;T) = H(T_binned) and I(T;Y) = H(T_binned) + H(Y) - H(T_binned, Y), bits.

    `acts` [N, ...] (a float16 memmap from the activation store is fine), `labels` [N] or None; `value_range` the
    span of the bins (default the observed range, `activation_range`).
    """
    BinningConfig(bins)
    t = _as_codes(acts)
    y = _labels(labels, len(t))
    cells = binned_cells(t, int(bins), value_range)
    h_t = _entropy_bits(np.bincount(cells))
    i_ty = None
    if y is not None:
        _, y_ids = np.unique(y, return_inverse=True)
        joint = cells * (int(y_ids.max()) + 1) + y_ids
        i_ty = h_t + _entropy_bits(np.bincount(y_ids)) - _entropy_bits(np.unique(joint, return_counts=True)[1])
    return BaselineEstimate(h_t, i_ty, len(t), int(t.shape[1]))


def binning_sensitivity(acts: np.ndarray, labels: np.ndarray | None = None,
                        bin_counts: Sequence[int] = SENSITIVITY_BINS) -> list[dict]:
    """Binning I(X;T) and I(T;Y) for each bin count: rows with bins, i_xh_bits, i_yh_bits, n, dims, ceiling_bits.

    The ceiling is log2 N, which I(X;T) reaches once every image falls in its own cell.
    """
    return _layer_rows(acts, labels, (), (), bin_counts)[1]


# ----------------------------------------------------------------------------------------------- KDE
def _centred_float32(t: np.ndarray) -> np.ndarray:
    mean = np.zeros(t.shape[1], np.float64)
    for i, j in _row_blocks(len(t), t.shape[1] * t.itemsize):
        mean += np.asarray(t[i:j], dtype=np.float64).sum(0)
    mean /= len(t)
    out = np.empty(t.shape, np.float32)
    for i, j in _row_blocks(len(t), t.shape[1] * 8):
        out[i:j] = np.asarray(t[i:j], dtype=np.float64) - mean
    if not np.isfinite(out).all():
        raise DataError("activations contain NaN or inf; the network has diverged at this checkpoint")
    return out


def kde_log_densities(acts: np.ndarray, groups: np.ndarray | None = None, *, noise_var: float = 0.1,
                      block: int = 512) -> tuple[np.ndarray, np.ndarray | None]:
    """For each row i: ln Σ_j exp(-||t_i - t_j||² / 2σ²) over all rows j, and (with `groups`) over the rows j of
    i's group. Distances in float64 on centred codes, `block` rows at a time (memory O(block · N))."""
    from scipy.special import logsumexp  # only here: scipy would add ~0.25 s to every CLI call
    t = _as_codes(acts)
    x = _centred_float32(t)
    n = len(x)
    sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)  # (N,)
    order = np.arange(n) if groups is None else np.argsort(groups, kind="stable")
    x, sq = x[order], sq[order]
    g = None if groups is None else np.asarray(groups)[order]
    lse_all = np.empty(n)
    lse_grp = None if g is None else np.empty(n)
    if g is not None:
        starts = {v: int(s) for v, s in zip(*np.unique(g, return_index=True))}
        ends = {v: starts[v] + int(c) for v, c in zip(*np.unique(g, return_counts=True))}
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        a = x[r0:r1].astype(np.float64)
        d2 = np.empty((r1 - r0, n))  # (B, N) squared distances
        for c0 in range(0, n, block):
            c1 = min(n, c0 + block)
            d2[:, c0:c1] = sq[r0:r1, None] + sq[None, c0:c1] - 2.0 * (a @ x[c0:c1].astype(np.float64).T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(r1 - r0), np.arange(r0, r1)] = 0.0
        logk = d2 / (-2.0 * float(noise_var))
        lse_all[r0:r1] = logsumexp(logk, axis=1)
        if g is not None:
            for v in np.unique(g[r0:r1]):
                rows = np.nonzero(g[r0:r1] == v)[0]
                lse_grp[r0 + rows] = logsumexp(logk[rows, starts[v]:ends[v]], axis=1)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(n)
    return lse_all[inverse], None if lse_grp is None else lse_grp[inverse]


def kde_mi(acts: np.ndarray, labels: np.ndarray | None = None, *, noise_var: float = 0.1,
           block: int = 512) -> BaselineEstimate:
    """KDE upper-bound estimate (Kolchinsky & Tracey, as in ibsgd) of I(X;T+Z) and I(T+Z;Y), bits; see the module
    docstring. Both lie in [0, log2 N] up to rounding; as σ² -> 0 distinct codes give log2 N."""
    KdeConfig(noise_var, block)
    t = _as_codes(acts)
    y = _labels(labels, len(t))
    n = len(t)
    lse_all, lse_grp = kde_log_densities(t, y, noise_var=noise_var, block=int(block))
    i_xt = float(math.log(n) - lse_all.mean())  # nats
    i_ty = None
    if y is not None:
        values, y_ids, counts = np.unique(y, return_inverse=True, return_counts=True)
        # Σ_y p(y) · (-(1/N_y) Σ_{i in y} [lse_grp_i - ln N_y]) = -(1/N) Σ_i lse_grp_i + Σ_y p(y) ln N_y
        within = float(-lse_grp.mean() + (counts / n * np.log(counts)).sum())
        i_ty = i_xt - within
    return BaselineEstimate(i_xt / LN2, None if i_ty is None else i_ty / LN2, n, int(t.shape[1]))


# ----------------------------------------------------------------------------------------------- tables
def baseline_rows(acts: Mapping[tuple[int, str], np.ndarray], labels: np.ndarray | None = None, *,
                  bins: Sequence[int] = (30,), noise_vars: Sequence[float] = (0.1,)) -> list[dict]:
    """Rows of analysis/baselines.csv: one per (epoch, layer) x estimator setting.

    Args:
        acts: {(epoch, layer): activations [N, ...]} on the same N held-out images.
        labels: [N] labels, or None (then i_yh_bits is None).
        bins: bin counts for the binning estimator; noise_vars: σ² values for the KDE one.
    Returns:
        Rows with epoch, layer, estimator ("binning" | "kde"), bins, noise_var, i_xh_bits, i_yh_bits, n, dims,
        act_min, act_max (binning only: the range the bins span), status ("ok") and error ("").
    """
    rows = []
    for (epoch, layer), a in acts.items():
        rows += [{"epoch": int(epoch), "layer": str(layer), **r} for r in _layer_rows(a, labels, bins, noise_vars)[0]]
    return rows


def _layer_rows(a: np.ndarray, labels: np.ndarray | None, bins: Sequence[int], noise_vars: Sequence[float],
                sweep: Sequence[int] = ()) -> tuple[list[dict], list[dict]]:
    """(baselines.csv rows less epoch and layer, binning_sensitivity rows over `sweep`) of one layer's codes; each
    bin count is estimated once, over the codes' observed range."""
    bins, sweep = [int(b) for b in bins], [int(b) for b in sweep]
    lo, hi = activation_range(a)
    est = {b: binning_mi(a, labels, bins=b, value_range=(lo, hi)) for b in dict.fromkeys(bins + sweep)}
    rows = []
    for b in bins:
        e = est[b]
        rows.append({"estimator": "binning", "bins": b, "noise_var": None, "i_xh_bits": e.i_xh_bits,
                     "i_yh_bits": e.i_yh_bits, "n": e.n, "dims": e.dims, "act_min": lo, "act_max": hi,
                     "status": "ok", "error": ""})
    for v in noise_vars:
        e = kde_mi(a, labels, noise_var=float(v))
        rows.append({"estimator": "kde", "bins": None, "noise_var": float(v), "i_xh_bits": e.i_xh_bits,
                     "i_yh_bits": e.i_yh_bits, "n": e.n, "dims": e.dims, "act_min": None, "act_max": None,
                     "status": "ok", "error": ""})
    sens = [{"bins": b, "i_xh_bits": est[b].i_xh_bits, "i_yh_bits": est[b].i_yh_bits, "n": est[b].n,
             "dims": est[b].dims, "ceiling_bits": math.log2(est[b].n)} for b in sweep]
    return rows, sens


# ----------------------------------------------------------------------------------------------- a run folder
def measure_baselines(run_dir: str | os.PathLike, specs: Sequence[JobSpec], settings: Settings, *, bins: int = 30,
                      noise_var: float = 0.1, sweep: Sequence[int] = SENSITIVITY_BINS,
                      progress: bool = False) -> tuple[list[dict], list[dict]]:
    """(baselines.csv rows, binning_sensitivity.csv rows) of each (checkpoint, layer) of `specs`, on the decoders'
    test images (the store's "test" split, the images the decoder estimate is scored on) and their labels.

    A (checkpoint, layer) whose activations cannot be read or hold NaN gives failed rows saying why.
    """
    run_dir = Path(run_dir)
    source, ds = open_source(run_dir)
    _, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    digests = read_inputs(run_dir)["checkpoints"]  # the store keys codes by checkpoint content
    labels = ds.labels[test_idx] if len(np.unique(ds.labels[test_idx])) > 1 else None
    store = ActivationStore(run_dir / "activations")
    counts = sorted({int(b) for b in sweep} | {int(bins)})
    rows, sens, keys = [], [], {}
    for s in progress_report(list(specs), enabled=progress, desc="baselines", unit="layer"):
        try:
            if s.epoch not in keys:  # one digest of the test images per checkpoint, not per layer
                keys[s.epoch] = codes_key(ds.images[test_idx], source, digests.get(str(s.epoch), ""))
            a = store.read(s.epoch, s.layer, "test", keys[s.epoch])
            base, sens_rows = _layer_rows(a, labels, (bins,), (noise_var,), counts)
            rows += [{"epoch": int(s.epoch), "layer": str(s.layer), **r} for r in base]
            sens += [{"epoch": int(s.epoch), "layer": s.layer, **r} for r in sens_rows]
        except UserError as e:
            rows += [{"epoch": int(s.epoch), "layer": s.layer, "estimator": est, "bins": b, "noise_var": v,
                      "status": "failed", "error": str(e).replace("\n", " ")[:500]}
                     for est, b, v in (("binning", int(bins), None), ("kde", None, float(noise_var)))]
    return rows, sens


def write_baselines(run_dir: str | os.PathLike, specs: Sequence[JobSpec], settings: Settings, *, bins: int = 30,
                    noise_var: float = 0.1, progress: bool = False) -> list[Path]:
    """Write analysis/baselines.csv and analysis/binning_sensitivity.csv (`measure_baselines`); return the paths."""
    rows, sens = measure_baselines(run_dir, specs, settings, bins=bins, noise_var=noise_var, progress=progress)
    out = Path(run_dir) / "analysis"
    return [write_table(out / "baselines.csv", rows, BASELINE_COLUMNS),
            write_table(out / "binning_sensitivity.csv", sens, SENSITIVITY_COLUMNS)]


__all__ = ["BASELINE_COLUMNS", "SENSITIVITY_BINS", "SENSITIVITY_COLUMNS", "BinningConfig", "KdeConfig",
           "BaselineEstimate", "activation_range", "binned_cells", "binning_mi", "binning_sensitivity",
           "kde_log_densities", "kde_mi", "baseline_rows", "measure_baselines", "write_baselines"]
