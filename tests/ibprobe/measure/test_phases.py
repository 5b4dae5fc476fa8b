"""The stages around each layer's peak of Î(X;H): a known rise and fall is found with its size, noise shows no stage,
the choice of the peak is paid for, and the stages share one Holm family with the other changes."""
import json

import numpy as np
import pytest

from ibprobe.measure.checks import change, changes
from ibprobe.measure.phases import folder_regime, phase_line, phase_rows, stage_changes
from ibprobe.rundir.tables import PHASES

STEPS = (0, 1, 3, 9, 27, 80, 235, 690)  # log:8 over 30 epochs of 23 steps


def _table(curves: dict[str, list[float]], seed: int, n: int = 300, sd: float = 2.0):
    """mi.csv rows and per-image NLLs of layers whose true Î at STEPS is `curves[layer]`: NLL_i = ref_i − Î + noise."""
    rng = np.random.default_rng(seed)
    ref = 200 + 10 * rng.normal(size=n)
    rows, nll = [], {}
    for layer, curve in curves.items():
        for step, bits in zip(STEPS, curve):
            nll[(layer, step)] = (ref - bits + sd * rng.normal(size=n))[None]  # (K=1, N)
            rows.append({"layer": layer, "step": step, "epoch": step / 23, "status": "ok", "n_test": n, "seeds": 1,
                         "i_xh_bits": float(np.mean(ref - nll[(layer, step)]))})
    return rows, nll


def _phases(rows, nll, regime="classify"):
    table = changes(rows, nll, extra=stage_changes(rows, nll))
    return {p["layer"]: p for p in phase_rows(rows, table, regime)}, table


def test_a_known_rise_and_fall_is_found_with_its_size():
    curves = {"layer1": [10, 12, 16, 22, 30, 24, 18, 15],  # rises 20 bits to step 27, falls 15 after it
              "pool": [40, 38, 35, 31, 26, 22, 20, 20],  # falls from the start: no rise
              "fc": [20.0] * 8}  # no stage
    rows, nll = _table(curves, seed=0)
    got, table = _phases(rows, nll)
    l1, pool = got["layer1"], got["pool"]
    assert (l1["step"], l1["first_step"], l1["last_step"], l1["checkpoints"]) == (27, 0, 690, 8)
    assert l1["epoch"] == pytest.approx(27 / 23) and l1["regime"] == "classify"
    assert l1["rise_significant"] and l1["fall_significant"]
    assert l1["rise_ci_low"] < 20 < l1["rise_ci_high"] and l1["fall_ci_low"] < 15 < l1["fall_ci_high"]
    assert l1["rise_bits"] == pytest.approx(l1["i_xh_bits"] - rows[0]["i_xh_bits"])  # Î(peak) − Î(first)
    assert pool["step"] == 0 and pool["rise_bits"] is None and not pool["rise_significant"]
    assert pool["fall_significant"] and pool["fall_ci_low"] < 20 < pool["fall_ci_high"]
    assert set(l1) == set(PHASES.columns)
    assert phase_line(l1).startswith("layer1: rises 0→27 steps (epoch 0→1.17) by ")
    assert ", then falls to step 690 (epoch 30) by " in phase_line(l1)
    assert phase_line(pool).startswith("pool: no significant rise (peak at step 0, epoch 0); falls to step 690")
    assert not got["fc"]["rise_significant"] and not got["fc"]["fall_significant"]
    assert phase_line(got["fc"]).startswith(f"fc: no significant rise or fall (peak at step {got['fc']['step']}, ")
    # the stages are rows of changes.csv, in the one Holm family of every comparison there
    stages = [c for c in table if c["kind"] in ("rise", "fall")]
    assert [(c["kind"], c["layer"], c["step"], c["step_to"]) for c in stages][:3] == [
        ("rise", "layer1", 0, 27), ("fall", "layer1", 27, 690), ("fall", "pool", 0, 690)]
    assert {c["comparisons"] for c in table} == {len(table)} == {3 * 7 + 2 * 8 + len(stages)}


def test_the_choice_of_the_peak_is_paid_for():
    """The peak is the largest of T estimates, so each stage's p-value is multiplied by T − 1 before Holm."""
    rows, nll = _table({"layer1": [10, 11, 12, 13, 12, 11, 10, 9]}, seed=1)
    rise = stage_changes(rows, nll)[0]
    raw = change(nll[("layer1", 0)], nll[("layer1", rise["step_to"])])["p_value"]
    assert rise["p_value"] == pytest.approx(min(1.0, 7 * raw))


def test_noise_shows_no_stage():
    """Î the same at every checkpoint: over 20 draws of noise (2 layers each), at most one shows a stage, as the 5%
    family-wise error rate allows."""
    found = 0
    for seed in range(20):
        rows, nll = _table({"layer1": [20.0] * 8, "pool": [35.0] * 8}, seed=seed)
        got, _ = _phases(rows, nll)
        found += any(p["rise_significant"] or p["fall_significant"] for p in got.values())
        assert all("no significant rise or fall" in phase_line(p) for p in got.values()) or found
    assert found <= 1


def test_a_layer_with_one_checkpoint_has_no_stage(tmp_path):
    rows, nll = _table({"layer1": [5.0]}, seed=2)
    got, table = _phases(rows, nll, regime=None)
    assert table == [] and got["layer1"]["step"] == 0 and got["layer1"]["regime"] == ""
    assert phase_line(got["layer1"]) == "layer1: no significant rise or fall (peak at step 0, epoch 0)"
    assert folder_regime(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model": "resnet_ae", "regime": "autoencode"}))
    assert folder_regime(tmp_path) == "autoencode"
