"""Figures of the Hessian and complexity lenses (-> DIR/figures/): data in, matplotlib Figure out (no pyplot).

`condition_number_vs_depth` draws rows of ibprobe.lenses.hessian.linear_resnet_table; `hessian_vs_epoch` rows of
ibprobe.lenses.hessian.hessian_rows; `complexity_vs_epoch` summary rows of ibprobe.lenses.complexity.complexity_rows beside the
generalization gap from metrics.jsonl rows. `save_complexity` saves that last one with the rows it shows;
`draw_lens_tables` draws what a folder's lens tables hold, `compare_complexity` several folders' complexity.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ibprobe.errors import DataError
from ibprobe.report.figure import MARKERS, finite, new_figure, save_figure
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.tables import COMPLEXITY, HESSIAN, HESSIAN_LINEAR, read_metrics, read_table

_INIT_STYLE = {"zero": "-", "random": "--"}
TERM_LABELS = {
    "spectral_product": "product of spectral norms",
    "lipschitz_residual": "Lipschitz bound (identity = 1)",
    "bartlett": "spectral complexity (chain)",
    "residual_complexity": "spectral complexity (residual units)",
    "bartlett_margin": "spectral complexity / margin (chain)",
    "residual_margin": "spectral complexity / margin (residual)",
    "sum_frobenius_sq": "sum of squared Frobenius norms",
    "param_norm_sq": "squared parameter norm",
}


def condition_number_vs_depth(rows: Sequence[dict], *, title: str | None = None):
    """Condition number of the loss Hessian against the number of residual units, log y.

    One colour per shortcut depth, solid for zero init and dashed for small random init. A configuration whose
    Hessian is exactly zero has no condition number; it is named in the legend instead of drawn.
    """
    from matplotlib import colormaps

    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    ks = sorted({int(r["shortcut_depth"]) for r in rows})
    inits = [i for i in ("zero", "random") if any(r["init"] == i for r in rows)]
    inits += sorted({r["init"] for r in rows} - set(inits))
    for ci, k in enumerate(ks):
        for init in inits:
            sel = sorted((r for r in rows if int(r["shortcut_depth"]) == k and r["init"] == init),
                         key=lambda r: r["depth"])
            if not sel:
                continue
            pts = [(r["depth"], float(r["condition_number"])) for r in sel if finite(r["condition_number"])]
            label = f"shortcut {k}, {init} init"
            if not pts:
                ax.plot([], [], ls="none", marker="x", color=cmap(ci), label=f"{label}: Hessian = 0")
                continue
            ax.plot(*zip(*pts), ls=_INIT_STYLE.get(init, ":"), marker=MARKERS[ci % len(MARKERS)], ms=4,
                    color=cmap(ci), lw=1.5, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("depth (residual units)")
    ax.set_ylabel("condition number  (max |λ| / min nonzero |λ|)")
    ax.grid(True, which="both", lw=0.4, alpha=0.4)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    ax.set_title(title or "Hessian at initialisation, deep linear residual network", fontsize=9)
    return fig


def hessian_vs_epoch(rows: Sequence[dict], *, title: str | None = None):
    """The top of the loss Hessian's spectrum against epoch: lambda_max and every |eig_i| of the top k (log y,
    negative ones marked), and the top-k condition estimate |eig_1| / |eig_k| (log y), one point per checkpoint (at
    its fractional epoch)."""
    rows = sorted(rows, key=lambda r: float(r["epoch"]))
    fig = new_figure(8.0, 3.2)
    ax, ac = fig.subplots(1, 2)
    k = max((int(r.get("k") or 0) for r in rows), default=0)
    for i in range(1, k + 1):
        pts = [(float(r["epoch"]), float(r[f"eig_{i}"])) for r in rows if finite(r.get(f"eig_{i}"))]
        pos = [(e, abs(v)) for e, v in pts if v != 0]
        if pos:
            ax.plot(*zip(*pos), color="0.6", lw=0.6, label="|λ_i|, top k" if i == 1 else None)
        neg = [(e, -v) for e, v in pts if v < 0]
        if neg:
            ax.plot(*zip(*neg), ls="none", marker="v", ms=4, color="tab:red",
                    label="negative λ (|λ| shown)" if not any(l.get_label().startswith("negative")
                                                             for l in ax.get_lines()) else None)
    top = [(float(r["epoch"]), float(r["lambda_max"])) for r in rows
           if finite(r.get("lambda_max")) and float(r["lambda_max"]) > 0]
    if top:
        ax.plot(*zip(*top), marker="o", ms=4, lw=1.5, color="tab:blue", label="λ_max")
    cond = [(float(r["epoch"]), float(r["cond_estimate"])) for r in rows if finite(r.get("cond_estimate"))]
    if cond:
        ac.plot(*zip(*cond), marker="s", ms=4, lw=1.5, color="tab:green")
    ax.set_ylabel("eigenvalue  [nats per weight²]", fontsize=8)
    ax.set_title("top of the Hessian spectrum", fontsize=8)
    ac.set_ylabel(f"|λ_1| / |λ_{k}|", fontsize=8)
    ac.set_title(f"top-{k} condition estimate (a lower bound)", fontsize=8)
    for a in (ax, ac):
        if a.get_lines():
            a.set_yscale("log")
        a.set_xlabel("epoch")
        a.grid(True, which="both", lw=0.4, alpha=0.4)
        a.tick_params(which="both", labelsize=7)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def generalization_gap(metrics_rows: Sequence[dict]) -> list[tuple[float, float]]:
    """[(epoch, train_acc - test_acc)] for the metrics.jsonl rows that have both accuracies.

    train_acc in metrics.jsonl is the running accuracy over an epoch's batches (train mode, the weights still
    moving), test_acc the end-of-epoch one, so early epochs can show a negative gap.
    """
    out = []
    for r in metrics_rows:
        if finite(r.get("train_acc")) and finite(r.get("test_acc")):
            out.append((float(r["epoch"]), float(r["train_acc"]) - float(r["test_acc"])))
    return sorted(out)


def complexity_vs_epoch(runs: Mapping[str, tuple[Sequence[dict], Sequence[dict]]],
                        terms: Sequence[str] = ("lipschitz_residual", "residual_complexity", "residual_margin"), *,
                        title: str | None = None):
    """One panel per complexity term (log y) against epoch, and a last panel with the generalization gap.

    runs: {label: (summary rows with an `epoch` column, metrics.jsonl rows)}, one colour per run, so e.g.
    true and random labels sit side by side. Non-finite values (a margin <= 0) are left out.
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig = new_figure(3.0 * (len(terms) + 1), 3.2)
    axes = fig.subplots(1, len(terms) + 1, squeeze=False)[0]
    for ri, (label, (summary, metrics)) in enumerate(runs.items()):
        style = dict(color=cmap(ri % cmap.N), marker=MARKERS[ri % len(MARKERS)], ms=4, lw=1.5, label=label)
        for ax, term in zip(axes, terms):
            pts = sorted((float(r["epoch"]), float(r[term])) for r in summary
                         if finite(r.get(term)) and float(r[term]) > 0)
            if pts:
                ax.plot(*zip(*pts), **style)
        gap = generalization_gap(metrics)
        if gap:
            axes[-1].plot(*zip(*gap), **style)
    for ax, term in zip(axes, terms):
        ax.set_title(TERM_LABELS.get(term, term), fontsize=8)
        ax.set_ylabel(term, fontsize=8)
        if ax.get_lines():
            ax.set_yscale("log")
        else:
            why = "\n(margin ≤ 0: too many training errors)" if term.endswith("margin") else ""
            ax.text(0.5, 0.5, "no finite value" + why, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    axes[-1].set_title("generalization gap", fontsize=8)
    axes[-1].set_ylabel("train acc − test acc", fontsize=8)
    axes[-1].axhline(0.0, color="0.5", lw=0.6)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", lw=0.4, alpha=0.4)
        ax.tick_params(which="both", labelsize=7)
    if not axes[-1].get_lines()[1:]:  # only the zero line: no run logged both accuracies
        axes[-1].text(0.5, 0.5, "no train and test accuracy\nin metrics.jsonl", ha="center", va="center", fontsize=7,
                      transform=axes[-1].transAxes)
    legend_ax = next((ax for ax in axes[::-1] if any(not l.get_label().startswith("_") for l in ax.get_lines())), None)
    if legend_ax is not None:
        legend_ax.legend(fontsize=7, loc="best", framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_complexity(runs: Mapping[str, tuple[Sequence[dict], Sequence[dict]]], path_stem: str | os.PathLike, *,
                    title: str | None = None) -> list[Path]:
    """complexity_vs_epoch of `runs` as <stem>.png/.pdf, and <stem>.csv: each run's summary rows with its `run`
    label and the generalization `gap` (train_acc - test_acc of metrics.jsonl, empty when not logged) at that epoch.

    Terms a run lacks (margins of an autoencoder) are left out of the panels.
    """
    terms = [t for t in ("lipschitz_residual", "residual_complexity", "residual_margin")
             if any(t in r for summary, _ in runs.values() for r in summary)]
    fig = complexity_vs_epoch(runs, terms, title=title)
    table = []
    for label, (summary, metrics) in runs.items():
        gap = dict(generalization_gap(metrics))
        table += [{"run": label, **r, "gap": gap.get(float(r["epoch"]))} for r in summary]
    return save_figure(fig, path_stem, table)


def draw_lens_tables(out_dir: str | os.PathLike, tables: Sequence[str], *, title: str | None = None,
                     metrics: Sequence[dict] = (), label: str = "run") -> list[Path]:
    """Draw the lens `tables` ("hessian", "hessian_linear", "complexity" with the generalization gap of `metrics`)
    of DIR/analysis/ into DIR/figures/, each with the table it was drawn from; returns the files written."""
    run = RunDir(out_dir)
    written: list[Path] = []
    if HESSIAN.name in tables:
        rows = read_table(run.table(HESSIAN.name), HESSIAN)
        written += save_figure(hessian_vs_epoch(rows, title=title), run.figure(HESSIAN.name), run.table(HESSIAN.name))
    if HESSIAN_LINEAR.name in tables:
        rows = read_table(run.table(HESSIAN_LINEAR.name), HESSIAN_LINEAR)
        written += save_figure(condition_number_vs_depth(rows, title=title), run.figure(HESSIAN_LINEAR.name),
                               run.table(HESSIAN_LINEAR.name))
    if COMPLEXITY.name in tables:
        rows = read_table(run.table(COMPLEXITY.name), COMPLEXITY)
        written += save_complexity({label: (rows, list(metrics))}, run.figure(COMPLEXITY.name), title=title)
    return written


def compare_complexity(runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """One complexity figure of several analysed folders ({label: folder}, each with analysis/complexity.csv and,
    for a training run, metrics.jsonl) -> out_dir/figures/complexity.{png,pdf,csv}, e.g. true against random labels."""
    drawn = {}
    for label, folder in runs.items():
        run = RunDir(folder)
        path = run.table(COMPLEXITY.name)
        if not path.is_file():
            raise DataError(f"{path} not found; run `ibprobe complexity --run {folder}` first")
        drawn[label] = (read_table(path, COMPLEXITY), read_metrics(run.metrics) if run.metrics.is_file() else [])
    return save_complexity(drawn, RunDir(out_dir).figure(COMPLEXITY.name), title=" vs ".join(drawn))
