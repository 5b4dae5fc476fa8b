"""What every figure of the report shares: a pyplot-free Figure, the layer colours and epoch colour scale, the
markers, the rows a figure can draw (finished, grouped by layer), the note of failed jobs, the hollow marker of a
self-check, and `save_figure`, which writes PNG + PDF + the table a figure was drawn from.

Drawing functions take data and return a `matplotlib.figure.Figure` built without pyplot (no global state, Agg
canvas); only `save_figure` touches files.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ibprobe.rundir.files import atomic_write_bytes
from ibprobe.rundir.tables import write_table

FIG_DPI = 200
MARKERS = "osD^vP*Xhp<>"


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def layer_colours(layers: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(layers)}


def epoch_norm(epochs: Sequence[int]):
    """Log colour scale over epoch + 1, so the initialisation (epoch 0) has a colour too."""
    from matplotlib.colors import LogNorm

    lo, hi = min(epochs) + 1, max(epochs) + 1
    return LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)


def epoch_ticks(cbar, epochs: list[int]) -> None:
    """Colorbar ticks at the checkpoint epochs (positions epoch + 1), labelled with the epoch itself."""
    from matplotlib.ticker import FixedLocator, NullLocator

    shown = epochs if len(epochs) <= 8 else sorted({epochs[int(round(i))] for i in np.linspace(0, len(epochs) - 1, 7)})
    cbar.ax.yaxis.set_major_locator(FixedLocator([e + 1 for e in shown]))
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    cbar.ax.set_yticklabels([str(e) for e in shown])


def symlog_epochs(ax, epochs: list[int]) -> None:
    """Log epoch axis that still shows epoch 0: symlog, linear below 1."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
    ax.set_xlim(left=-0.15 if min(epochs) == 0 else None)
    if len(epochs) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(epochs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(e) for e in epochs])


def note_failed(fig, rows: list[dict]) -> None:
    bad = failed_rows(rows)
    if not bad:
        return
    items = [f"{r.get('layer')} @ {r.get('epoch')}" for r in bad]
    text = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
    fig.text(0.01, 0.005, f"failed jobs, not drawn: {text}", fontsize=6, color="0.35", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)


def flag_handles(rows: list[dict]) -> list:
    from matplotlib.lines import Line2D

    if not flagged(rows).any():
        return []
    return [Line2D([], [], ls="none", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                   label="hollow: flagged by a self-check\n(the checks column of mi.csv)")]


def ok_rows(rows: Iterable[dict], *need: str) -> list[dict]:
    """Rows with status ok (or no status) whose `need` columns are all present."""
    return [r for r in rows if r.get("status", "ok") in (None, "ok") and all(r.get(k) is not None for k in need)]


def failed_rows(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") not in (None, "ok")]


def by_layer(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by layer (first-seen order), each sorted by epoch."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["layer"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in out.items()}


def flagged(rows: list[dict]) -> np.ndarray:
    """Which rows a self-check flagged (their `checks` cell is not empty)."""
    return np.array([bool(r.get("checks")) for r in rows], dtype=bool)


def asym_err(rows: list[dict], value: str, low: str, high: str) -> np.ndarray:
    """[2, n] error-bar lengths from CI columns; a missing CI draws no bar."""
    v = np.array([r[value] for r in rows], dtype=float)
    lo = np.array([r[low] if r.get(low) is not None else r[value] for r in rows], dtype=float)
    hi = np.array([r[high] if r.get(high) is not None else r[value] for r in rows], dtype=float)
    return np.stack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])


def finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def save_figure(fig, path_stem: str | os.PathLike, table: list[dict] | str | os.PathLike) -> list[Path]:
    """Write `<stem>.png`, `<stem>.pdf` and `<stem>.csv` atomically; return the paths written.

    `table` is what the figure was drawn from: a list of row dicts (their own columns, written in the run folder's
    one table dialect, ibprobe.rundir.tables) or the path of an existing table (copied byte for byte).
    """
    stem = Path(path_stem)
    out = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=FIG_DPI, metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(atomic_write_bytes(stem.with_name(stem.name + f".{ext}"), buf.getvalue()))
    csv_path = stem.with_name(stem.name + ".csv")
    if isinstance(table, (str, os.PathLike)):
        out.append(atomic_write_bytes(csv_path, Path(table).read_bytes()))
    else:
        out.append(write_table(csv_path, list(table)))
    return out
