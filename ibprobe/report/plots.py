"""Figures of a run (the report stage -> DIR/figures/): the information plane, MI over training, training curves,
and the planes of a preset's regimes side by side.

The plane follows Darlow & Storkey ("What Information Does a ResNet Compress?"): x = I(X;H), y = I(Y;H), both
in bits per image, one trajectory per layer through the checkpoints (ordered by step, coloured by epoch), each
layer's peak of I(X;H) ringed (analysis/phases.csv). Drawing functions take data and return a
`matplotlib.figure.Figure` built without pyplot (no global state, Agg canvas); only `save_figure` and
`plot_run` touch files, writing PNG + PDF + the CSV each figure was drawn from, atomically.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ibprobe.errors import DataError, UserError
from ibprobe.report.estimators import plot_estimators, read_estimator_tables
from ibprobe.report.figure import (MARKERS, asym_err, by_layer, epoch_norm, epoch_ticks, finite, flag_handles, flagged,
                                   layer_colours, linthresh, new_figure, note_failed, ok_rows, peak_colour, peak_handle,
                                   peaks, save_figure, symlog_epochs)
from ibprobe.rundir.files import read_json
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.tables import CHANGES, MI, PHASES, PLANE_REGIMES, read_metrics, read_table

_CMAP = "viridis"


def info_plane(rows: list[dict], *, phases: list[dict] | None = None, title: str | None = None):
    """The information plane: I(X;H) (x) against I(Y;H) (y), bits per image, one trajectory per layer.

    Points are coloured by epoch (a log scale that still colours epoch 0, see report.figure.epoch_norm) with a
    colorbar; the 95% CI of I(X;H) is drawn as horizontal error bars; each layer's peak of I(X;H) is ringed (from
    `phases`, analysis/phases.csv, when given: grey where neither stage around it is significant). Failed rows and
    rows without I(Y;H) are left out (failed ones named in a note).

    >>> rows = [{"layer": "layer1", "step": s, "epoch": s / 23, "i_xh_bits": x, "i_xh_ci_low": x - 1,
    ...          "i_xh_ci_high": x + 1, "i_yh_bits": y, "status": "ok"}
    ...         for s, x, y in [(0, 60.0, 0.5), (9, 64.0, 2.0), (184, 55.0, 3.1)]]
    >>> fig = info_plane(rows, title="layer1")
    >>> type(fig).__name__, len(fig.axes)                               # the plane and its colour bar
    ('Figure', 2)
    """
    drawn = ok_rows(rows, "i_xh_bits", "i_yh_bits", "epoch")
    if not drawn:
        raise DataError("no finished rows with both I(X;H) and I(Y;H) to draw an information plane from")
    fig = new_figure(5.6, 4.2)
    ax = fig.add_subplot()
    epochs = sorted({r["epoch"] for r in drawn})
    norm = epoch_norm(epochs)
    handles = _plane(ax, drawn, norm, layer_colours(list(by_layer(drawn))), phases)
    ax.legend(handles=handles, title="layer", fontsize=7, title_fontsize=8, loc="best", framealpha=0.85)
    _epoch_bar(fig, ax, norm, epochs)
    if title:
        ax.set_title(title, fontsize=10)
    note_failed(fig, rows)
    return fig


def _plane(ax, drawn: list[dict], norm, colours: dict, phases: list[dict] | None) -> list:
    """Draw the trajectories of `drawn` (finished rows with both informations) on `ax`; returns legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    t = linthresh([r["epoch"] for r in drawn])
    peak = peaks(drawn, phases)
    for i, (layer, lr) in enumerate(by_layer(drawn).items()):
        x = np.array([r["i_xh_bits"] for r in lr], dtype=float)
        y = np.array([r["i_yh_bits"] for r in lr], dtype=float)
        e = np.array([r["epoch"] for r in lr], dtype=float)
        marker = MARKERS[i % len(MARKERS)]
        ax.errorbar(x, y, xerr=asym_err(lr, "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high"), fmt="none",
                    ecolor=colours[layer], elinewidth=0.9, capsize=2, alpha=0.8, zorder=1)
        ax.plot(x, y, "-", color=colours[layer], lw=1.4, alpha=0.85, zorder=2, label=layer, gid="trajectory")
        f = flagged(lr)
        ax.scatter(x[~f], y[~f], c=e[~f] + t, cmap=_CMAP, norm=norm, marker=marker, s=42, edgecolors=colours[layer],
                   linewidths=1.2, zorder=3)
        ax.scatter(x[f], y[f], facecolors="white", marker=marker, s=42, edgecolors=colours[layer], linewidths=1.2,
                   zorder=3, gid="flagged")
        p = peak[layer]
        ax.scatter([p["i_xh_bits"]], [p["i_yh_bits"]], s=150, facecolors="none", linewidths=1.3,
                   edgecolors=peak_colour(phases, layer), zorder=4, gid="peak")
        handles.append(Line2D([], [], color=colours[layer], marker=marker, markerfacecolor="white",
                              markeredgecolor=colours[layer], lw=1.4, label=layer))
    ax.set_xlabel("I(X;H)  [bits per image]")
    ax.set_ylabel("I(Y;H)  [bits per image]")
    ax.grid(True, lw=0.4, alpha=0.4)
    return handles + flag_handles(drawn) + [peak_handle(phases)]


