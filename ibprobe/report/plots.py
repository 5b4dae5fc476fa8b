"""Figures of a run (the report stage -> DIR/figures/): the information plane, MI over training, training curves.

The plane follows Darlow & Storkey ("What Information Does a ResNet Compress?"): x = I(X;H), y = I(Y;H), both
in bits per image, one trajectory per layer through the checkpoints. Drawing functions take data and return a
`matplotlib.figure.Figure` built without pyplot (no global state, Agg canvas); only `save_figure` and
`plot_run` touch files, writing PNG + PDF + the CSV each figure was drawn from, atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ibprobe.errors import DataError, UserError
from ibprobe.measure import read_mi_csv  # noqa: F401  (the schema and its reader live with the writer)
from ibprobe.fsutil import atomic_write_bytes, atomic_write_text, read_json

_FIG_DPI = 200
_MARKERS = "osD^vP*Xhp<>"


# ----------------------------------------------------------------------------------------------- reading
def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read metrics.jsonl, one JSON object per line; a truncated last line is skipped, other damage is a DataError."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = {} if i == len(lines) - 1 else None  # the last line may be cut by a killed writer
        if not isinstance(row, dict):
            raise DataError(f"{path} line {i + 1} is not a JSON object; rerun `ibprobe train --out "
                            f"{Path(path).parent}` to rewrite it from the run's checkpoints")
        if row:
            rows.append(row)
    return rows


def _ok(rows: Iterable[dict], *need: str) -> list[dict]:
    """Rows with status ok (or no status) whose `need` columns are all present."""
    return [r for r in rows if r.get("status", "ok") in (None, "ok") and all(r.get(k) is not None for k in need)]


def _failed(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") not in (None, "ok")]


def _by_layer(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by layer (first-seen order), each sorted by epoch."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["layer"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- drawing
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _layer_colours(layers: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(layers)}


def _epoch_norm(epochs: Sequence[int]):
    """Log colour scale over epoch + 1, so the initialisation (epoch 0) has a colour too."""
    from matplotlib.colors import LogNorm

    lo, hi = min(epochs) + 1, max(epochs) + 1
    return LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)


def _note_failed(fig, rows: list[dict]) -> None:
    bad = _failed(rows)
    if not bad:
        return
    items = [f"{r.get('layer')} @ {r.get('epoch')}" for r in bad]
    text = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
    fig.text(0.01, 0.005, f"failed jobs, not drawn: {text}", fontsize=6, color="0.35", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)


def _asym_err(rows: list[dict], value: str, low: str, high: str) -> np.ndarray:
    """[2, n] error-bar lengths from CI columns; a missing CI draws no bar."""
    v = np.array([r[value] for r in rows], dtype=float)
    lo = np.array([r[low] if r.get(low) is not None else r[value] for r in rows], dtype=float)
    hi = np.array([r[high] if r.get(high) is not None else r[value] for r in rows], dtype=float)
    return np.stack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])


def info_plane(rows: list[dict], *, title: str | None = None):
    """The information plane: I(X;H) (x) against I(Y;H) (y), bits per image, one trajectory per layer.

    Points are coloured by epoch (log scale over epoch + 1) with a colorbar; the 95% CI of I(X;H) is drawn as
    horizontal error bars. Failed rows and rows without I(Y;H) are left out (failed ones named in a note).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    drawn = _ok(rows, "i_xh_bits", "i_yh_bits", "epoch")
    if not drawn:
        raise DataError("no finished rows with both I(X;H) and I(Y;H) to draw an information plane from")
    groups = _by_layer(drawn)
    colours = _layer_colours(list(groups))
    epochs = sorted({r["epoch"] for r in drawn})
    norm = _epoch_norm(epochs)
    cmap = "viridis"

    fig = _new_figure(5.6, 4.2)
    ax = fig.add_subplot()
    handles = []
    for i, (layer, lr) in enumerate(groups.items()):
        x = np.array([r["i_xh_bits"] for r in lr], dtype=float)
        y = np.array([r["i_yh_bits"] for r in lr], dtype=float)
        e = np.array([r["epoch"] for r in lr], dtype=float)
        marker = _MARKERS[i % len(_MARKERS)]
        ax.errorbar(x, y, xerr=_asym_err(lr, "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high"), fmt="none",
                    ecolor=colours[layer], elinewidth=0.9, capsize=2, alpha=0.8, zorder=1)
        ax.plot(x, y, "-", color=colours[layer], lw=1.4, alpha=0.85, zorder=2, label=layer, gid="trajectory")
        f = _flagged(lr)
        ax.scatter(x[~f], y[~f], c=e[~f] + 1, cmap=cmap, norm=norm, marker=marker, s=42, edgecolors=colours[layer],
                   linewidths=1.2, zorder=3)
        ax.scatter(x[f], y[f], facecolors="white", marker=marker, s=42, edgecolors=colours[layer], linewidths=1.2,
                   zorder=3, gid="flagged")
        handles.append(Line2D([], [], color=colours[layer], marker=marker, markerfacecolor="white",
                              markeredgecolor=colours[layer], lw=1.4, label=layer))
    handles += _flag_handles(drawn)
    ax.set_xlabel("I(X;H)  [bits per image]")
    ax.set_ylabel("I(Y;H)  [bits per image]")
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.legend(handles=handles, title="layer", fontsize=7, title_fontsize=8, loc="best", framealpha=0.85)
    sm = ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=ax, pad=0.02)
    _epoch_ticks(cbar, epochs)
    cbar.set_label("epoch (log colour scale)")
    if title:
        ax.set_title(title, fontsize=10)
    _note_failed(fig, rows)
    return fig


