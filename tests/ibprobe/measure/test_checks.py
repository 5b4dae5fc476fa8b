"""Self-checks and changes: each flag fires on the situation it names and not otherwise; changes are paired
differences of the two conditional decoders on the same images, with the reference cancelled."""
import numpy as np
import pytest

from ibprobe.measure.checks import change, changes, converged, self_checks


def _row(layer, step, i_xh, ci, h_x=100.0, i_yh=None):
    return {"layer": layer, "step": step, "epoch": step / 10, "i_xh_bits": i_xh, "i_xh_ci_low": i_xh - ci, "i_xh_ci_high": i_xh + ci,
            "h_x_bits": h_x, "i_yh_bits": i_yh, "status": "ok"}


def test_change_is_the_paired_difference_with_a_t_interval():
    rng = np.random.default_rng(0)
    a = 50 + rng.normal(size=200)
    b = a - 1.0 + 0.3 * rng.normal(size=200)  # q_b gives 1 bit less NLL: Î_b = Î_a + 1
    c = change(a, b)
    assert c["delta_bits"] == pytest.approx(np.mean(a - b)) and c["p_value"] < 1e-6
    assert c["ci_low"] < c["delta_bits"] < c["ci_high"] and c["n_test"] == 200 and c["seeds"] == 1
    assert change(a, a + 0.01 * rng.normal(size=200))["p_value"] > 0.01


def test_with_seeds_the_interval_counts_the_variation_between_fits():
    """Two seeds whose fits disagree by a constant on every image: over images alone the change looks exact; over
    seeds it is not, and its interval says so."""
    rng = np.random.default_rng(3)
    a = 50 + rng.normal(size=(2, 300))
    b = a - np.array([[0.2], [1.8]]) + 0.01 * rng.normal(size=(2, 300))  # seed 0 gains 0.2 bits, seed 1 1.8
    pooled = change(a.mean(0), b.mean(0))  # images only: a tight interval around 1
    seeded = change(a, b)
    assert seeded["delta_bits"] == pytest.approx(1.0, abs=0.01) and seeded["seeds"] == 2
    assert pooled["ci_high"] - pooled["ci_low"] < 0.01 < seeded["ci_high"] - seeded["ci_low"]
    assert seeded["p_value"] > pooled["p_value"]


def test_significance_is_corrected_for_every_comparison_in_the_table():
    """20 changes of pure noise and one real one: uncorrected, some noise passes by chance; after Holm's
    correction only the real change is significant, and every row says how many comparisons were made."""
    rng = np.random.default_rng(4)
    epochs = list(range(21))
    nll = {("layer1", e): 60 + rng.normal(size=40) for e in epochs}
    nll[("layer1", 21)] = nll[("layer1", 20)] - 3.0 + 0.1 * rng.normal(size=40)
    rows = [_row("layer1", e, 1.0, 0.1) for e in range(22)]
    got = changes(rows, nll)
    assert len(got) == 21 and all(c["comparisons"] == 21 for c in got)
    assert [c["step_to"] for c in got if c["significant"]] == [21]
    assert all(c["p_holm"] >= c["p_value"] for c in got)


def test_changes_between_checkpoints_and_adjacent_layers():
    rng = np.random.default_rng(1)
    nll = {(l, e): 60 + rng.normal(size=50) for l in ("layer1", "pool") for e in (0, 3, 8)}
    rows = [_row(l, e, 1.0, 0.1) for (l, e) in nll]
    got = changes(rows, nll, chain=["layer1", "pool"])
    assert [(c["kind"], c["layer"], c["step"], c["layer_to"], c["step_to"]) for c in got] == [
        ("step", "layer1", 0, "layer1", 3), ("step", "layer1", 3, "layer1", 8), ("step", "pool", 0, "pool", 3),
        ("step", "pool", 3, "pool", 8), ("layer", "layer1", 0, "pool", 0), ("layer", "layer1", 3, "pool", 3),
        ("layer", "layer1", 8, "pool", 8)]
    assert [(c["epoch"], c["epoch_to"]) for c in got[:2]] == [(0.0, 0.3), (0.3, 0.8)]  # each checkpoint's epoch
    assert got[0]["delta_bits"] == pytest.approx(np.mean(nll[("layer1", 0)] - nll[("layer1", 3)]))


def test_each_self_check_fires_on_what_it_names():
    rng = np.random.default_rng(2)
    base = 80 + rng.normal(size=100)
    nll = {("layer1", 0): base, ("pool", 0): base - 5.0 + 0.1 * rng.normal(size=100),  # pool decodes 5 bits better
           ("layer1", 1): base, ("pool", 1): base + 5.0}
    rows = [_row("layer1", 0, 10.0, 0.5), _row("pool", 0, 15.0, 0.5, i_yh=3.0),
            _row("layer1", 1, 110.0, 0.5), _row("pool", 1, 1.0, 0.5, i_yh=3.0)]
    done = {"best_epoch": 3, "epochs": 4, "stopped_early": True}
    infos = {(r["layer"], r["step"]): [done] for r in rows}
    infos[("layer1", 1)] = [{"best_epoch": 4, "epochs": 4, "epochs_run": 4, "stopped_early": False, "patience": 2}]
    chain = ["layer1", "pool"]
    flags = self_checks(rows, infos, [done], changes(rows, nll, chain), chain)
    assert flags[("pool", 0)] == ["dpi"]  # a function of layer1 cannot know more about X
    assert flags[("layer1", 0)] == []
    assert flags[("layer1", 1)] == ["above_h", "not_converged"]
    assert flags[("pool", 1)] == ["yh_above_xh"]  # I(Y;H) = 3 > I(X;H) = 1 + CI
    assert self_checks(rows, infos, [done], changes(rows, nll))[("pool", 0)] == []  # no chain, no dpi
    late = {"best_epoch": 4, "epochs": 4, "epochs_run": 4, "stopped_early": False}
    ref_late = self_checks(rows, infos, [done, late], [])
    assert all("not_converged" in f for f in ref_late.values())  # the reference (or q0) concerns every row
    partial = self_checks(rows, infos, [done], [], partial=True)
    assert all("partial_reference" in f for f in partial.values())


def test_converged_means_the_plateau_rule_was_met():
    assert converged({"best_epoch": 4, "epochs": 4, "stopped_early": True}) and converged(None)
    assert not converged({"best_epoch": 40, "epochs": 40, "epochs_run": 40, "patience": 3})  # still improving
    assert not converged({"best_epoch": 38, "epochs": 40, "epochs_run": 40, "patience": 3})  # no plateau yet
    assert converged({"best_epoch": 37, "epochs": 40, "epochs_run": 40, "patience": 3})  # 3 epochs without gain
    assert converged({"best_epoch": 0, "epochs": 40, "epochs_run": 0})  # nothing to train
