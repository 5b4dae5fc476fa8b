"""Plots drawn from a fixed MI table: trajectories, colorbar, units, error bars, files written."""
from __future__ import annotations

import csv
import json

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from ibprobe.cli import main
from ibprobe.errors import DataError
from ibprobe.report.plots import info_plane, mi_vs_epoch, plot_run, save_figure, training_curves
from ibprobe.rundir.tables import read_table

COLUMNS = ("epoch,checkpoint,layer,i_xh_bits,i_xh_ci_low,i_xh_ci_high,h_x_bits,h_x_given_h_bits,bits_per_dim,"
           "i_yh_bits,n_test,decoder,status,error").split(",")
LAYERS = ["stem", "layer1", "layer2.0.relu_out"]
EPOCHS = [0, 1, 3, 10]


def _write_run(run_dir, *, labels=True):
    rows = []
    for li, layer in enumerate(LAYERS):
        for e in EPOCHS:
            ixh = 100.0 - 20 * li + 0.5 * e + 0.125
            rows.append(dict(epoch=e, checkpoint=f"checkpoints/epoch_{e:04d}.pt", layer=layer, i_xh_bits=ixh,
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
    assert r["epoch"] == 0 and isinstance(r["epoch"], int) and r["n_test"] == 90
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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == LAYERS
    assert any("layer1 @ 3" in t.get_text() for t in fig.texts)  # the failed job is named


def test_mi_vs_epoch_lines_bands_and_label_panel(run):
    rows = read_table(run / "analysis" / "mi.csv")
    fig = mi_vs_epoch(rows)
    ax_x, ax_y = fig.axes
    assert ax_x.get_xscale() == "symlog" and "bits" in ax_x.get_ylabel() and "bits" in ax_y.get_ylabel()
    assert len(ax_x.get_lines()) == len(LAYERS) and len(ax_y.get_lines()) == len(LAYERS)
    assert min(ax_x.get_lines()[0].get_xdata()) == 0  # epoch 0 is drawn on the log axis
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
    rows = [{"epoch": e, "layer": l, "i_xh_bits": v, "i_xh_ci_low": v - 1, "i_xh_ci_high": v + 1, "i_yh_bits": 1.0,
             "status": "ok", "checks": "dpi" if (l, e) == ("pool", 3) else ""}
            for (l, e, v) in [("layer1", 0, 50.0), ("layer1", 3, 40.0), ("pool", 0, 10.0), ("pool", 3, 9.5)]]
    changes = [{"kind": "epoch", "layer": "layer1", "epoch": 0, "layer_to": "layer1", "epoch_to": 3,
                "significant": True},
               {"kind": "epoch", "layer": "pool", "epoch": 0, "layer_to": "pool", "epoch_to": 3,
                "significant": False}]
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