def _epoch_bar(fig, ax, norm, epochs: list[float]) -> None:
    from matplotlib.cm import ScalarMappable

    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=_CMAP), ax=ax, pad=0.02)
    epoch_ticks(cbar, epochs)
    cbar.set_label("epoch (log colour scale)")


def info_plane_regimes(rows_by_regime: dict[str, list[dict]], *, phases: dict[str, list[dict]] | None = None,
                       title: str | None = None):
    """The information planes of several regimes of one preset (e.g. classify and autoencode) side by side, on the
    same axes (shared x and y limits) and one epoch colour scale, so the two regimes' trajectories compare by eye.
    Layers are coloured per regime (the regimes tap different layers); each layer's peak is ringed (`phases`:
    {regime: phases.csv rows}). An autoencoder's I(Y;H) comes from the same probe on its codes.
    """
    drawn = {r: ok_rows(rows, "i_xh_bits", "i_yh_bits", "epoch") for r, rows in rows_by_regime.items()}
    drawn = {r: rows for r, rows in drawn.items() if rows}
    if not drawn:
        raise DataError("no regime has finished rows with both I(X;H) and I(Y;H) to draw an information plane from")
    every = [r for rows in drawn.values() for r in rows]
    epochs = sorted({r["epoch"] for r in every})
    norm = epoch_norm(epochs)
    fig = new_figure(4.6 * len(drawn) + 1.0, 4.2)
    axes = fig.subplots(1, len(drawn), squeeze=False, sharex=True, sharey=True)[0]
    for ax, (regime, rows) in zip(axes, drawn.items()):
        handles = _plane(ax, rows, norm, layer_colours(list(by_layer(rows))), (phases or {}).get(regime))
        ax.legend(handles=handles, title="layer", fontsize=6, title_fontsize=7, loc="best", framealpha=0.85)
        ax.set_title(regime, fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    _epoch_bar(fig, list(axes), norm, epochs)
    if title:
        fig.suptitle(title, fontsize=10)
    note_failed(fig, [{**r, "layer": f"{regime}: {r.get('layer')}"} for regime, rows in rows_by_regime.items()
                      for r in rows])
    return fig


def mi_vs_epoch(rows: list[dict], *, changes: list[dict] | None = None, phases: list[dict] | None = None,
                title: str | None = None):
    """I(X;H) (and I(Y;H) when present) against epoch, bits per image, one line per layer with 95% CI bands.

    The epoch axis is symlog (linear below the first checkpoint after the initialisation), so epoch 0 is shown and
    the checkpoints inside the first epoch are spread out. Points a self-check flagged are hollow; each layer's peak
    of I(X;H) is ringed (from `phases`, analysis/phases.csv, when given). With `changes` (analysis/changes.csv), a
    star marks each step between consecutive checkpoints whose change of I(X;H) is significant (after Holm's
    correction).
    """
    from matplotlib.lines import Line2D

    drawn = ok_rows(rows, "i_xh_bits", "epoch")
    if not drawn:
        raise DataError("no finished rows with I(X;H) to draw against epoch")
    groups = by_layer(drawn)
    colours = layer_colours(list(groups))
    epochs = sorted({r["epoch"] for r in drawn})
    has_y = any(r.get("i_yh_bits") is not None for r in drawn)
    peak = peaks(drawn, phases)

    fig = new_figure(10.0 if has_y else 6.2, 3.6)
    axes = fig.subplots(1, 2 if has_y else 1, squeeze=False)[0]
    ax = axes[0]
    for i, (layer, lr) in enumerate(groups.items()):
        e = np.array([r["epoch"] for r in lr], dtype=float)
        v = np.array([r["i_xh_bits"] for r in lr], dtype=float)
        err = asym_err(lr, "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high")
        ax.fill_between(e, v - err[0], v + err[1], color=colours[layer], alpha=0.2, lw=0, gid="ci_band")
        ax.plot(e, v, "-", marker=MARKERS[i % len(MARKERS)], ms=4, color=colours[layer], lw=1.5, label=layer)
        f = flagged(lr)
        if f.any():
            ax.plot(e[f], v[f], ls="none", marker=MARKERS[i % len(MARKERS)], ms=4, mfc="white",
                    mec=colours[layer], gid="flagged")
        ax.plot([peak[layer]["epoch"]], [peak[layer]["i_xh_bits"]], ls="none", marker="o", ms=11, mfc="none",
                mec=peak_colour(phases, layer), mew=1.2, gid="peak")
        at = {r["step"]: (r["epoch"], r["i_xh_bits"]) for r in lr}
        for c in changes or []:
            if c.get("kind") == "step" and c["layer"] == layer and c.get("significant") is True \
                    and c["step"] in at and c["step_to"] in at:
                (ea, va), (eb, vb) = at[c["step"]], at[c["step_to"]]
                ax.plot(_mid(ea, eb, linthresh(epochs)), (va + vb) / 2, ls="none", marker="*", ms=7,
                        color=colours[layer], gid="significant_change")
    handles, labels = ax.get_legend_handles_labels()
    extra = flag_handles(drawn) + [peak_handle(phases)]
    if any(c.get("significant") is True and c.get("kind") == "step" for c in changes or []):
        extra.append(Line2D([], [], ls="none", marker="*", color="0.3",
                            label="star: significant change between\ncheckpoints (Holm-corrected)"))
    ax.set_xlabel("epoch (symlog axis)")
    ax.set_ylabel("I(X;H)  [bits per image]")
    ax.set_title("information about the input", fontsize=9)
    symlog_epochs(ax, epochs)
    ax.grid(True, lw=0.4, alpha=0.4)
    fig.legend(handles + extra, labels + [h.get_label() for h in extra], title="layer", fontsize=7,
               title_fontsize=8, loc="outside right upper", frameon=False)
    if has_y:
        ay = axes[1]
        for i, (layer, lr) in enumerate(groups.items()):
            ly = [r for r in lr if r.get("i_yh_bits") is not None]
            if not ly:
                continue
            ay.plot([r["epoch"] for r in ly], [r["i_yh_bits"] for r in ly], "-", marker=MARKERS[i % len(MARKERS)],
                    ms=4, color=colours[layer], lw=1.5, label=layer)
        ay.set_xlabel("epoch (symlog axis)")
        ay.set_ylabel("I(Y;H)  [bits per image]")
        ay.set_title("information about the label", fontsize=9)
        symlog_epochs(ay, epochs)
        ay.grid(True, lw=0.4, alpha=0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    note_failed(fig, rows)
    return fig


def _mid(a: float, b: float, t: float = 1.0) -> float:
    """The midpoint of two epochs on the symlog axis (linear below t, logarithmic above)."""
    f = lambda v: v / t if v <= t else 1 + math.log(v / t)  # noqa: E731
    m = (f(a) + f(b)) / 2
    return m * t if m <= 1 else t * math.exp(m - 1)


_LOSS_LABELS = {
    "classify": "cross-entropy loss  [nats per example]",
    "autoencode": "reconstruction MSE  [per pixel, 0-1 scale]",
}


def training_curves(metrics_rows: list[dict], *, title: str | None = None, regime: str | None = None):
    """Train and test loss against epoch (cross-entropy in nats per example when classifying, MSE per pixel on
    [0, 1] pixels when autoencoding), and accuracy when logged."""
    rows = sorted([r for r in metrics_rows if r.get("epoch") is not None], key=lambda r: r["epoch"])
    if not rows:
        raise DataError("no training metrics to draw")
    loss_keys = [k for k in ("train_loss", "test_loss") if any(r.get(k) is not None for r in rows)]
    acc_keys = [k for k in ("train_acc", "test_acc") if any(finite(r.get(k)) for r in rows)]
    if not loss_keys and not acc_keys:
        raise DataError("metrics.jsonl has no train/test loss or accuracy columns")
    # With accuracy logged the run is a classifier, whose loss is cross-entropy in nats.
    loss_label = _LOSS_LABELS.get(regime or ("classify" if acc_keys else ""), "loss")
    panels = [("loss", loss_keys)] * bool(loss_keys) + [("accuracy", acc_keys)] * bool(acc_keys)
    fig = new_figure(4.4 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    style = {"train": dict(ls="-", color="tab:blue"), "test": dict(ls="--", color="tab:orange")}
    for ax, (what, keys) in zip(axes, panels):
        for k in keys:
            pts = [(r["epoch"], float(r[k])) for r in rows if finite(r.get(k))]
            if pts:
                split = k.split("_")[0]
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1.4, label=split, **style[split])
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "accuracy" else loss_label)
        ax.grid(True, lw=0.4, alpha=0.4)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- saving
def _run_config(run_dir: Path) -> dict:
    """config.json of a training run ({} for analysed foreign checkpoints or an unreadable file)."""
    p = RunDir(run_dir).config
    try:
        cfg = read_json(p) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _run_title(cfg: dict) -> str | None:
    """A short figure title from the run config: data set, model, regime."""
    parts = [str(cfg[k]) for k in ("dataset", "model", "regime") if cfg.get(k)]
    return ", ".join(parts) or None


def plot_run(run_dir: str | os.PathLike, *, estimators: list[str] | None = None, layout: str = "panels") -> list[Path]:
    """Draw every figure the run folder has data for into `run_dir/figures/`; return the files written.

    info_plane (only when some row has I(Y;H)), mi_vs_epoch, training_curves (when metrics.jsonl exists), and the
    estimator comparisons of report.estimators.plot_estimators (`estimators`, `layout`), each as .png, .pdf and the
    .csv it was drawn from. A folder holding one run per regime gets each drawn in its own figures/, and their
    planes side by side in its own figures/info_plane_regimes (`plot_regimes`).
    """
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; run `ibprobe run --out {run_dir}` first")
    mi_path = run.table(MI.name)
    subruns = sorted(RunDir(p.parent.parent).root for p in run_dir.glob(f"*/analysis/{mi_path.name}"))
    if not mi_path.is_file() and subruns:  # a multi-regime run: DIR/classify, DIR/autoencode, ...
        written = [path for sub in subruns for path in plot_run(sub, estimators=estimators, layout=layout)]
        return written + (plot_regimes(run_dir, {sub.name: sub for sub in subruns}) if len(subruns) > 1 else [])
    if not mi_path.is_file():
        raise UserError(f"{mi_path} not found; run `ibprobe run --out {run_dir}` or `ibprobe analyze` first")
    rows = read_table(mi_path, MI)  # every table first: a damaged one stops the plot before any figure is written
    metrics = read_metrics(run.metrics) if run.metrics.is_file() else None
    changes_path = run.table(CHANGES.name)
    changes = read_table(changes_path, CHANGES) if changes_path.is_file() else None
    read_estimator_tables(run_dir)
    title = _run_title(cfg := _run_config(run_dir))
    figdir = run.figures
    written: list[Path] = []
    phases = _phases(run_dir)
    plane_rows = ok_rows(rows, "i_xh_bits", "i_yh_bits", "epoch")
    if plane_rows:
        written += save_figure(info_plane(rows, phases=phases, title=title), figdir / "info_plane", plane_rows)
    epoch_rows = ok_rows(rows, "i_xh_bits", "epoch")
    if epoch_rows:
        written += save_figure(mi_vs_epoch(rows, changes=changes, phases=phases, title=title),
                               figdir / "mi_vs_epoch", epoch_rows)
    try:
        fig = None if metrics is None else training_curves(metrics, title=title, regime=cfg.get("regime"))
    except DataError:  # nothing to draw in it
        fig = None
    if fig is not None:
        written += save_figure(fig, figdir / "training_curves", metrics)
    written += plot_estimators(run_dir, rows, estimators=estimators, layout=layout, title=title)
    if not written:
        raise DataError(f"{mi_path} has no finished rows to draw (all {len(rows)} failed or empty)")
    return written


def _phases(run_dir: Path) -> list[dict] | None:
    """analysis/phases.csv of a run folder, or None where it has none."""
    path = RunDir(run_dir).table(PHASES.name)
    return read_table(path, PHASES) if path.is_file() else None


def plot_regimes(out_dir: str | os.PathLike, run_dirs: dict[str, Path]) -> list[Path]:
    """The information planes of a preset's regimes side by side (`info_plane_regimes`, {regime: its run folder})
    into out_dir/figures/info_plane_regimes.{png,pdf,csv}, the CSV holding every regime's drawn mi.csv rows with a
    `regime` column; [] when fewer than two regimes have a plane to draw."""
    rows, phases = {}, {}
    for regime, run_dir in run_dirs.items():
        path = RunDir(run_dir).table(MI.name)
        if path.is_file():
            rows[regime] = read_table(path, MI)
            phases[regime] = _phases(Path(run_dir)) or []
    drawn = {r: ok_rows(v, "i_xh_bits", "i_yh_bits", "epoch") for r, v in rows.items()}
    if sum(1 for v in drawn.values() if v) < 2:
        return []
    cfg = _run_config(Path(next(iter(run_dirs.values()))))
    name = cfg.get("dataset")
    table = [{"regime": regime, **r} for regime, v in drawn.items() for r in v]
    fig = info_plane_regimes(rows, phases=phases, title=f"{name}: the information plane of each training regime"
                             if name else None)
    return save_figure(fig, RunDir(out_dir).figure(PLANE_REGIMES.name), _ordered(table))


def _ordered(rows: list[dict]) -> list[dict]:
    """Rows with the columns of PLANE_REGIMES first, in its order (save_figure writes the rows' own columns)."""
    return [{**{c: r.get(c) for c in PLANE_REGIMES.columns}, **r} for r in rows]
