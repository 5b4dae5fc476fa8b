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

KDE (ibprobe.estimators.kde) is the other baseline; on a run folder both go to analysis/baselines.csv
(ibprobe.measure.baselines).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ibprobe.errors import ConfigError, DataError

LN2 = math.log(2.0)
_BLOCK_BYTES = 64 * 2**20  # activations read per block when streaming a (memory-mapped) store
SENSITIVITY_BINS = (1, 2, 4, 8, 16, 30, 64, 128, 256, 1024)


@dataclass(frozen=True)
class BinningConfig:
    """`bins` equal-width bins over each layer's observed activation range at each checkpoint."""

    bins: int = 30

    def __post_init__(self):
        if int(self.bins) < 1:
            raise ConfigError(f"bins must be >= 1, got {self.bins}")


@dataclass(frozen=True)
class BaselineEstimate:
    """A baseline's I(X;T) (`bits`) and I(T;Y) (`i_yh_bits`, None without labels), in bits, from n codes of `dims`
    numbers. No CI: both are deterministic functions of the n codes."""

    bits: float
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

    >>> acts = np.array([[0.0], [0.1], [0.9], [1.0]])                  # two clusters of two codes
    >>> est = binning_mi(acts, np.array([0, 0, 1, 1]), bins=2)
    >>> est.bits, est.i_yh_bits, est.n                                  # 2 cells of 2 images: 1 bit, all about Y
    (1.0, 1.0, 4)
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
    t = _as_codes(acts)
    lo, hi = activation_range(t)
    out = []
    for b in bin_counts:
        e = binning_mi(t, labels, bins=int(b), value_range=(lo, hi))
        out.append({"bins": int(b), "i_xh_bits": e.bits, "i_yh_bits": e.i_yh_bits, "n": e.n, "dims": e.dims,
                    "ceiling_bits": math.log2(e.n)})
    return out
