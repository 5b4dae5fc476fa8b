"""The benchmark runs on a tiny config and prints four positive figures, directly and via `ibprobe bench`."""
from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("decoders.pixelcnn")

from decoders.tools.bench import main  # noqa: E402

TINY = ["--image-shape", "1,4,4", "--levels", "17", "--nr-resnet", "1", "--nr-filters", "8", "--nr-mix", "2",
        "--batch", "4", "--steps", "2", "--warmup", "1", "--sample-n", "2", "--device", "cpu",
        "--threads", "1"]
FIGURES = ("train_images_per_s", "eval_images_per_s", "samples_per_s", "peak_memory_mib")


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _figures(text: str) -> dict[str, float]:
    out = {}
    for key in FIGURES:
        m = re.search(rf"^{key}: ([0-9.eE+-]+)$", text, re.M)
        assert m, f"no {key} line in:\n{text}"
        out[key] = float(m.group(1))
    return out


def test_bench_prints_four_positive_figures(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    figs = _figures(out)
    assert all(v > 0 for v in figs.values()), figs
    assert "config: image_shape=1x4x4 levels=17" in out


def test_bench_with_vector_code_quiet(capsys):
    assert main(TINY + ["--code-shape", "3", "--quiet", "--compare-cpu-cuda"]) == 0
    out = capsys.readouterr().out
    assert all(v > 0 for v in _figures(out).values())
    assert "config:" not in out


def test_bench_times_naive_and_cached_sampling_side_by_side(capsys):
    assert main(TINY + ["--sample-naive-rows", "2", "--sample-check"]) == 0
    out = capsys.readouterr().out
    figs = {}
    for key in ("naive_sample_s", "cached_sample_s", "cached_vs_naive"):
        m = re.search(rf"^{key}: ([0-9.eE+-]+)$", out, re.M)
        assert m, f"no {key} line in:\n{out}"
        figs[key] = float(m.group(1))
    assert all(v > 0 for v in figs.values())
    assert figs["cached_vs_naive"] == pytest.approx(figs["naive_sample_s"] / figs["cached_sample_s"], rel=2e-3)
    assert re.search(r"^same_integers_fraction: 1$", out, re.M)
    assert "image rows 0-1 of 4" in out


def test_bench_bad_config_is_one_line_error(capsys):
    assert main(TINY + ["--steps", "0"]) == 2
    assert "error" in capsys.readouterr().err


def test_ibprobe_bench_decoder_delegates(capsys):
    from ibprobe.cli import main as cli_main

    assert cli_main(["bench", "decoder"] + TINY + ["--sample-n", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^train_images_per_s: [0-9.]+", out, re.M)
    assert "samples_per_s" not in out
    assert cli_main(["bench", "decoder", "--help"]) == 0


@pytest.mark.parametrize("argv,needle", [(["--x"], "unrecognized arguments: --x"),
                                          (["--levels", "abc"], "argument --levels: invalid int value: 'abc'"),
                                          (["--levels", "1"], "levels must be an integer >= 2")])
def test_a_refused_flag_is_one_line_named_after_the_command(capsys, argv, needle):
    from ibprobe.cli import main as ibprobe

    assert ibprobe(["bench", "decoder", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ibprobe bench decoder: error: ") and needle in err[0], err
