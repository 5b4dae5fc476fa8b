"""End to end on one tiny digits run: the binning and KDE baselines beside mi.csv, the KID of the decoders' samples,
the gallery's KID captions and `ibprobe plot --estimators`."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

import ibprobe.pipeline
from ibprobe.cli import main
from ibprobe.config import AnalysisConfig
from ibprobe.errors import ConfigError
from ibprobe.estimators.kid import KidConfig
from ibprobe.measure.kid import measure_kid
from ibprobe.pipeline import draw_figures, run_preset
from ibprobe.report.estimators import estimator_planes
from ibprobe.rundir.tables import BASELINES, KID, read_table
from ibprobe.sample import kid_captions
from tests import helpers as tiny_analysis

TINY = replace(tiny_analysis.TINY, init_epochs=1)  # q0 fitted for 1 epoch
LAST = tiny_analysis.TINY_LAST
PAIRS = [(0, "layer1"), (0, "pool"), (LAST, "layer1"), (LAST, "pool")]  # (step, layer)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run (baselines at 8 bins and σ² = 0.5) and its KID on 64 test images."""
    out = tmp_path_factory.mktemp("est")
    request = AnalysisConfig(jobs=1, progress=False, bins=8, kde_noise_var=0.5, reference="plain", mixture_codes=0)
    run_preset(TINY, out, request, figures=False)
    kid = measure_kid(out, KidConfig(subsets=30, samples=64, seed=1), device="cpu", progress=False)
    return out, kid


def test_baselines_csv_on_the_decoders_test_images(tiny_run):
    out, _ = tiny_run
    mi = {(r["step"], r["layer"]): r for r in read_table(out / "analysis" / "mi.csv")}
    with open(out / "analysis" / "baselines.csv", encoding="utf-8") as f:
        assert f.readline().strip().split(",") == list(BASELINES.columns)
    rows = read_table(out / "analysis" / "baselines.csv")
    assert [(r["step"], r["layer"], r["estimator"]) for r in rows] == [(s, l, est) for s, l in PAIRS
                                                                       for est in ("binning", "kde")]
    assert [r["epoch"] for r in rows] == [0.0] * 4 + [1.0] * 4
    for r in rows:
        n = mi[(r["step"], r["layer"])]["n_test"]  # the same test images as the decoder estimate
        assert r["status"] == "ok" and r["n"] == n == 80
        assert 0.0 <= r["i_yh_bits"] <= r["i_xh_bits"] + 1e-6 <= math.log2(n) + 2e-6  # CSV keeps 10 digits
        assert r["i_yh_bits"] <= math.log2(10) + 1e-6
        assert (r["bins"], r["noise_var"]) == ((8, None) if r["estimator"] == "binning" else (None, 0.5))
    sens = read_table(out / "analysis" / "binning_sensitivity.csv")
    for e, l in PAIRS:
        curve = {r["bins"]: r["i_xh_bits"] for r in sens if (r["step"], r["layer"]) == (e, l)}
        assert curve[1] == 0.0 and 8 in curve  # one bin holds everything; --bins is on the curve
        powers = [curve[b] for b in sorted(curve) if b & (b - 1) == 0]
        assert all(b >= a - 1e-12 for a, b in zip(powers, powers[1:]))  # doubling the bins refines the cells
        assert max(curve.values()) <= math.log2(80) + 1e-6


def test_kid_csv_conditional_rows_and_both_references(tiny_run):
    out, kid = tiny_run
    with open(out / "analysis" / "kid.csv", encoding="utf-8") as f:
        assert f.readline().strip().split(",") == list(KID.columns)
    rows = read_table(out / "analysis" / "kid.csv")
    assert [(r["step"], r["layer"], r["reference"]) for r in rows] == \
        [(s, l, "conditional") for s, l in PAIRS] + [(None, None, "unconditional"), (None, None, "split_half")]
    assert [r["epoch"] for r in rows] == [0.0, 0.0, 1.0, 1.0, None, None]
    assert {(r["subsets"], r["subset_size"], r["n_real"], r["n_fake"]) for r in rows} == {(30, 32, 32, 32)}
    assert {r["features"] for r in rows} == {f"run@step_{LAST:08d}:pool"}  # the last checkpoint's penultimate layer
    floor = rows[-1]
    assert floor["kid_std"] > 0 and abs(floor["kid_mean"]) < 2 * floor["kid_std"]  # same law: within 2 std of 0
    assert all(r["kid_std"] > 0 for r in rows)
    # the floor's all-data statistic is exactly 0, so its sem is the subsets' own noise; the others' is at least that
    assert floor["kid_sem"] == pytest.approx(floor["kid_std"] / math.sqrt(30), rel=1e-6)
    assert all(r["kid_sem"] >= r["kid_std"] / math.sqrt(30) * (1 - 1e-6) for r in rows)
    assert [r["kid_mean"] for r in rows] == pytest.approx([r["kid_mean"] for r in kid], rel=1e-9)
    captions = kid_captions(out)
    assert set(captions) == {(l, e) for e, l in PAIRS} | {(None, None)}
    assert captions[("pool", LAST)].startswith("KID ") and " ± " in captions[("pool", LAST)]


def test_plot_estimators_option(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["plot", str(out), "--estimators", "decoder,kde", "--layout", "overlay", "--quiet"]) == 0
    for name in ("estimators", "binning_sensitivity", "kid"):
        assert all((out / "figures" / f"{name}.{ext}").is_file() for ext in ("png", "pdf", "csv"))
    drawn = read_table(out / "figures" / "estimators.csv")
    assert {r["estimator"] for r in drawn} == {"decoder", "kde"}
    assert {(r["step"], r["layer"]) for r in drawn} == set(PAIRS)
    assert main(["plot", str(out), "--estimators", "binning,mine", "--quiet"]) == 2
    assert "unknown estimator(s) mine" in capsys.readouterr().err
    rows = read_table(out / "analysis" / "mi.csv") + read_table(out / "analysis" / "baselines.csv")
    fig = estimator_planes(rows)  # the default: every estimator, a panel each
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["decoder", "binning (8 bins)", "kde (σ²=0.5)"]


def test_a_kid_the_folder_cannot_give_is_said_and_skipped(tiny_run, tmp_path, monkeypatch, capsys):
    out, _ = tiny_run
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(ibprobe.pipeline, "plot_run", lambda run_dir: [])
    kid = KidConfig(features="torchvision:resnet18", weights=str(tmp_path / "bad.pt"))
    assert draw_figures(out, progress=False, gallery=False, device="cpu", kid=kid) == []
    assert "KID skipped" in capsys.readouterr().err


def test_estimator_flags_are_checked_up_front(tmp_path, capsys):
    with pytest.raises(ConfigError, match="bins"):
        AnalysisConfig(bins=0)
    with pytest.raises(ConfigError, match="kde-noise-var"):
        AnalysisConfig(kde_noise_var=0.0)
    argv = ["analyze", "--model", "resnet", "--checkpoints", str(tmp_path / "none.pt"), "--layers", "pool",
            "--dataset", "digits", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv + ["--kid-features", "torchvision:inception_v3"]) == 2
    assert "--kid-weights" in capsys.readouterr().err
    assert main(argv + ["--kid-features", "torchvision:inception_v3", "--kid-weights", str(tmp_path / "w.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
