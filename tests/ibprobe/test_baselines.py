"""Binning and KDE baselines recover known answers on small synthetic codes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from ibprobe.errors import ConfigError, DataError
from ibprobe.estimators.binning import (BASELINE_COLUMNS, activation_range, baseline_rows, binned_cells, binning_mi,
                                        binning_sensitivity, kde_mi)


def _discrete_x(values=8, repeats=16):
    return np.repeat(np.arange(values), repeats)  # X uniform over `values` images' worth of codes


# ----------------------------------------------------------------------------------------------- binning
def test_binning_codes_that_are_a_function_of_a_discrete_x_give_its_entropy():
    x = _discrete_x(8, 16)
    onehot = np.eye(8)[x]  # [128, 8]: distinct, in [0, 1]
    for bins in (2, 30):
        e = binning_mi(onehot, x % 2, bins=bins)
        assert e.i_xh_bits == pytest.approx(3.0) and e.i_yh_bits == pytest.approx(1.0)
    assert binning_mi(onehot, x, bins=30).i_yh_bits == pytest.approx(3.0)  # labels determined by codes: H(Y)
    assert binning_mi(onehot, bins=1).i_xh_bits == 0.0  # one cell holds everything


def test_binning_labels_independent_of_codes_give_zero():
    x = np.repeat(np.arange(8), 4)
    y = np.tile(np.arange(4), 8)  # every code value meets every label equally often
    e = binning_mi(np.eye(8)[x] * 5.0, y, bins=10)
    assert e.i_xh_bits == pytest.approx(3.0) and e.i_yh_bits == pytest.approx(0.0, abs=1e-12)


def test_bins_span_the_observed_range_not_minus_one_to_one():
    x = _discrete_x(8, 4)
    codes = (x * 10.0 + 1000.0)[:, None]  # far outside [-1, 1]
    assert activation_range(codes) == (1000.0, 1070.0)
    assert binning_mi(codes, bins=8).i_xh_bits == pytest.approx(3.0)  # one level per bin
    assert binning_mi(codes, bins=4).i_xh_bits == pytest.approx(2.0)  # pairs of levels share a bin
    assert binned_cells(codes, 8, value_range=(-1.0, 1.0)).max() == 0  # the pitfall: everything in one cell


def test_binning_reaches_log2_n_and_grows_with_nested_bins(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(200, 3, 2, 2)).astype(np.float16)
    np.save(tmp_path / "a.npy", acts)
    stored = np.load(tmp_path / "a.npy", mmap_mode="r")  # a float16 store file reads the same
    rows = binning_sensitivity(stored, rng.integers(0, 2, 200), (1, 2, 4, 8, 16, 64, 1024))
    ixt = [r["i_xh_bits"] for r in rows]
    assert ixt[0] == 0.0 and ixt[-1] == pytest.approx(math.log2(200)) and rows[0]["ceiling_bits"] == math.log2(200)
    assert all(b >= a - 1e-12 for a, b in zip(ixt, ixt[1:]))  # powers of two: each partition refines the last
    assert binning_mi(stored, bins=16).i_xh_bits == binning_mi(np.asarray(acts, np.float32), bins=16).i_xh_bits


def test_binning_errors():
    with pytest.raises(DataError, match="labels"):
        binning_mi(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        binning_mi(np.array([[0.0], [np.nan]]))
    with pytest.raises(ConfigError):
        binning_mi(np.zeros((4, 2)), bins=0)


# ----------------------------------------------------------------------------------------------- KDE
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
    assert e.i_xh_bits == pytest.approx(3.0, abs=1e-6) and e.i_yh_bits == pytest.approx(3.0, abs=1e-6)
    mixed = np.tile(np.arange(5), 16)  # each cluster holds every label equally: labels carry nothing
    assert kde_mi(centres[x], mixed, noise_var=0.1).i_yh_bits == pytest.approx(0.0, abs=1e-6)


def test_kde_two_points_match_the_closed_form():
    for var in (0.1, 0.5, 4.0):
        e = kde_mi(np.array([[0.0, 0.0], [1.0, 1.0]]), noise_var=var)
        want = -math.log((1 + math.exp(-2.0 / (2 * var))) / 2) / math.log(2)
        assert e.i_xh_bits == pytest.approx(want, rel=1e-9) and e.i_yh_bits is None


def test_kde_noise_limits_and_blocks():
    rng = np.random.default_rng(2)
    t, y = rng.normal(size=(150, 2, 3)), rng.integers(0, 3, 150)
    assert kde_mi(t, noise_var=1e-6).i_xh_bits == pytest.approx(math.log2(150))  # distinct codes, tiny noise
    assert kde_mi(t, noise_var=1e6).i_xh_bits == pytest.approx(0.0, abs=1e-4)  # noise drowns the codes
    want = _kde_direct(t, y, 0.7)
    for block in (7, 64, 1000):  # blocks smaller than, not dividing, and larger than N
        e = kde_mi(t + 50.0, y, noise_var=0.7, block=block)  # distances do not see a shift
        assert e.i_xh_bits == pytest.approx(want[0], abs=1e-6) and e.i_yh_bits == pytest.approx(want[1], abs=1e-6)
    with pytest.raises(ConfigError):
        kde_mi(t, noise_var=0.0)


# ----------------------------------------------------------------------------------------------- tables
def test_baseline_rows_schema():
    rng = np.random.default_rng(3)
    acts = {(0, "layer1"): rng.normal(size=(40, 4, 2, 2)), (3, "pool"): rng.normal(size=(40, 8))}
    rows = baseline_rows(acts, rng.integers(0, 4, 40), bins=(4, 30), noise_vars=(0.1,))
    assert len(rows) == 2 * 3 and all(tuple(r) == BASELINE_COLUMNS for r in rows)
    assert [r["estimator"] for r in rows[:3]] == ["binning", "binning", "kde"]
    assert rows[0]["dims"] == 16 and rows[0]["n"] == 40 and rows[0]["act_min"] < rows[0]["act_max"]
    assert rows[2]["bins"] is None and rows[2]["noise_var"] == 0.1
    assert all(0 <= r["i_yh_bits"] <= r["i_xh_bits"] + 1e-9 <= math.log2(40) + 1e-9 for r in rows)
