"""Figures that compare estimators and score decoder samples: KID against epoch, information planes of several
estimators, and the bin-count sensitivity of the binning estimate.

Each drawing function takes rows (dicts with the columns of analysis/kid.csv, analysis/baselines.csv or
analysis/mi.csv, missing values None) and returns a `matplotlib.figure.Figure` built without pyplot, like
ibprobe.report.plots; `plot_estimators` draws them for a run folder (called by plot_run).
Information is in bits per image; KID in kernel units (the unbiased MMD² with the cubic kernel).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ibprobe.errors import ConfigError, DataError, UserError
from ibprobe.report.figure import (MARKERS, by_layer, epoch_norm, epoch_ticks, fmt_epoch, layer_colours, linthresh,
                                   new_figure, ok_rows, save_figure, symlog_epochs)
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.tables import BASELINES, KID, SENSITIVITY, Schema, read_table

ESTIMATORS = ("decoder", "binning", "kde")
LAYOUTS = ("panels", "overlay")

_VIEW = "viridis"
_LINESTYLES = ("-", "--", ":", "-.")
_REFERENCE_STYLE = {
    "unconditional": dict(color="tab:red", ls="--", label="q(x) samples vs held-out"),
    "split_half": dict(color="0.35", ls=":", label="held-out half vs half"),
}


# ----------------------------------------------------------------------------------------------- KID
def _kid_error(row: dict) -> float:
    """The half-width of a KID row's bar: 2 kid_sem, or 1 kid_std in a table from before kid_sem."""
    if row.get("kid_sem") is not None and math.isfinite(row["kid_sem"]):
        return 2.0 * float(row["kid_sem"])
    return float(row.get("kid_std") or 0.0)


