"""Figures of the Hessian and complexity lenses, drawn from fixed rows."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ibprobe.report.lenses import (complexity_vs_epoch, condition_number_vs_depth, generalization_gap, hessian_vs_epoch,
                                   save_complexity)
from ibprobe.rundir.tables import COMPLEXITY, read_table


def _table():
    rows = []
    for k in (1, 2, 3):
        for n in (1, 2, 3, 4):
            for init in ("zero", "random"):
                cond = {1: 4.0 * n, 2: 50.0, 3: math.nan}[k] if init == "zero" else 10.0 * k * n
                rows.append(dict(shortcut_depth=k, depth=n, init=init, condition_number=cond))
    return rows


def test_condition_number_figure_has_a_line_per_shortcut_and_init_and_names_zero_hessians():
    fig = condition_number_vs_depth(_table())
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    drawn = {l.get_label(): l for l in ax.get_lines()}
    assert np.array_equal(drawn["shortcut 1, zero init"].get_ydata(), [4.0, 8.0, 12.0, 16.0])
    assert np.array_equal(drawn["shortcut 2, zero init"].get_xdata(), [1, 2, 3, 4])
    assert len(drawn["shortcut 3, zero init: Hessian = 0"].get_xdata()) == 0
    assert drawn["shortcut 3, random init"].get_linestyle() == "--"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "shortcut 3, zero init: Hessian = 0" in labels and len(labels) == 6


def test_complexity_figure_draws_terms_and_the_gap_per_run():
    summary = [dict(epoch=e, lipschitz_residual=10.0 * (e + 1), residual_complexity=1e4 * (e + 1),
                    residual_margin=math.inf if e == 0 else 1e5) for e in (0, 1, 4)]
    metrics = [dict(epoch=e, train_acc=0.5 + 0.1 * e, test_acc=0.5 + 0.05 * e) for e in range(5)]
    metrics.append(dict(epoch=5, train_loss=0.1))  # no accuracy: not a gap point
    fig = complexity_vs_epoch({"true labels": (summary, metrics), "random labels": (summary, metrics)})
    axes = fig.axes
    assert len(axes) == 4 and all(ax.get_yscale() == "log" for ax in axes[:3])
    assert [l.get_label() for l in axes[0].get_lines()] == ["true labels", "random labels"]
    assert np.array_equal(axes[2].get_lines()[0].get_xdata(), [1, 4])  # the infinite value is left out
    gap = axes[3].get_lines()[0]
    assert np.allclose(gap.get_ydata(), [0.05 * e for e in range(5)])
    assert generalization_gap(metrics)[-1] == (4, 0.5 + 0.4 - 0.7)


def test_hessian_figure_marks_negative_eigenvalues_and_draws_the_condition_estimate():
    rows = [dict(epoch=e, k=3, lambda_max=4.0 / (e + 1), cond_estimate=2.0 + e, eig_1=4.0 / (e + 1), eig_2=-1.0,
                 eig_3=0.5) for e in (3, 0, 1)]
    ax, ac = hessian_vs_epoch(rows).axes
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert np.allclose(lines["λ_max"].get_ydata(), [4.0, 2.0, 1.0])  # sorted by epoch
    assert np.allclose(lines["negative λ (|λ| shown)"].get_ydata(), [1.0, 1.0, 1.0])
    assert np.allclose(ac.get_lines()[0].get_ydata(), [2.0, 3.0, 5.0]) and ac.get_yscale() == "log"


def test_saved_complexity_table_has_the_run_and_its_gap(tmp_path):
    summary = [dict(epoch=e, lipschitz_residual=10.0 + e, residual_complexity=1e3 + e) for e in (0, 2)]
    metrics = [dict(epoch=e, train_acc=0.5 + 0.2 * e, test_acc=0.5 + 0.1 * e) for e in range(3)]
    written = save_complexity({"true": (summary, metrics), "mine": (summary, [])}, tmp_path / "c")
    assert [p.name for p in written] == ["c.png", "c.pdf", "c.csv"]
    rows = read_table(tmp_path / "c.csv", COMPLEXITY)
    assert [(r["run"], r["epoch"], r["gap"]) for r in rows] == [("true", 0, 0.0), ("true", 2, pytest.approx(0.2)),
                                                               ("mine", 0, None), ("mine", 2, None)]
    assert "residual_margin" not in rows[0]
