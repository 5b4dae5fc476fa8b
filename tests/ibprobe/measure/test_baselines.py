"""The rows of analysis/baselines.csv."""
from __future__ import annotations

import math

import numpy as np

from ibprobe.measure.baselines import baseline_rows
from ibprobe.rundir.tables import BASELINES


def test_baseline_rows_schema():
    rng = np.random.default_rng(3)
    acts = {(0, "layer1"): rng.normal(size=(40, 4, 2, 2)), (3, "pool"): rng.normal(size=(40, 8))}
    rows = baseline_rows(acts, rng.integers(0, 4, 40), bins=(4, 30), noise_vars=(0.1,), epochs={3: 0.13})
    assert len(rows) == 2 * 3 and all(tuple(r) == BASELINES.columns for r in rows)
    assert [(r["step"], r["epoch"]) for r in rows[::3]] == [(0, 0.0), (3, 0.13)]  # (step, layer) keys, their epochs
    assert [r["estimator"] for r in rows[:3]] == ["binning", "binning", "kde"]
    assert rows[0]["dims"] == 16 and rows[0]["n"] == 40 and rows[0]["act_min"] < rows[0]["act_max"]
    assert rows[2]["bins"] is None and rows[2]["noise_var"] == 0.1
    assert all(0 <= r["i_yh_bits"] <= r["i_xh_bits"] + 1e-9 <= math.log2(40) + 1e-9 for r in rows)
