"""The checkpoint lenses from the command line: `ibprobe hessian --linear` reproduces Li et al.'s table, and
`ibprobe hessian` / `ibprobe complexity` on a tiny trained run (or its checkpoints given as --model/--checkpoints)
write their tables and figures with values that agree with each other, with metrics.jsonl and with the model."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from ibprobe.cli import main
from ibprobe.report.plots import read_metrics
from ibprobe.rundir.tables import read_table

RUN_FLAGS = ["--dataset", "digits", "--model", "resnet", "--model-arg", "widths=8,8", "blocks=1,1",
             "--train", "epochs=3", "checkpoint_epochs=0,3", "max_train=300", "lr=0.1", "batch_size=16",
             "--seed", "0", "--quiet"]


def _files(folder, stem):
    return [folder / "figures" / f"{stem}.{ext}" for ext in ("png", "pdf", "csv")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lens") / "true"
    assert main(["train", *RUN_FLAGS, "--out", str(out)]) == 0
    return out


def test_hessian_linear_writes_li_et_al_table(tmp_path, capsys):
    assert main(["hessian", "--linear", "--depths", "1,2", "--width", "2", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "H = 0" in printed and "k=2 zero" in printed
    rows = read_table(tmp_path / "analysis" / "hessian_linear.csv")
    assert all(p.is_file() for p in _files(tmp_path, "hessian_linear"))
    assert (tmp_path / "figures" / "hessian_linear.csv").read_text() == \
        (tmp_path / "analysis" / "hessian_linear.csv").read_text()
    cond = {(r["shortcut_depth"], r["depth"], r["init"]): r["condition_number"] for r in rows}
    assert len(rows) == 3 * 2 * 2
    assert cond[(2, 1, "zero")] == pytest.approx(cond[(2, 2, "zero")], rel=1e-9)  # depth-invariant
    assert cond[(1, 1, "zero")] == pytest.approx(4.0, rel=1e-9)  # 2 (sxx kron I): the input covariance's spread
    assert cond[(1, 2, "zero")] > cond[(1, 1, "zero")]
    zero = [r for r in rows if r["shortcut_depth"] == 3 and r["init"] == "zero"]
    assert all(r["lambda_max"] == 0.0 and math.isnan(r["condition_number"]) for r in zero)
    assert all(r["lambda_max"] > 0 for r in rows if r["shortcut_depth"] == 3 and r["init"] == "random")


def test_complexity_of_a_run_agrees_with_its_layers_and_metrics(tiny_run, capsys):
    assert main(["complexity", "--run", str(tiny_run), "--quiet"]) == 0
    assert "complexity per checkpoint" in capsys.readouterr().out
    summary = read_table(tiny_run / "analysis" / "complexity.csv")
    layers = read_table(tiny_run / "analysis" / "complexity_layers.csv")
    assert all(p.is_file() for p in _files(tiny_run, "complexity"))
    assert [r["epoch"] for r in summary] == [0, 3]
    assert len(layers) == 2 * 7  # stem, two convs per block, the projection shortcut, fc; per checkpoint
    for s in summary:
        mine = [r for r in layers if r["epoch"] == s["epoch"]]
        assert s["spectral_product"] == pytest.approx(np.prod([r["spectral"] for r in mine]), rel=1e-9)
        assert s["n_units"] == 2 and s["n_images"] == 300 and 0 <= s["train_acc_eval"] <= 1
        # ||A||_2 <= ||A||_F <= ||A^T||_{2,1} for the operator A, whose Frobenius norm is at least the kernel's
        assert all(0 < r["spectral"] <= r["l21"] and r["frobenius"] <= r["l21"] for r in mine)
    assert summary[-1]["train_acc_eval"] > summary[0]["train_acc_eval"] + 0.3  # it learned
    gap = {m["epoch"]: m["train_acc"] - m["test_acc"] for m in read_metrics(tiny_run / "metrics.jsonl")}
    drawn = read_table(tiny_run / "figures" / "complexity.csv")
    assert [r["run"] for r in drawn] == ["true", "true"]
    assert drawn[-1]["gap"] == pytest.approx(gap[3], rel=1e-9)


def test_complexity_of_your_checkpoints_equals_that_of_the_run_and_runs_compare(tiny_run, tmp_path):
    mine = tmp_path / "mine"
    assert main(["complexity", "--model", "resnet", "--model-arg", "widths=8,8", "blocks=1,1", "--checkpoints",
                 str(tiny_run / "checkpoints" / "step_*.pt"), "--dataset", "digits", "--epochs", "3",
                 "--out", str(mine), "--quiet"]) == 0
    if not (tiny_run / "analysis" / "complexity_layers.csv").is_file():
        assert main(["complexity", "--run", str(tiny_run), "--quiet"]) == 0
    ours = [r for r in read_table(tiny_run / "analysis" / "complexity_layers.csv") if r["epoch"] == 3]
    theirs = read_table(mine / "analysis" / "complexity_layers.csv")
    assert [r["layer"] for r in theirs] == [r["layer"] for r in ours]
    assert [r["spectral"] for r in theirs] == pytest.approx([r["spectral"] for r in ours], rel=1e-9)
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    both = tmp_path / "both"
    assert main(["complexity", "--run", str(tiny_run), str(other), "--out", str(both), "--epochs", "3",
                 "--quiet"]) == 0
    assert [r["run"] for r in read_table(both / "figures" / "complexity.csv")] == ["true", "other"]


def test_hessian_of_a_run_gives_the_top_of_the_spectrum_per_checkpoint(tiny_run):
    assert main(["hessian", "--run", str(tiny_run), "--k", "3", "--batch", "32", "--quiet"]) == 0
    rows = read_table(tiny_run / "analysis" / "hessian.csv")
    assert all(p.is_file() for p in _files(tiny_run, "hessian"))
    assert [r["epoch"] for r in rows] == [0, 3] and all(r["n_images"] == 32 and r["k"] == 3 for r in rows)
    for r in rows:
        eig = [abs(r[f"eig_{i}"]) for i in (1, 2, 3)]
        assert eig == sorted(eig, reverse=True) and r["lambda_max"] > 0
        assert r["cond_estimate"] == pytest.approx(eig[0] / eig[2], rel=1e-9)
        assert r["checkpoint"].startswith("checkpoints/")
    assert rows[-1]["loss"] < rows[0]["loss"]  # the same batch, after training


@pytest.mark.parametrize("argv,says", [
    (["hessian"], "--run DIR"),
    (["hessian", "--linear"], "--out"),
    (["hessian", "--linear", "--out", "x", "--depths", "1..a"], "--depths"),
    (["complexity", "--run", "a", "b"], "--out"),
    (["complexity", "--run", "no/such/run"], "not a training run folder"),
    (["hessian", "--model", "resnet", "--checkpoints", "no/such.pt", "--dataset", "digits", "--out", "x"],
     "no such checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