def kid_vs_epoch(rows: list[dict], *, title: str | None = None):
    """KID of q(x | h) samples against the held-out images, per layer (one panel each) against epoch.

    Points are the mean over subsets with ±2 standard-error bars (kid_sem, about a 95% interval over draws of the
    images and samples; a table from before kid_sem gives ±1 std over subsets instead). The reference rows (layer
    None) are drawn in every panel as horizontal lines with the same bands: q(x) samples against the held-out
    images (a decoder that knows no code) and one half of the held-out images against the other (the floor set by
    sampling noise). The epoch axis is symlog, so the initialisation at epoch 0 is shown.
    """
    cond = [r for r in ok_rows(rows, "kid_mean", "epoch", "layer") if r.get("reference", "conditional") == "conditional"]
    if not cond:
        raise DataError("no conditional KID rows (reference 'conditional' with epoch, layer, kid_mean) to draw")
    refs = {r["reference"]: r for r in rows if r.get("reference") in _REFERENCE_STYLE and r.get("kid_mean") is not None}
    groups = by_layer(cond)
    colours = layer_colours(list(groups))
    epochs = sorted({r["epoch"] for r in cond})
    ncol = min(len(groups), 4)
    nrow = math.ceil(len(groups) / ncol)
    fig = new_figure(2.9 * ncol + 0.6, 2.5 * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    for ax, (i, (layer, lr)) in zip(axes.flat, enumerate(groups.items())):
        e = np.array([r["epoch"] for r in lr], dtype=float)
        m = np.array([r["kid_mean"] for r in lr], dtype=float)
        s = np.array([_kid_error(r) for r in lr], dtype=float)
        ax.errorbar(e, m, yerr=s, fmt="-", marker=MARKERS[i % len(MARKERS)], ms=4, color=colours[layer], lw=1.5,
                    capsize=2, label="q(x|h) samples vs held-out")
        for name, ref in refs.items():
            style = _REFERENCE_STYLE[name]
            v, sd = float(ref["kid_mean"]), _kid_error(ref)
            ax.axhline(v, color=style["color"], ls=style["ls"], lw=1.1, label=style["label"], gid=f"ref_{name}")
            if sd > 0:
                ax.axhspan(v - sd, v + sd, color=style["color"], alpha=0.12, lw=0)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch (symlog axis)")
        symlog_epochs(ax, epochs)
        ax.grid(True, lw=0.4, alpha=0.4)
    for ax in axes[:, 0]:
        ax.set_ylabel("KID  [MMD², cubic kernel]")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncol=len(labels), frameon=False)
    fig.suptitle(title or "KID of decoder samples (lower = closer to the held-out images)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- planes
def _fmt(v: Any) -> str:
    return f"{float(v):g}"


def estimator_label(row: dict) -> str:
    """'decoder', 'binning (30 bins)', 'kde (σ²=0.1)': one label per estimator setting."""
    est = str(row.get("estimator") or "decoder")
    if est == "binning" and row.get("bins") is not None:
        return f"binning ({int(row['bins'])} bins)"
    if est == "kde" and row.get("noise_var") is not None:
        return f"kde (σ²={_fmt(row['noise_var'])})"
    return est


def _variants(rows: list[dict], estimators: Sequence[str] | None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in ok_rows(rows, "i_xh_bits", "i_yh_bits", "epoch", "layer"):
        if estimators is None or str(r.get("estimator") or "decoder") in estimators:
            out.setdefault(estimator_label(r), []).append(r)
    return out


def _ceiling(rows: list[dict]) -> float | None:
    ns = {int(r["n"]) for r in rows if r.get("n") and str(r.get("estimator") or "decoder") != "decoder"}
    return math.log2(max(ns)) if ns else None


def estimator_planes(rows: list[dict], *, estimators: Sequence[str] | None = None, layout: str = "panels",
                     title: str | None = None):
    """Information planes, I(X;T) (x) against I(T;Y) (y) in bits, of several estimators on the same layers.

    `rows` mixes decoder rows (analysis/mi.csv; no `estimator` column means "decoder") and baseline rows
    (analysis/baselines.csv); each estimator setting (e.g. binning at 30 bins) is one variant. `estimators`
    keeps only those names ("decoder", "binning", "kde"). layout "panels": one plane per variant, each with its
    own axes, because the decoder's scale (up to H(X), hundreds of bits) and the baselines' (at most log2 N)
    differ; "overlay": all on one plane, a line style per variant. Trajectories are coloured by layer, points by
    epoch. The baselines' ceiling log2 N (every image distinguishable) is a dotted vertical line.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    if layout not in ("panels", "overlay"):
        raise DataError(f"layout must be 'panels' or 'overlay', got {layout!r}")
    variants = _variants(rows, estimators)
    if not variants:
        raise DataError("no rows with I(X;T) and I(T;Y) for the chosen estimators to draw a plane from")
    drawn = [r for v in variants.values() for r in v]
    colours = layer_colours(list(by_layer(drawn)))
    epochs = sorted({r["epoch"] for r in drawn})
    norm = epoch_norm(epochs)
    ceiling = _ceiling(drawn)
    panels = layout == "panels"
    ncol = min(len(variants), 3) if panels else 1
    nrow = math.ceil(len(variants) / ncol) if panels else 1
    fig = new_figure(3.8 * ncol + 1.0, 3.3 * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for k, (label, vrows) in enumerate(variants.items()):
        ax = axes.flat[k] if panels else axes.flat[0]
        ls = "-" if panels else _LINESTYLES[k % len(_LINESTYLES)]
        for i, (layer, lr) in enumerate(by_layer(vrows).items()):
            x = np.array([r["i_xh_bits"] for r in lr], dtype=float)
            y = np.array([r["i_yh_bits"] for r in lr], dtype=float)
            e = np.array([r["epoch"] for r in lr], dtype=float)
            marker = MARKERS[(i if panels else k) % len(MARKERS)]
            ax.plot(x, y, ls, color=colours[layer], lw=1.3, alpha=0.85, zorder=2, gid=f"trajectory:{label}:{layer}")
            ax.scatter(x, y, c=e + linthresh(epochs), cmap=_VIEW, norm=norm, marker=marker, s=34,
                       edgecolors=colours[layer], linewidths=1.1, zorder=3)
        if panels:
            ax.set_title(label, fontsize=9)
        shown = vrows if panels else drawn
        xs = [float(r["i_xh_bits"]) for r in shown]
        ys = [float(r["i_yh_bits"]) for r in shown]
        if ceiling is not None and (not panels or not label.startswith("decoder")):
            ax.axvline(ceiling, color="0.4", ls=":", lw=1.0, gid="ceiling")
            xs.append(ceiling)
        # From 0, so a saturated estimator reads as saturated rather than as a zoomed-in spread.
        ax.set_xlim(min(0.0, min(xs)), max(xs) * 1.05 + 1e-9 if max(xs) > 0 else 1.0)
        ax.set_ylim(min(0.0, min(ys)), max(ys) * 1.08 + 1e-9 if max(ys) > 0 else 1.0)
        ax.set_xlabel("I(X;T)  [bits per image]")
        ax.set_ylabel("I(T;Y)  [bits per image]")
        ax.grid(True, lw=0.4, alpha=0.4)
    if panels:
        for ax in list(axes.flat)[len(variants):]:
            ax.set_visible(False)
    handles = [Line2D([], [], color=c, lw=1.4, label=layer) for layer, c in colours.items()]
    if not panels:
        handles += [Line2D([], [], color="0.2", ls=_LINESTYLES[k % len(_LINESTYLES)],
                           marker=MARKERS[k % len(MARKERS)], markerfacecolor="white", label=label)
                    for k, label in enumerate(variants)]
    if ceiling is not None:
        handles.append(Line2D([], [], color="0.4", ls=":", label=f"log2 N = {ceiling:.2f} bits"))
    fig.legend(handles=handles, fontsize=7, loc="outside right upper", frameon=False)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=_VIEW), ax=list(axes.flat), pad=0.02, shrink=0.6, aspect=25)
    epoch_ticks(cbar, epochs)
    cbar.set_label("epoch (log colour scale)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- sensitivity
def binning_sensitivity_plot(rows: list[dict], *, title: str | None = None):
    """Binning I(X;T) (top) and I(T;Y) (bottom, when present) against the bin count, one line per layer, one
    column per checkpoint (by step, titled with its epoch). The dotted line is log2 N: with enough bins every image
    has its own cell and every layer scores the same, whatever it keeps; with 1 bin every layer scores 0."""
    drawn = ok_rows(rows, "bins", "i_xh_bits", "layer")
    if not drawn:
        raise DataError("no binning rows (bins, i_xh_bits, layer) to draw a sensitivity figure from")
    by_epoch: dict[Any, list[dict]] = {}
    for r in drawn:
        by_epoch.setdefault(r.get("step"), []).append(r)
    keys = sorted(by_epoch, key=lambda s: -1 if s is None else s)
    has_y = any(r.get("i_yh_bits") is not None for r in drawn)
    colours = layer_colours(list(by_layer([{**r, "epoch": 0} for r in drawn])))
    fig = new_figure(2.8 * len(keys) + 1.2, 2.6 * (1 + has_y) + 0.4)
    axes = fig.subplots(1 + has_y, len(keys), squeeze=False, sharex=True, sharey="row")
    for col, ep in enumerate(keys):
        for row, (value, what) in enumerate([("i_xh_bits", "I(X;T)"), ("i_yh_bits", "I(T;Y)")][: 1 + has_y]):
            ax = axes[row, col]
            for i, layer in enumerate(colours):
                lr = sorted([r for r in by_epoch[ep] if r["layer"] == layer and r.get(value) is not None],
                            key=lambda r: r["bins"])
                if lr:
                    ax.plot([r["bins"] for r in lr], [r[value] for r in lr], "-", marker=MARKERS[i % len(MARKERS)],
                            ms=3.5, color=colours[layer], lw=1.4, label=layer)
            ns = [int(r["n"]) for r in by_epoch[ep] if r.get("n")]
            if ns and value == "i_xh_bits":
                ax.axhline(math.log2(max(ns)), color="0.4", ls=":", lw=1.0, label="log2 N", gid="ceiling")
            ax.set_xscale("log", base=2)
            ax.grid(True, lw=0.4, alpha=0.4)
            if row == 0:
                ax.set_title("all checkpoints" if ep is None else f"epoch {fmt_epoch(by_epoch[ep][0]['epoch'])}",
                             fontsize=9)
            if col == 0:
                ax.set_ylabel(f"binning {what}  [bits]")
            if row == has_y:
                ax.set_xlabel("bins over the layer's range (log axis)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=7, title="layer", title_fontsize=8,
               loc="outside right upper", frameon=False)
    fig.suptitle(title or "binning estimate against the bin count", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- a run folder
def check_estimators(estimators: Sequence[str] | None, layout: str = "panels") -> list[str] | None:
    """`estimators` (None: all) if every one is decoder, binning or kde and `layout` is known; else ConfigError."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if estimators is not None and not list(estimators):
        raise ConfigError(f"--estimators is empty; name one or more of {', '.join(ESTIMATORS)}")
    unknown = sorted(set(estimators or ()) - set(ESTIMATORS))
    if unknown:
        raise ConfigError(f"unknown estimator(s) {', '.join(unknown)}; choose among {', '.join(ESTIMATORS)}")
    return None if estimators is None else list(estimators)


def plot_estimators(run_dir: str | os.PathLike, mi_rows: list[dict], *, estimators: Sequence[str] | None = None,
                    layout: str = "panels", title: str | None = None) -> list[Path]:
    """Draw into run_dir/figures/ what the folder's analysis/ has tables for; return the files written:
    estimators (the decoder's plane beside the baselines', from mi.csv and baselines.csv), binning_sensitivity
    and kid, each as .png, .pdf and the .csv it was drawn from.

    `estimators` (default: every one the folder has) chooses among decoder, binning and kde; `layout` "panels"
    (a plane each) or "overlay" (one plane). Asking for a baseline the folder lacks is a UserError.
    """
    check_estimators(estimators, layout)
    run = RunDir(run_dir)
    figdir = run.figures
    tables = read_estimator_tables(run_dir)
    base_path = run.table(BASELINES.name)
    baselines = tables[BASELINES.name]
    if estimators and not baselines and set(estimators) - {"decoder"}:
        raise UserError(f"{base_path} not found: rerun `ibprobe run` or `ibprobe analyze` on this folder to "
                        f"compute the binning and KDE baselines")
    written: list[Path] = []
    if baselines or estimators:
        rows = [{**r, "estimator": "decoder"} for r in mi_rows] + baselines
        drawn = [r for r in ok_rows(rows, "i_xh_bits", "i_yh_bits", "epoch", "layer")
                 if r["estimator"] in (estimators or ESTIMATORS)]
        if drawn:
            fig = estimator_planes(drawn, estimators=estimators, layout=layout, title=title)
            written += save_figure(fig, figdir / "estimators", drawn)
    for schema, draw in ((SENSITIVITY, binning_sensitivity_plot), (KID, kid_vs_epoch)):
        rows = tables[schema.name]
        if ok_rows(rows, "layer", "epoch"):
            written += save_figure(draw(rows), figdir / schema.name, run.table(schema.name))
    return written


def read_estimator_tables(run_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """{table name: rows} of the tables plot_estimators draws from (baselines, binning_sensitivity, kid; [] where
    missing): a damaged one is a UserError here, before anything is drawn."""
    run = RunDir(run_dir)
    schemas: tuple[Schema, ...] = (BASELINES, SENSITIVITY, KID)
    return {s.name: read_table(run.table(s.name), s) if run.table(s.name).is_file() else [] for s in schemas}


__all__ = ["ESTIMATORS", "LAYOUTS", "check_estimators", "read_estimator_tables", "kid_vs_epoch", "estimator_label",
           "estimator_planes", "binning_sensitivity_plot", "plot_estimators"]
