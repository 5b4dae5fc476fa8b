"""I(Y;H) from a probe classifier: Î(Y;H) = CE(prior) − CE(probe), both on the held-out codes, in bits.

CE(prior) is the cross-entropy of the held-out labels under the label frequencies of the probe's training labels
(an estimate of H(Y)); CE(probe) that of the probe. The candidates are a multinomial logistic regression on
standardised features (the code itself for vectors; for spatial codes [N,C',H',W'] the channel means over the whole
map and over each 2×2 quadrant, 5·C' features, which keeps the probe small for wide layers) over a grid of L2
strengths from very strong to weak, and the prior-only model, whose Î(Y;H) is exactly 0. One is chosen on a
held-out part of the training codes, then refitted on all of them. So an uninformative code scores about 0 rather
than a negative floor, and Î(Y;H) never exceeds CE(prior). CE(probe) >= H(Y|H) in expectation, so Î(Y;H) is a
lower-bound-style estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ibprobe.errors import DataError

L2_GRID = (1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # per-sample weight penalty on standardised features, strong to weak
PRIOR = "prior"  # the prior-only model: predicts the training label frequencies whatever the code


@dataclass(frozen=True)
class ProbeEstimate:
    """Î(Y;H) = CE(prior) − CE(probe) (`bits`) on n test codes, with the two cross-entropies (bits per image), the
    probe's test accuracy and the L2 strength chosen (or "prior"). No CI: the probe's choice is part of the
    estimate, which is a lower-bound-style estimate of I(Y;H)."""

    bits: float
    n: int
    h_y_bits: float
    ce_bits: float
    accuracy: float
    l2: float | str


def probe_features(codes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Codes [N, ...] -> float64 features [N, F]: vectors as they are, spatial maps pooled (see module doc)."""
    h = (codes.detach().cpu() if torch.is_tensor(codes) else torch.from_numpy(np.array(codes))).double()
    if h.ndim == 1:
        h = h[:, None]  # (N, 1)
    if h.ndim == 4:
        n, c = h.shape[:2]
        whole = h.mean(dim=(2, 3))  # (N, C)
        quad = F.adaptive_avg_pool2d(h, 2).reshape(n, c * 4)  # (N, 4C)
        return torch.cat([whole, quad], dim=1)  # (N, 5C)
    return h.reshape(h.shape[0], -1)  # (N, F)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, seed: int,
                init: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """Full-batch L-BFGS multinomial logistic regression (deterministic on CPU), optionally warm-started."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], k, dtype=torch.float64)
    with torch.no_grad():
        if init is None:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64) * 1e-3)
            lin.bias.zero_()
        else:
            lin.load_state_dict(init.state_dict())
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=100, history_size=10,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _ce_bits(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = lin(x)  # (N, K)
        ce = F.cross_entropy(logits, y).item() / math.log(2)
        acc = (logits.argmax(1) == y).double().mean().item()
    return ce, acc


def _prior_bits(y_fit: np.ndarray, y_eval: np.ndarray, k: int) -> float:
    """Cross-entropy (bits) of labels y_eval under the frequencies of y_fit (add-half smoothing, so a class the
    fit labels lack costs a finite amount)."""
    p = (np.bincount(y_fit, minlength=k) + 0.5) / (len(y_fit) + 0.5 * k)
    return float(-np.log2(p[y_eval]).mean())


def probe_i_yh(codes_train, y_train, codes_test, y_test, *, num_classes: int | None = None,
               seed: int = 0) -> ProbeEstimate:
    """Estimate I(Y;H) in bits with a probe chosen on a held-out part of the training codes (see module doc).

    Args:
        codes_train, codes_test: codes [N, ...] (vector [N,D] or spatial [N,C',H',W']), numpy or torch.
        y_train, y_test: int labels [N] in [0, num_classes).
        num_classes: defaults to max label + 1 over both splits.
        seed: initialises the probe and the held-out split used to choose it.

    Returns:
        A ProbeEstimate: bits = CE(prior) − CE(probe), h_y_bits = CE(prior) and ce_bits = CE(probe) on the test
        labels (bits per image), the test accuracy and the chosen penalty (or "prior").

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400)
    >>> codes = y[:, None] + 0.1 * rng.standard_normal((400, 3))  # a code that tells the label
    >>> est = probe_i_yh(codes[:300], y[:300], codes[300:], y[300:])
    >>> est.n, est.bits > 0.9, est.bits <= est.h_y_bits
    (100, True, True)
    """
    y_tr = np.asarray(y_train).astype(np.int64).reshape(-1)
    y_te = np.asarray(y_test).astype(np.int64).reshape(-1)
    x_tr, x_te = probe_features(codes_train), probe_features(codes_test)
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"probe: codes and labels differ in length (train {len(x_tr)} vs {len(y_tr)}, "
                        f"test {len(x_te)} vs {len(y_te)}); pass one label per code")
    if len(y_tr) < 2 or len(y_te) < 1:
        raise DataError("probe: need at least 2 train and 1 test examples")
    if (y_tr < 0).any() or (y_te < 0).any():
        raise DataError("probe: labels must be non-negative class indices")
    k = int(num_classes) if num_classes is not None else int(max(y_tr.max(), y_te.max())) + 1
    if max(y_tr.max(), y_te.max()) >= k:
        raise DataError(f"probe: a label is >= num_classes={k}")
    if not (torch.isfinite(x_tr).all() and torch.isfinite(x_te).all()):
        raise DataError("probe: codes contain NaN or inf; check the layer's activations")

    mean, std = x_tr.mean(0), x_tr.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std  # (N, F)
    yt_tr, yt_te = torch.from_numpy(y_tr), torch.from_numpy(y_te)

    # Choose on a seeded 20% held-out part of the training codes, then refit on all of them.
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = max(1, len(y_tr) // 5)
    va, tr = perm[:n_val], perm[n_val:]
    best, best_ce, prev = PRIOR, _prior_bits(y_tr[tr], y_tr[va], k) if len(tr) else math.inf, None
    if len(tr) >= 2:
        for l2 in L2_GRID:  # a regularisation path: each fit starts from the previous, stronger one
            prev = _fit_logreg(x_tr[tr], yt_tr[tr], k, l2, seed, init=prev)
            ce, _ = _ce_bits(prev, x_tr[va], yt_tr[va])
            if ce < best_ce - 1e-9:
                best, best_ce = l2, ce
    h_y = _prior_bits(y_tr, y_te, k)
    if best == PRIOR:
        counts = np.bincount(y_tr, minlength=k)
        return ProbeEstimate(0.0, len(y_te), h_y, h_y, float((y_te == counts.argmax()).mean()), PRIOR)
    lin = _fit_logreg(x_tr, yt_tr, k, best, seed)
    ce, acc = _ce_bits(lin, x_te, yt_te)
    return ProbeEstimate(h_y - ce, len(y_te), h_y, ce, acc, best)
