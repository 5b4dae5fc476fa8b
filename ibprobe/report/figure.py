"""What every figure of the report shares: a pyplot-free Figure, the layer colours and epoch colour scale, the
markers, the rows a figure can draw (finished, grouped by layer), the note of failed jobs, the hollow marker of a
self-check, each layer's peak, and `save_figure`, which writes PNG + PDF + the table a figure was drawn from.

Checkpoints are ordered by step and drawn by their (fractional) epoch: a log-spaced run has several checkpoints
inside the first epoch, so epoch axes are symlog with their linear part below the first checkpoint after the
initialisation, which shows step 0 and spreads the early checkpoints out.

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


def fmt_epoch(epoch: float) -> str:
    """An epoch as a tick or caption shows it: 3 significant digits (0.391, 6.52, 30)."""
    return f"{float(epoch):.3g}"


def linthresh(epochs: Sequence[float]) -> float:
    """The linear part of a symlog epoch axis or colour scale: up to the first checkpoint after the initialisation
    (at most 1 epoch), so every checkpoint past step 0 lies on the logarithmic part."""
    positive = [float(e) for e in epochs if float(e) > 0]
    return min([1.0] + positive)


def epoch_norm(epochs: Sequence[float]):
    """Log colour scale over epoch + t (t: `linthresh`), so the initialisation (epoch 0) has a colour too and the
    checkpoints inside the first epoch do not share one."""
    from matplotlib.colors import LogNorm

    t = linthresh(epochs)
    lo, hi = min(epochs) + t, max(epochs) + t
    return LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)


def shown_epochs(epochs: list[float], most: int = 8) -> list[float]:
    """At most `most` of the checkpoint epochs, spread over the list, first and last included."""
    if len(epochs) <= most:
        return list(epochs)
    return sorted({epochs[int(round(i))] for i in np.linspace(0, len(epochs) - 1, most - 1)})


def epoch_ticks(cbar, epochs: list[float]) -> None:
    """Colorbar ticks at the checkpoint epochs (positions epoch + t, see epoch_norm), labelled with the epoch."""
    from matplotlib.ticker import FixedLocator, NullLocator

    shown = shown_epochs(epochs)
    t = linthresh(epochs)
    cbar.ax.yaxis.set_major_locator(FixedLocator([e + t for e in shown]))
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    cbar.ax.set_yticklabels([fmt_epoch(e) for e in shown])


def symlog_epochs(ax, epochs: list[float]) -> None:
    """Log epoch axis that still shows epoch 0: symlog, linear below the first checkpoint after it (`linthresh`)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    t = linthresh(epochs)
    ax.set_xscale("symlog", linthresh=t, linscale=0.6)
    ax.set_xlim(left=-0.15 * t if min(epochs) == 0 else None)
    shown = shown_epochs(epochs)
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([fmt_epoch(e) for e in shown], fontsize=7 if len(shown) > 5 else None)


def peaks(rows: list[dict], phases: list[dict] | None = None) -> dict[str, dict]:
    """{layer: its row at the peak}: the checkpoint of phases.csv (`phases`), else the row of the largest
    I(X;H) (the earliest of equal ones), as ibprobe.measure.phases picks it."""
    at = {p["layer"]: p["step"] for p in phases or () if p.get("step") is not None}
    out = {}
    for layer, lr in by_layer(ok_rows(rows, "i_xh_bits", "step")).items():
        mine = [r for r in lr if r["step"] == at[layer]] if layer in at else []
        out[layer] = mine[0] if mine else max(lr, key=lambda r: (r["i_xh_bits"], -r["step"]))
    return out


def stage_found(phases: list[dict] | None, layer: str) -> bool | None:
    """Whether phases.csv has a significant rise or fall for `layer` (None: no phases.csv row)."""
    for p in phases or ():
        if p.get("layer") == layer:
            return bool(p.get("rise_significant") or p.get("fall_significant"))
    return None


def peak_handle(phases: list[dict] | None):
    from matplotlib.lines import Line2D

    grey = " (grey: no significant\nrise or fall, phases.csv)" if phases else ""
    return Line2D([], [], ls="none", marker="o", ms=11, markerfacecolor="none", markeredgecolor="black",
                  label=f"ring: the layer's peak of I(X;H){grey}")


def peak_colour(phases: list[dict] | None, layer: str) -> str:
    return "0.6" if stage_found(phases, layer) is False else "black"


def note_failed(fig, rows: list[dict]) -> None:
    bad = failed_rows(rows)
    if not bad:
        return
    items = [f"{r.get('layer')} @ step {r.get('step')}" for r in bad]
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
    """Rows grouped by layer (first-seen order), each in checkpoint order (by step; by epoch without a step)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r["layer"]), []).append(r)
    order = (lambda r: (r["step"], r.get("epoch") or 0)) if all(r.get("step") is not None for r in rows) else \
        (lambda r: r.get("epoch") or 0)
    return {k: sorted(v, key=order) for k, v in out.items()}


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
