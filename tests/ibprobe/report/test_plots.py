"""Plots drawn from a fixed MI table: trajectories, colorbar, units, error bars, each layer's peak, fractional epochs,
the regimes side by side, files written."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from ibprobe.cli import main
from ibprobe.errors import DataError
from ibprobe.report.plots import info_plane, info_plane_regimes, mi_vs_epoch, plot_run, save_figure, training_curves
from ibprobe.rundir.tables import PHASES, read_table, write_table

COLUMNS = ("step,epoch,checkpoint,layer,i_xh_bits,i_xh_ci_low,i_xh_ci_high,h_x_bits,h_x_given_h_bits,bits_per_dim,"
           "i_yh_bits,n_test,decoder,status,error").split(",")
LAYERS = ["stem", "layer1", "layer2.0.relu_out"]
EPOCHS = [0, 1, 3, 10]


def _write_run(run_dir, *, labels=True):
    rows = []
    for li, layer in enumerate(LAYERS):
        for e in EPOCHS:
            ixh = 100.0 - 20 * li + 0.5 * e + 0.125
            rows.append(dict(step=23 * e, epoch=e, checkpoint=f"checkpoints/step_{23 * e:08d}.pt", layer=layer,
                             i_xh_bits=ixh,
                             i_xh_ci_low=ixh - 2.5, i_xh_ci_high=ixh + 3.0, h_x_bits=150.0,
                             h_x_given_h_bits=150.0 - ixh, bits_per_dim=(150.0 - ixh) / 64,
                             i_yh_bits=round(0.3 + 0.2 * li + 0.1 * e, 6) if labels else "", n_test=90, decoder="d0",
                             status="ok", error=""))
    # layer1 @ 3 failed; stem @ 10 has no I(Y;H)
    rows[1 * 4 + 2].update(i_xh_bits="", i_xh_ci_low="", i_xh_ci_high="", h_x_given_h_bits="", bits_per_dim="",
                           i_yh_bits="", status="failed", error="NonFiniteLossError: loss is nan")
    rows[3]["i_yh_bits"] = ""
    (run_dir / "analysis").mkdir(parents=True)
    with open(run_dir / "analysis" / "mi.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for e in range(4):
            f.write(json.dumps(dict(epoch=e, train_loss=2.0 / (e + 1), test_loss=2.2 / (e + 1),
                                    train_acc=0.2 * e, test_acc=0.18 * e)) + "\n")
        f.write('{"epoch": 4, "train_lo')  # a line cut by a killed writer is ignored
    return run_dir


@pytest.fixture
def run(tmp_path):
    return _write_run(tmp_path / "run")


def test_read_table_types_and_empty_cells(run):
    rows = read_table(run / "analysis" / "mi.csv")
    assert len(rows) == len(LAYERS) * len(EPOCHS)
    r = rows[0]
    assert r["step"] == 0 and isinstance(r["step"], int) and r["n_test"] == 90
    assert rows[1]["epoch"] == 1.0 and isinstance(rows[1]["epoch"], float)
    assert r["i_xh_bits"] == pytest.approx(100.125) and isinstance(r["i_xh_bits"], float)
    assert r["layer"] == "stem" and r["status"] == "ok" and r["error"] is None
    failed = [x for x in rows if x["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["i_xh_bits"] is None and failed[0]["error"].startswith("NonFinite")


def test_info_plane_trajectories_colorbar_errorbars(run):
    rows = read_table(run / "analysis" / "mi.csv")
    fig = info_plane(rows, title="t")
    ax = fig.axes[0]
    traj = [ln for ln in ax.get_lines() if ln.get_gid() == "trajectory"]
    assert [ln.get_label() for ln in traj] == LAYERS
    # stem lost its epoch-10 point (no I(Y;H)), layer1 its failed epoch-3 point
    assert [len(ln.get_xdata()) for ln in traj] == [3, 3, 4]
    assert list(traj[1].get_xdata()) == [80.125, 80.625, 85.125]
    assert len(fig.axes) == 2 and "epoch" in fig.axes[1].get_ylabel()  # the colorbar
    assert "bits" in ax.get_xlabel() and "bits" in ax.get_ylabel()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(LAYERS) and all(c.has_xerr for c in bars)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:3] == LAYERS and "peak" in legend[3]
    assert any("layer1 @ step 69" in t.get_text() for t in fig.texts)  # the failed job is named
    rings = [c for c in ax.collections if c.get_gid() == "peak"]  # each layer's largest I(X;H): its last point
    assert [tuple(c.get_offsets()[0]) for c in rings] == [(101.625, 0.6), (85.125, 1.5), (65.125, 1.7)]


def test_mi_vs_epoch_lines_bands_and_label_panel(run):
    rows = read_table(run / "analysis" / "mi.csv")
    fig = mi_vs_epoch(rows)
    ax_x, ax_y = fig.axes
    assert ax_x.get_xscale() == "symlog" and "bits" in ax_x.get_ylabel() and "bits" in ax_y.get_ylabel()
    lines = [ln for ln in ax_x.get_lines() if ln.get_gid() is None]
    assert len(lines) == len(LAYERS) and len(ax_y.get_lines()) == len(LAYERS)
    assert min(lines[0].get_xdata()) == 0  # epoch 0 is drawn on the log axis
    assert len([ln for ln in ax_x.get_lines() if ln.get_gid() == "peak"]) == len(LAYERS)
    assert sum(isinstance(c, PolyCollection) for c in ax_x.collections) == len(LAYERS)  # CI bands


def test_autoencoder_without_labels_has_no_plane(tmp_path):
    run = _write_run(tmp_path / "ae", labels=False)
    rows = read_table(run / "analysis" / "mi.csv")
    assert len(mi_vs_epoch(rows).axes) == 1
    with pytest.raises(DataError):
        info_plane(rows)
    names = {p.name for p in plot_run(run)}
    assert "info_plane.png" not in names and "mi_vs_epoch.png" in names


def test_training_curves_panels():
    metrics = [dict(epoch=e, train_loss=1.0 / (e + 1), test_loss=1.1 / (e + 1)) for e in range(3)]
    fig = training_curves(metrics)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2
    fig = training_curves([dict(m, train_acc=0.5, test_acc=0.4) for m in metrics])
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "accuracy" and "nats" in fig.axes[0].get_ylabel()
    # an autoencoder logs NaN accuracy: no accuracy panel, and its loss is an MSE per pixel
    fig = training_curves([dict(m, train_acc=float("nan"), test_acc=None) for m in metrics], regime="autoencode")
    assert len(fig.axes) == 1 and "MSE" in fig.axes[0].get_ylabel()


def test_plot_run_writes_png_pdf_and_the_csv_drawn(run):
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{s}.{e}" for s in ("info_plane", "mi_vs_epoch", "training_curves")
                           for e in ("png", "pdf", "csv"))
    figs = run / "figures"
    assert (figs / "info_plane.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figs / "info_plane.pdf").read_bytes()[:4] == b"%PDF"
    rows = read_table(run / "analysis" / "mi.csv")
    drawn = [r for r in rows if r["status"] == "ok" and r["i_yh_bits"] is not None]
    assert read_table(figs / "info_plane.csv") == drawn
    assert read_table(figs / "mi_vs_epoch.csv") == [r for r in rows if r["status"] == "ok"]
    with open(figs / "training_curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert not list(figs.glob(".*.tmp"))  # atomic writes leave no temp files


def test_save_figure_copies_a_csv_source(run, tmp_path):
    rows = read_table(run / "analysis" / "mi.csv")
    out = save_figure(mi_vs_epoch(rows), tmp_path / "f" / "fig", run / "analysis" / "mi.csv")
    assert out[2].read_bytes() == (run / "analysis" / "mi.csv").read_bytes()


def test_cli_plot(run, tmp_path, capsys):
    assert main(["plot", str(run)]) == 0
    assert "info_plane.png" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "missing")]) == 2
    (tmp_path / "bare").mkdir()
    assert main(["plot", str(tmp_path / "bare"), "--quiet"]) == 2
    assert "ibprobe run" in capsys.readouterr().err


def test_plot_run_draws_each_regime_of_a_multi_regime_folder(tmp_path):
    _write_run(tmp_path / "both" / "classify")
    _write_run(tmp_path / "both" / "autoencode", labels=False)
    written = plot_run(tmp_path / "both")
    assert (tmp_path / "both" / "classify" / "figures" / "info_plane.png") in written
    assert (tmp_path / "both" / "autoencode" / "figures" / "mi_vs_epoch.png") in written
    assert not (tmp_path / "both" / "autoencode" / "figures" / "info_plane.png").exists()


def test_flagged_points_are_hollow_and_significant_changes_starred():
    rows = [{"step": e, "epoch": e, "layer": l, "i_xh_bits": v, "i_xh_ci_low": v - 1, "i_xh_ci_high": v + 1, "i_yh_bits": 1.0,
             "status": "ok", "checks": "dpi" if (l, e) == ("pool", 3) else ""}
            for (l, e, v) in [("layer1", 0, 50.0), ("layer1", 3, 40.0), ("pool", 0, 10.0), ("pool", 3, 9.5)]]
    changes = [{"kind": "step", "layer": "layer1", "step": 0, "layer_to": "layer1", "step_to": 3,
                "significant": True},
               {"kind": "step", "layer": "pool", "step": 0, "layer_to": "pool", "step_to": 3,
                "significant": False},
               {"kind": "fall", "layer": "pool", "step": 0, "layer_to": "pool", "step_to": 3,
                "significant": True}]  # a stage, not a change between consecutive checkpoints: no star
    fig = mi_vs_epoch(rows, changes=changes)
    ax = fig.axes[0]
    hollow = [l for l in ax.get_lines() if l.get_gid() == "flagged" and len(l.get_xdata())]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [3.0]
    stars = [l for l in ax.get_lines() if l.get_gid() == "significant_change"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == pytest.approx(45.0)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("flagged by a self-check" in t for t in labels) and any("significant change" in t for t in labels)
    plane = info_plane(rows)
    flagged = [c for c in plane.axes[0].collections if c.get_gid() == "flagged"]
    assert sum(len(c.get_offsets()) for c in flagged) == 1


def _log_rows(layer="layer1", shift=0.0):
    """A log-spaced run: steps 0, 1, 3, 9, 27, 80, 235, 690 of 23-step epochs; I(X;H) peaks at step 9."""
    steps, bits = (0, 1, 3, 9, 27, 80, 235, 690), (60, 64, 70, 75, 71, 66, 62, 58)
    return [{"step": s, "epoch": s / 23, "layer": layer, "i_xh_bits": b + shift, "i_xh_ci_low": b + shift - 1,
             "i_xh_ci_high": b + shift + 1, "i_yh_bits": 0.25 + 0.5 * i, "status": "ok"}
            for i, (s, b) in enumerate(zip(steps, bits))]


def test_fractional_epochs_spread_out_on_the_symlog_axis_and_colour_scale():
    rows = _log_rows()
    fig = mi_vs_epoch(rows)
    ax = fig.axes[0]
    assert ax.xaxis.get_transform().linthresh == pytest.approx(1 / 23)  # linear only up to the first step after 0
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "0" and "0.391" in labels and labels[-1] == "30"
    shown = ax.transData.transform([(r["epoch"], 0) for r in rows])[:, 0]
    gaps = shown[2:] - shown[1:-1]
    assert gaps.min() > 0.5 * gaps.max()  # log-spaced checkpoints are evenly spaced on the axis, 1 to 690
    plane = info_plane(rows)
    points = [c for c in plane.axes[0].collections if c.get_array() is not None and len(c.get_offsets()) == 8][0]
    shade = np.asarray(points.norm(points.get_array()))  # where each checkpoint sits on the colour scale
    assert shade[0] == pytest.approx(0.0) and shade[-1] == pytest.approx(1.0)
    assert np.diff(shade).min() > 0.05  # every checkpoint its own colour, step 0 and those inside epoch 1 included


def test_the_peak_follows_phases_and_greys_without_a_stage():
    rows = _log_rows() + _log_rows("pool", shift=-30.0)
    phases = [{"layer": "layer1", "step": 9, "rise_significant": True, "fall_significant": True},
              {"layer": "pool", "step": 9, "rise_significant": False, "fall_significant": False}]
    ax = info_plane(rows, phases=phases).axes[0]
    rings = {tuple(c.get_offsets()[0]): tuple(c.get_edgecolor()[0]) for c in ax.collections if c.get_gid() == "peak"}
    assert set(rings) == {(75.0, 1.75), (45.0, 1.75)}
    assert rings[(75.0, 1.75)][:3] == (0.0, 0.0, 0.0) and rings[(45.0, 1.75)][:3] == pytest.approx((0.6, 0.6, 0.6))
    peaks = [ln for ln in mi_vs_epoch(rows, phases=phases).axes[0].get_lines() if ln.get_gid() == "peak"]
    assert [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in peaks] == [(9 / 23, 75.0), (9 / 23, 45.0)]


def test_the_regimes_planes_side_by_side_on_shared_axes(tmp_path):
    fig = info_plane_regimes({"classify": _log_rows(), "autoencode": _log_rows("bottleneck", shift=40.0)})
    left, right, bar = fig.axes
    assert (left.get_title(), right.get_title()) == ("classify", "autoencode") and "epoch" in bar.get_ylabel()
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    assert left.get_xlim()[1] > 115 and left.get_xlim()[0] < 58  # both regimes' points within the shared axes
    _write_run(tmp_path / "both" / "classify")
    _write_run(tmp_path / "both" / "autoencode")
    write_table(tmp_path / "both" / "classify" / "analysis" / "phases.csv",
                [{"regime": "classify", "layer": "stem", "step": 0, "epoch": 0.0}], PHASES)
    written = plot_run(tmp_path / "both")
    figs = tmp_path / "both" / "figures"
    assert {figs / f"info_plane_regimes.{e}" for e in ("png", "pdf", "csv")} <= set(written)
    table = read_table(figs / "info_plane_regimes.csv")
    assert {r["regime"] for r in table} == {"classify", "autoencode"} and len(table) == 2 * 10
    assert list(table[0])[:3] == ["regime", "step", "epoch"]
