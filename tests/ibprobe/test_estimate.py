"""estimate_mi: split, paired CI, input validation, determinism, shared unconditional decoder."""
import numpy as np
import pytest

from ibprobe.errors import ConfigError, DataError
from ibprobe.estimate import MIEstimate, estimate_mi, make_split, paired_mi


# ------------------------------------------------------------------------------------------------ split and CI
def test_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    tr, te = make_split(100, labels, test_fraction=0.2, seed=3)
    assert len(te) == 20 and len(tr) == 80
    assert not set(tr) & set(te) and set(tr) | set(te) == set(range(100))
    assert np.bincount(labels[te]).tolist() == [10, 6, 4]
    tr2, te2 = make_split(100, labels, test_fraction=0.2, seed=3)
    assert np.array_equal(te, te2)
    _, te3 = make_split(100, labels, test_fraction=0.2, seed=4)
    assert not np.array_equal(te, te3)


def test_paired_ci_contains_estimate_and_is_a_t_interval():
    rng = np.random.default_rng(0)
    hx = 100 + rng.normal(size=50)
    hxh = hx - 2 + 0.5 * rng.normal(size=50)
    r = paired_mi(hx, hxh, dims=64)
    d = hx - hxh
    assert r["bits"] == pytest.approx(d.mean())
    assert r["ci_low"] < r["bits"] < r["ci_high"]
    # t_{0.975, 49} = 2.0096
    assert r["ci_high"] - r["bits"] == pytest.approx(2.0096 * d.std(ddof=1) / np.sqrt(50), rel=1e-3)
    assert r["bits_per_dim"] == pytest.approx(r["bits"] / 64)
    assert r["h_x_bits"] == pytest.approx(hx.mean()) and r["n_test"] == 50


def test_paired_mi_reports_negative_values_unclipped():
    r = paired_mi(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.5, 3.0]), dims=1)
    assert r["bits"] < 0 and r["ci_low"] <= r["bits"] <= r["ci_high"]


# ------------------------------------------------------------------------------------------------ bad inputs
def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (n, 1, 4, 4)).astype(np.uint8)
    return x, rng.normal(size=(n, 3)).astype(np.float32)


@pytest.mark.parametrize("mutate, match", [
    (lambda x, h: (x, h[:-1]), "rows but there are 40 images"),
    (lambda x, h: (x.astype(np.float32), h), "must be integers"),
    (lambda x, h: (x + 4, h), r"levels=4 allows \[0, 3\]"),
    (lambda x, h: (x.astype(np.int64) - 1, h), r"values lie in \[-1"),
    (lambda x, h: (x, np.where(np.arange(3) == 1, np.nan, h)), "NaN or inf"),
    (lambda x, h: (x[:, 0], h), "rank 3"),
    (lambda x, h: (x[:5], h[:5]), "need at least 8 "),
])
def test_bad_inputs_raise_data_error(mutate, match):
    x, h = mutate(*_data())
    with pytest.raises(DataError, match=match):
        estimate_mi(x, h, levels=4, progress=False)


def test_label_count_mismatch_and_bad_fraction():
    x, h = _data()
    with pytest.raises(DataError, match="39 labels for 40 images"):
        estimate_mi(x, h, levels=4, labels=np.zeros(39, np.int64), progress=False)
    with pytest.raises(ConfigError, match="test_fraction"):
        estimate_mi(x, h, levels=4, test_fraction=1.5, progress=False)


def test_nan_in_one_code_of_a_dict_names_it():
    x, h = _data()
    bad = h.copy()
    bad[7, 0] = np.inf
    with pytest.raises(DataError, match="'b'.*rows 0..39"):
        estimate_mi(x, {"a": h, "b": bad}, levels=4, progress=False)
