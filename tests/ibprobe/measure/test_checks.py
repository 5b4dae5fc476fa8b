"""Self-checks and changes: each flag fires on the situation it names and not otherwise; changes are paired
differences of the two conditional decoders on the same images, with the reference cancelled."""
import numpy as np
import pytest

from ibprobe.measure.checks import change, changes, converged, self_checks


def _row(layer, epoch, i_xh, ci, h_x=100.0, i_yh=None):
    return {"layer": layer, "epoch": epoch, "i_xh_bits": i_xh, "i_xh_ci_low": i_xh - ci, "i_xh_ci_high": i_xh + ci,
            "h_x_bits": h_x, "i_yh_bits": i_yh, "status": "ok"}


def test_change_is_the_paired_difference_with_a_t_interval():
    rng = np.random.default_rng(0)
    a = 50 + rng.normal(size=200)
    b = a - 1.0 + 0.3 * rng.normal(size=200)  # q_b gives 1 bit less NLL: Î_b = Î_a + 1
    c = change(a, b)
    assert c["delta_bits"] == pytest.approx(np.mean(a - b)) and c["significant"]
    assert c["ci_low"] < c["delta_bits"] < c["ci_high"] and c["n_test"] == 200
    assert not change(a, a + 0.01 * rng.normal(size=200))["significant"]


def test_changes_between_checkpoints_and_adjacent_layers():
    rng = np.random.default_rng(1)
    nll = {(l, e): 60 + rng.normal(size=50) for l in ("layer1", "pool") for e in (0, 3, 8)}
    rows = [_row(l, e, 1.0, 0.1) for (l, e) in nll]
    got = changes(rows, nll, chain=["layer1", "pool"])
    assert [(c["kind"], c["layer"], c["epoch"], c["layer_to"], c["epoch_to"]) for c in got] == [
        ("epoch", "layer1", 0, "layer1", 3), ("epoch", "layer1", 3, "layer1", 8), ("epoch", "pool", 0, "pool", 3),
        ("epoch", "pool", 3, "pool", 8), ("layer", "layer1", 0, "pool", 0), ("layer", "layer1", 3, "pool", 3),
        ("layer", "layer1", 8, "pool", 8)]
    assert got[0]["delta_bits"] == pytest.approx(np.mean(nll[("layer1", 0)] - nll[("layer1", 3)]))


def test_each_self_check_fires_on_what_it_names():
    rng = np.random.default_rng(2)
    base = 80 + rng.normal(size=100)
    nll = {("layer1", 0): base, ("pool", 0): base - 5.0 + 0.1 * rng.normal(size=100),  # pool decodes 5 bits better
           ("layer1", 1): base, ("pool", 1): base + 5.0}
    rows = [_row("layer1", 0, 10.0, 0.5), _row("pool", 0, 15.0, 0.5, i_yh=3.0),
            _row("layer1", 1, 110.0, 0.5), _row("pool", 1, 1.0, 0.5, i_yh=3.0)]
    done = {"best_epoch": 3, "epochs": 4}
    infos = {(r["layer"], r["epoch"]): done for r in rows}
    infos[("layer1", 1)] = {"best_epoch": 4, "epochs": 4, "stopped_early": False}
    flags = self_checks(rows, nll, infos, ref_info=done, chain=["layer1", "pool"])
    assert flags[("pool", 0)] == ["dpi"]  # a function of layer1 cannot know more about X
    assert flags[("layer1", 0)] == []
    assert flags[("layer1", 1)] == ["above_h", "not_converged"]
    assert flags[("pool", 1)] == ["yh_above_xh"]  # I(Y;H) = 3 > I(X;H) = 1 + CI
    assert self_checks(rows, nll, infos, ref_info=done)[("pool", 0)] == []  # no chain, no dpi
    ref_late = self_checks(rows, nll, infos, ref_info={"best_epoch": 4, "epochs": 4})
    assert all("not_converged" in f for f in ref_late.values())  # the reference's budget concerns every row
    assert converged({"best_epoch": 4, "epochs": 4, "stopped_early": True}) and converged(None)
