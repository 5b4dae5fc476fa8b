"""The KDE baseline recovers known answers on small synthetic codes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from ibprobe.errors import ConfigError
from ibprobe.estimators.kde import kde_mi


def _discrete_x(values=8, repeats=16):
    return np.repeat(np.arange(values), repeats)  # X uniform over `values` images' worth of codes


def _kde_direct(t, y, var):
    """The ibsgd formula, written out on the full distance matrix (nats -> bits)."""
    t = t.reshape(len(t), -1).astype(np.float64)
    d = ((t[:, None] - t[None]) ** 2).sum(-1) / (2 * var)
    i_xt = -np.mean(logsumexp(-d, axis=1) - np.log(len(t)))
    within = sum(np.mean(y == c) * -np.mean(logsumexp(-d[y == c][:, y == c], axis=1) - np.log(np.sum(y == c)))
                 for c in np.unique(y))
    return i_xt / np.log(2), (i_xt - within) / np.log(2)


def test_kde_well_separated_clusters_give_log2_k():
    k = 8
    centres = np.random.default_rng(1).normal(size=(k, 50)) * 100
    x = _discrete_x(k, 10)
    e = kde_mi(centres[x], x, noise_var=0.1)
    assert e.bits == pytest.approx(3.0, abs=1e-6) and e.i_yh_bits == pytest.approx(3.0, abs=1e-6)
    mixed = np.tile(np.arange(5), 16)  # each cluster holds every label equally: labels carry nothing
    assert kde_mi(centres[x], mixed, noise_var=0.1).i_yh_bits == pytest.approx(0.0, abs=1e-6)


def test_kde_two_points_match_the_closed_form():
    for var in (0.1, 0.5, 4.0):
        e = kde_mi(np.array([[0.0, 0.0], [1.0, 1.0]]), noise_var=var)
        want = -math.log((1 + math.exp(-2.0 / (2 * var))) / 2) / math.log(2)
        assert e.bits == pytest.approx(want, rel=1e-9) and e.i_yh_bits is None


def test_kde_noise_limits_and_blocks():
    rng = np.random.default_rng(2)
    t, y = rng.normal(size=(150, 2, 3)), rng.integers(0, 3, 150)
    assert kde_mi(t, noise_var=1e-6).bits == pytest.approx(math.log2(150))  # distinct codes, tiny noise
    assert kde_mi(t, noise_var=1e6).bits == pytest.approx(0.0, abs=1e-4)  # noise drowns the codes
    want = _kde_direct(t, y, 0.7)
    for block in (7, 64, 1000):  # blocks smaller than, not dividing, and larger than N
        e = kde_mi(t + 50.0, y, noise_var=0.7, block=block)  # distances do not see a shift
        assert e.bits == pytest.approx(want[0], abs=1e-6) and e.i_yh_bits == pytest.approx(want[1], abs=1e-6)
    with pytest.raises(ConfigError):
        kde_mi(t, noise_var=0.0)