def _epoch_ticks(cbar, epochs: list[int]) -> None:
    """Colorbar ticks at the checkpoint epochs (positions epoch + 1), labelled with the epoch itself."""
    from matplotlib.ticker import FixedLocator, NullLocator

    shown = epochs if len(epochs) <= 8 else sorted({epochs[int(round(i))] for i in np.linspace(0, len(epochs) - 1, 7)})
    cbar.ax.yaxis.set_major_locator(FixedLocator([e + 1 for e in shown]))
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    cbar.ax.set_yticklabels([str(e) for e in shown])


def _symlog_epochs(ax, epochs: list[int]) -> None:
    """Log epoch axis that still shows epoch 0: symlog, linear below 1."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
    ax.set_xlim(left=-0.15 if min(epochs) == 0 else None)
    if len(epochs) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(epochs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(e) for e in epochs])


def _flagged(rows: list[dict]) -> np.ndarray:
    """Which rows a self-check flagged (their `checks` cell is not empty)."""
    return np.array([bool(r.get("checks")) for r in rows], dtype=bool)


def _flag_handles(rows: list[dict]) -> list:
    from matplotlib.lines import Line2D

    if not _flagged(rows).any():
        return []
    return [Line2D([], [], ls="none", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                   label="hollow: flagged by a self-check\n(the checks column of mi.csv)")]


def mi_vs_epoch(rows: list[dict], *, changes: list[dict] | None = None, title: str | None = None):
    """I(X;H) (and I(Y;H) when present) against epoch, bits per image, one line per layer with 95% CI bands.

    The epoch axis is symlog (linear below 1), so the initialisation at epoch 0 is shown. Points a self-check
    flagged are hollow. With `changes` (analysis/changes.csv), a star marks each step between checkpoints whose
    change of I(X;H) is significant (its 95% CI excludes 0).
    """
    from matplotlib.lines import Line2D

    drawn = _ok(rows, "i_xh_bits", "epoch")
    if not drawn:
        raise DataError("no finished rows with I(X;H) to draw against epoch")
    groups = _by_layer(drawn)
    colours = _layer_colours(list(groups))
    epochs = sorted({r["epoch"] for r in drawn})
    has_y = any(r.get("i_yh_bits") is not None for r in drawn)

    fig = _new_figure(10.0 if has_y else 6.2, 3.6)
    axes = fig.subplots(1, 2 if has_y else 1, squeeze=False)[0]
    ax = axes[0]
    for i, (layer, lr) in enumerate(groups.items()):
        e = np.array([r["epoch"] for r in lr], dtype=float)
        v = np.array([r["i_xh_bits"] for r in lr], dtype=float)
        err = _asym_err(lr, "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high")
        ax.fill_between(e, v - err[0], v + err[1], color=colours[layer], alpha=0.2, lw=0, gid="ci_band")
        ax.plot(e, v, "-", marker=_MARKERS[i % len(_MARKERS)], ms=4, color=colours[layer], lw=1.5, label=layer)
        f = _flagged(lr)
        if f.any():
            ax.plot(e[f], v[f], ls="none", marker=_MARKERS[i % len(_MARKERS)], ms=4, mfc="white",
                    mec=colours[layer], gid="flagged")
        at = {r["epoch"]: r["i_xh_bits"] for r in lr}
        for c in changes or []:
            if c.get("kind") == "epoch" and c["layer"] == layer and str(c.get("significant")) == "True" \
                    and c["epoch"] in at and c["epoch_to"] in at:
                ax.plot(_mid(c["epoch"], c["epoch_to"]), (at[c["epoch"]] + at[c["epoch_to"]]) / 2, ls="none",
                        marker="*", ms=7, color=colours[layer], gid="significant_change")
    handles, labels = ax.get_legend_handles_labels()
    extra = _flag_handles(drawn)
    if any(str(c.get("significant")) == "True" and c.get("kind") == "epoch" for c in changes or []):
        extra.append(Line2D([], [], ls="none", marker="*", color="0.3",
                            label="star: significant change\nbetween checkpoints (95% CI)"))
    ax.set_xlabel("epoch (symlog axis)")
    ax.set_ylabel("I(X;H)  [bits per image]")
    ax.set_title("information about the input", fontsize=9)
    _symlog_epochs(ax, epochs)
    ax.grid(True, lw=0.4, alpha=0.4)
    fig.legend(handles + extra, labels + [h.get_label() for h in extra], title="layer", fontsize=7,
               title_fontsize=8, loc="outside right upper", frameon=False)
    if has_y:
        ay = axes[1]
        for i, (layer, lr) in enumerate(groups.items()):
            ly = [r for r in lr if r.get("i_yh_bits") is not None]
            if not ly:
                continue
            ay.plot([r["epoch"] for r in ly], [r["i_yh_bits"] for r in ly], "-", marker=_MARKERS[i % len(_MARKERS)],
                    ms=4, color=colours[layer], lw=1.5, label=layer)
        ay.set_xlabel("epoch (symlog axis)")
        ay.set_ylabel("I(Y;H)  [bits per image]")
        ay.set_title("information about the label", fontsize=9)
        _symlog_epochs(ay, epochs)
        ay.grid(True, lw=0.4, alpha=0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    _note_failed(fig, rows)
    return fig


def _mid(a: float, b: float) -> float:
    """The midpoint of two epochs on the symlog axis (linear below 1, logarithmic above)."""
    f = lambda v: v if v <= 1 else 1 + math.log(v)  # noqa: E731
    t = (f(a) + f(b)) / 2
    return t if t <= 1 else math.exp(t - 1)


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
    acc_keys = [k for k in ("train_acc", "test_acc") if any(_finite(r.get(k)) for r in rows)]
    if not loss_keys and not acc_keys:
        raise DataError("metrics.jsonl has no train/test loss or accuracy columns")
    # With accuracy logged the run is a classifier, whose loss is cross-entropy in nats.
    loss_label = _LOSS_LABELS.get(regime or ("classify" if acc_keys else ""), "loss")
    panels = [("loss", loss_keys)] * bool(loss_keys) + [("accuracy", acc_keys)] * bool(acc_keys)
    fig = _new_figure(4.4 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    style = {"train": dict(ls="-", color="tab:blue"), "test": dict(ls="--", color="tab:orange")}
    for ax, (what, keys) in zip(axes, panels):
        for k in keys:
            pts = [(r["epoch"], float(r[k])) for r in rows if _finite(r.get(k))]
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


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- saving
def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV text of dict rows: columns in first-seen order, floats round-tripping exactly, None an empty cell."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in cols})
    return buf.getvalue()


def save_figure(fig, path_stem: str | os.PathLike, table: list[dict] | str | os.PathLike) -> list[Path]:
    """Write `<stem>.png`, `<stem>.pdf` and `<stem>.csv` atomically; return the paths written.

    `table` is what the figure was drawn from: a list of row dicts (written as CSV, floats round-tripping
    exactly) or the path of an existing CSV file (copied byte for byte).
    """
    stem = Path(path_stem)
    out = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=_FIG_DPI, metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(atomic_write_bytes(stem.with_name(stem.name + f".{ext}"), buf.getvalue()))
    csv_path = stem.with_name(stem.name + ".csv")
    if isinstance(table, (str, os.PathLike)):
        out.append(atomic_write_bytes(csv_path, Path(table).read_bytes()))
    else:
        out.append(atomic_write_text(csv_path, rows_to_csv(list(table))))
    return out


def _run_config(run_dir: Path) -> dict:
    """config.json of a training run ({} for analysed foreign checkpoints or an unreadable file)."""
    p = run_dir / "config.json"
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
    .csv it was drawn from. A folder holding one run per regime gets each drawn in its own figures/.
    """
    from ibprobe.report.estimators import plot_estimators  # that module builds on this one's helpers
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; run `ibprobe run --out {run_dir}` first")
    mi_path = run_dir / "analysis" / "mi.csv"
    subruns = sorted(p.parent.parent for p in run_dir.glob("*/analysis/mi.csv"))
    if not mi_path.is_file() and subruns:  # a multi-regime run: DIR/classify, DIR/autoencode, ...
        return [path for sub in subruns for path in plot_run(sub, estimators=estimators, layout=layout)]
    if not mi_path.is_file():
        raise UserError(f"{mi_path} not found; run `ibprobe run --out {run_dir}` or `ibprobe analyze` first")
    rows = read_mi_csv(mi_path)
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else None
    title = _run_title(cfg := _run_config(run_dir))
    figdir = run_dir / "figures"
    written: list[Path] = []
    plane_rows = _ok(rows, "i_xh_bits", "i_yh_bits", "epoch")
    if plane_rows:
        written += save_figure(info_plane(rows, title=title), figdir / "info_plane", plane_rows)
    epoch_rows = _ok(rows, "i_xh_bits", "epoch")
    changes_path = run_dir / "analysis" / "changes.csv"
    changes = read_mi_csv(changes_path) if changes_path.is_file() else None
    if epoch_rows:
        written += save_figure(mi_vs_epoch(rows, changes=changes, title=title), figdir / "mi_vs_epoch", epoch_rows)
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
