"""Pearson chi-square goodness of fit, shared by the sampling tests."""
from __future__ import annotations

import math

import numpy as np


def chi2_critical(df: int, alpha: float = 1e-3) -> float:
    try:
        from scipy.stats import chi2
        return float(chi2.ppf(1.0 - alpha, df))
    except ImportError:  # Wilson-Hilferty, z for alpha = 1e-3
        z = 3.0902
        return df * (1.0 - 2.0 / (9 * df) + z * math.sqrt(2.0 / (9 * df))) ** 3


def chi2_statistic(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson statistic with cells of expected count < 5 merged; returns (statistic, degrees of freedom)."""
    n = counts.sum()
    exp = probs * n
    small = exp < 5
    obs_c, exp_c = list(counts[~small]), list(exp[~small])
    if small.any():
        obs_c.append(counts[small].sum())
        exp_c.append(exp[small].sum())
    obs_c, exp_c = np.array(obs_c, float), np.array(exp_c, float)
    if exp_c[-1] < 5 and len(exp_c) > 1:  # fold a still-small merged cell into the smallest other one
        k = int(np.argmin(exp_c[:-1]))
        obs_c[k] += obs_c[-1]
        exp_c[k] += exp_c[-1]
        obs_c, exp_c = obs_c[:-1], exp_c[:-1]
    return float(((obs_c - exp_c) ** 2 / exp_c).sum()), len(exp_c) - 1
