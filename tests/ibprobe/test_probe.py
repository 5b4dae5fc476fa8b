"""I(Y;H) probe: near H(Y) on separable codes, near 0 on random ones, exact H(Y)."""
import math

import numpy as np
import pytest

from ibprobe.errors import DataError
from ibprobe.probe import label_entropy_bits, probe_features, probe_i_yh


def _labels(n, k=4, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def test_label_entropy_is_exact():
    assert label_entropy_bits(np.array([0, 1, 2, 3] * 5), 4) == pytest.approx(2.0)
    assert label_entropy_bits(np.array([0, 0, 0, 1]), 3) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_separable_vector_codes_give_h_y():
    rng = np.random.default_rng(1)
    y = _labels(400)
    h = np.eye(4)[y] * 3 + rng.normal(size=(400, 4)) * 0.3
    r = probe_i_yh(h[:300], y[:300], h[300:], y[300:], num_classes=4)
    assert r["accuracy"] == 1.0
    assert r["i_yh_bits"] == pytest.approx(r["h_y_bits"], abs=0.05)
    assert r["h_y_bits"] == pytest.approx(label_entropy_bits(y[:300], 4))


def test_random_codes_give_about_zero():
    rng = np.random.default_rng(2)
    y = _labels(400)
    h = rng.normal(size=(400, 8))
    r = probe_i_yh(h[:300], y[:300], h[300:], y[300:], num_classes=4)
    assert abs(r["i_yh_bits"]) < 0.1
    assert r["ce_bits"] == pytest.approx(r["h_y_bits"] - r["i_yh_bits"])


def test_spatial_codes_are_pooled_and_probed():
    rng = np.random.default_rng(3)
    y = _labels(300)
    h = rng.normal(size=(300, 3, 4, 4)).astype(np.float32)
    h[:, 1] += 2.0 * y[:, None, None]
    assert probe_features(h).shape == (300, 15)
    r = probe_i_yh(h[:200], y[:200], h[200:], y[200:])
    assert r["i_yh_bits"] > r["h_y_bits"] - 0.1


def test_probe_rejects_mismatched_and_nan():
    y = _labels(20)
    h = np.zeros((20, 2))
    with pytest.raises(DataError, match="length"):
        probe_i_yh(h[:10], y[:9], h[10:], y[10:])
    h[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        probe_i_yh(h[:10], y[:10], h[10:], y[10:])
