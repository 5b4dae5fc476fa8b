"""Estimator figures drawn from fixed rows: panels, reference lines, variants, the log2 N ceiling."""
from __future__ import annotations

import math

import pytest

from ibprobe.errors import DataError
from ibprobe.report.estimators import binning_sensitivity_plot, estimator_label, estimator_planes, kid_vs_epoch

LAYERS = ["layer1", "layer2.0.relu_out", "pool"]
EPOCHS = [0, 1, 3]


def _kid_rows():
    rows = [dict(epoch=e, layer=l, reference="conditional", kid_mean=0.01 * (i + 1) + 0.001 * e, kid_std=0.002)
            for i, l in enumerate(LAYERS) for e in EPOCHS]
    rows.append(dict(epoch=None, layer=None, reference="unconditional", kid_mean=0.08, kid_std=0.01))
    rows.append(dict(epoch=None, layer=None, reference="split_half", kid_mean=0.0, kid_std=0.004))
    return rows


def test_kid_vs_epoch_one_panel_per_layer_with_both_references():
    fig = kid_vs_epoch(_kid_rows())
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == LAYERS
    for ax in panels:
        refs = sorted(ln.get_gid() for ln in ax.get_lines() if (ln.get_gid() or "").startswith("ref_"))
        assert refs == ["ref_split_half", "ref_unconditional"]
        assert "KID" in panels[0].get_ylabel()
    ref_only = [r for r in _kid_rows() if r["reference"] != "conditional"]
    with pytest.raises(DataError, match="conditional"):
        kid_vs_epoch(ref_only)


def _plane_rows():
    rows = []
    for i, l in enumerate(LAYERS):
        for e in EPOCHS:
            rows.append(dict(epoch=e, layer=l, i_xh_bits=100.0 - 10 * i - e, i_yh_bits=1.0 + 0.5 * e, status="ok"))
            for b in (2, 30):
                rows.append(dict(epoch=e, layer=l, estimator="binning", bins=b, noise_var=None,
                                 i_xh_bits=min(8.0, 2 + b), i_yh_bits=2.0, n=256))
            rows.append(dict(epoch=e, layer=l, estimator="kde", bins=None, noise_var=0.1, i_xh_bits=7.0 - i,
                             i_yh_bits=2.5, n=256))
    return rows


def test_estimator_planes_panels_overlay_and_filter():
    rows = _plane_rows()
    assert [estimator_label(r) for r in rows[:4]] == ["decoder", "binning (2 bins)", "binning (30 bins)",
                                                     "kde (σ²=0.1)"]
    fig = estimator_planes(rows)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["decoder", "binning (2 bins)", "binning (30 bins)", "kde (σ²=0.1)"]
    ceil = [ax for ax in panels if any(ln.get_gid() == "ceiling" for ln in ax.get_lines())]
    assert len(ceil) == 3 and ceil[0].get_lines()[-1].get_xdata()[0] == pytest.approx(math.log2(256))
    assert panels[1].get_xlim()[0] == 0.0  # planes start at 0 bits, so saturation reads as saturation
    fig = estimator_planes(rows, estimators=["decoder", "kde"], layout="overlay")
    ax = fig.axes[0]
    traj = {ln.get_gid() for ln in ax.get_lines() if (ln.get_gid() or "").startswith("trajectory:")}
    assert traj == {f"trajectory:{v}:{l}" for v in ("decoder", "kde (σ²=0.1)") for l in LAYERS}
    with pytest.raises(DataError):
        estimator_planes(rows, estimators=["mine"])
    with pytest.raises(DataError, match="layout"):
        estimator_planes(rows, layout="grid")


def test_binning_sensitivity_plot_columns_per_epoch_and_ceiling():
    rows = [dict(step=9 * e, epoch=9 * e / 23, layer=l, bins=b, i_xh_bits=min(math.log2(b) * (i + 1), 8.0),
                 i_yh_bits=1.0, n=256) for e in EPOCHS for i, l in enumerate(LAYERS) for b in (1, 2, 4, 8, 16)]
    fig = binning_sensitivity_plot(rows)
    top = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in top] == ["epoch 0", "epoch 0.391", "epoch 1.17"]  # a column per checkpoint
    assert len(fig.axes) == 2 * len(EPOCHS)  # I(X;T) row and I(T;Y) row
    for ax in top:
        assert len([ln for ln in ax.get_lines() if ln.get_gid() != "ceiling"]) == len(LAYERS)
        assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_gid() == "ceiling"] == [8.0]
    with pytest.raises(DataError):
        binning_sensitivity_plot([])
