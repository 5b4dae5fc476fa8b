"""The binning baseline recovers known answers on small synthetic codes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ibprobe.errors import ConfigError, DataError
from ibprobe.estimators.binning import activation_range, binned_cells, binning_mi, binning_sensitivity


def _discrete_x(values=8, repeats=16):
    return np.repeat(np.arange(values), repeats)  # X uniform over `values` images' worth of codes


def test_binning_codes_that_are_a_function_of_a_discrete_x_give_its_entropy():
    x = _discrete_x(8, 16)
    onehot = np.eye(8)[x]  # [128, 8]: distinct, in [0, 1]
    for bins in (2, 30):
        e = binning_mi(onehot, x % 2, bins=bins)
        assert e.bits == pytest.approx(3.0) and e.i_yh_bits == pytest.approx(1.0)
    assert binning_mi(onehot, x, bins=30).i_yh_bits == pytest.approx(3.0)  # labels determined by codes: H(Y)
    assert binning_mi(onehot, bins=1).bits == 0.0  # one cell holds everything


def test_binning_labels_independent_of_codes_give_zero():
    x = np.repeat(np.arange(8), 4)
    y = np.tile(np.arange(4), 8)  # every code value meets every label equally often
    e = binning_mi(np.eye(8)[x] * 5.0, y, bins=10)
    assert e.bits == pytest.approx(3.0) and e.i_yh_bits == pytest.approx(0.0, abs=1e-12)


def test_bins_span_the_observed_range_not_minus_one_to_one():
    x = _discrete_x(8, 4)
    codes = (x * 10.0 + 1000.0)[:, None]  # far outside [-1, 1]
    assert activation_range(codes) == (1000.0, 1070.0)
    assert binning_mi(codes, bins=8).bits == pytest.approx(3.0)  # one level per bin
    assert binning_mi(codes, bins=4).bits == pytest.approx(2.0)  # pairs of levels share a bin
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
    assert binning_mi(stored, bins=16).bits == binning_mi(np.asarray(acts, np.float32), bins=16).bits


def test_binning_errors():
    with pytest.raises(DataError, match="labels"):
        binning_mi(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        binning_mi(np.array([[0.0], [np.nan]]))
    with pytest.raises(ConfigError):
        binning_mi(np.zeros((4, 2)), bins=0)
