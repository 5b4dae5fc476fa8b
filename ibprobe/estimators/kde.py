"""The KDE baseline of I(X;T) and I(T;Y) (Kolchinsky & Tracey's pairwise-distance bound, as in ibsgd), in bits.

T is replaced by T + Z with Gaussian noise Z ~ N(0, σ² I) (σ² = `noise_var`), which makes I(X;T) finite:
I(X;T+Z) = H(T+Z) - H(Z). H(T+Z) is the entropy of an equal mixture of Gaussians centred on the N codes, bounded
above by Kolchinsky & Tracey's pairwise-distance (KL) estimator ("Estimating Mixture Entropy with Pairwise
Distances", Entropy 2017), as ibsgd does:
    H(T+Z) <= H(Z) - (1/N) Σ_i ln (1/N) Σ_j exp(-||t_i - t_j||² / (2σ²))   [nats]
so I(X;T) <= -(1/N) Σ_i ln (1/N) Σ_j exp(-||t_i - t_j||² / 2σ²), at most ln N; H(Z) = (d/2) ln(2πeσ²) cancels.
I(T;Y) = H(T+Z) - Σ_y p(y) H(T+Z | Y=y), each term the same bound within class y (ibsgd's per-class terms).
Converted from nats to bits. Pairwise distances are computed in row blocks in float64 (on centred codes), so
memory stays O(block · N) and N of a few thousand with thousands of dimensions is fine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ibprobe.errors import ConfigError, DataError
from ibprobe.estimators.binning import LN2, BaselineEstimate, _as_codes, _labels, _row_blocks


@dataclass(frozen=True)
class KdeConfig:
    """Gaussian noise variance σ² added to the codes (in the activations' own units), and the row block size."""

    noise_var: float = 0.1
    block: int = 512

    def __post_init__(self):
        if not float(self.noise_var) > 0 or int(self.block) < 1:
            raise ConfigError(f"noise_var must be > 0 and block >= 1, got {self.noise_var}, {self.block}")


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
    docstring. Both lie in [0, log2 N] up to rounding; as σ² -> 0 distinct codes give log2 N.

    >>> acts = np.array([[0.0], [10.0], [20.0], [30.0]])               # codes far apart against the noise
    >>> est = kde_mi(acts, noise_var=0.1)
    >>> round(est.bits, 6), est.n                                       # log2 N: every image told apart
    (2.0, 4)
    """
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
