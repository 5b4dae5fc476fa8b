"""Figures of the Hessian and complexity lenses (-> DIR/figures/): data in, matplotlib Figure out (no pyplot).

`condition_number_vs_depth` draws rows of ibprobe.hessian.linear_resnet_table; `complexity_vs_epoch` draws
summary rows of ibprobe.complexity.complexity_rows beside the generalization gap from metrics.jsonl rows.
The caller saves each figure (PNG, PDF) with the rows it was drawn from (CSV).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ibprobe.report.plots import _MARKERS, _finite, _new_figure

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

    fig = _new_figure(7.0, 3.6)
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
            pts = [(r["depth"], float(r["condition_number"])) for r in sel if _finite(r["condition_number"])]
            label = f"shortcut {k}, {init} init"
            if not pts:
                ax.plot([], [], ls="none", marker="x", color=cmap(ci), label=f"{label}: Hessian = 0")
                continue
            ax.plot(*zip(*pts), ls=_INIT_STYLE.get(init, ":"), marker=_MARKERS[ci % len(_MARKERS)], ms=4,
                    color=cmap(ci), lw=1.5, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("depth (residual units)")
    ax.set_ylabel("condition number  (max |λ| / min nonzero |λ|)")
    ax.grid(True, which="both", lw=0.4, alpha=0.4)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    ax.set_title(title or "Hessian at initialisation, deep linear residual network", fontsize=9)
    return fig


def generalization_gap(metrics_rows: Sequence[dict]) -> list[tuple[int, float]]:
    """[(epoch, train_acc - test_acc)] for the metrics.jsonl rows that have both accuracies.

    train_acc in metrics.jsonl is the running accuracy over an epoch's batches (train mode, the weights still
    moving), test_acc the end-of-epoch one, so early epochs can show a negative gap.
    """
    out = []
    for r in metrics_rows:
        if _finite(r.get("train_acc")) and _finite(r.get("test_acc")):
            out.append((int(r["epoch"]), float(r["train_acc"]) - float(r["test_acc"])))
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
    fig = _new_figure(3.0 * (len(terms) + 1), 3.2)
    axes = fig.subplots(1, len(terms) + 1, squeeze=False)[0]
    for ri, (label, (summary, metrics)) in enumerate(runs.items()):
        style = dict(color=cmap(ri % cmap.N), marker=_MARKERS[ri % len(_MARKERS)], ms=4, lw=1.5, label=label)
        for ax, term in zip(axes, terms):
            pts = sorted((int(r["epoch"]), float(r[term])) for r in summary
                         if _finite(r.get(term)) and float(r[term]) > 0)
            if pts:
                ax.plot(*zip(*pts), **style)
        gap = generalization_gap(metrics)
        if gap:
            axes[-1].plot(*zip(*gap), **style)
    for ax, term in zip(axes, terms):
        ax.set_yscale("log")
        ax.set_title(TERM_LABELS.get(term, term), fontsize=8)
        ax.set_ylabel(term, fontsize=8)
    axes[-1].set_title("generalization gap", fontsize=8)
    axes[-1].set_ylabel("train acc − test acc", fontsize=8)
    axes[-1].axhline(0.0, color="0.5", lw=0.6)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", lw=0.4, alpha=0.4)
        ax.tick_params(which="both", labelsize=7)
    axes[-1].legend(fontsize=7, loc="best", framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
