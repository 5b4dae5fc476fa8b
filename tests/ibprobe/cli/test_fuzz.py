"""The fuzz suite (tests/ibprobe/cli/fuzzing.py) under an address-space limit, and the inputs it has found.

`test_fuzz_under_a_memory_limit` runs every property in one subprocess (torch is imported once) whose address
space is capped by `resource.setrlimit`, so that an input that sizes an allocation by its values fails the test
instead of exhausting the machine. Its example counts are printed at the end of the session. The profile is
pytest's `--hypothesis-profile` ("ci" by default; "long" for thousands of new examples).

The other tests pin, in this process, the inputs that once ended in a traceback or worse.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ibprobe.cli import main
from ibprobe.data import load_dataset
from tests.helpers import FIXTURES
from tests.ibprobe.cli.fuzzing import MEMORY_LIMIT

ROOT = Path(__file__).resolve().parents[3]


def _limit_memory():  # in the child, before it runs
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_fuzz_under_a_memory_limit(request, tmp_path, session_summary):
    profile = request.config.getoption("hypothesis_profile", None) or "ci"
    report = tmp_path / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", PYTHONPATH=str(ROOT),
               IBPROBE_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "tests.ibprobe.cli.fuzzing", "--profile", profile, "--workdir",
           str(tmp_path / "work"), "--report", str(report)]
    (tmp_path / "work").mkdir()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=_limit_memory,
                          timeout=None if profile != "ci" else 900)
    shown = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert report.exists(), f"the fuzz process died (exit {proc.returncode})\n{shown}"
    rep = json.loads(report.read_text())
    counts = ", ".join(f"{k} {v['examples']}" for k, v in rep["properties"].items())
    session_summary.append(f"fuzzing (hypothesis profile {profile}): {rep['examples']} examples ({counts}) in "
                           f"{rep['seconds']:.0f} s; peak memory {rep['peak_rss_mib']} MiB under an address-space "
                           f"limit of {rep['address_space_limit_mib']} MiB")
    assert proc.returncode == 0 and not rep["failed"], shown
    assert all(p["examples"] >= 5 for p in rep["properties"].values()), rep


# ------------------------------------------------------------------------------------------------ found inputs
@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """Digits arrays, the user model file and a checkpoint of it, in one folder."""
    d = tmp_path_factory.mktemp("found")
    ds = load_dataset("digits")
    np.save(d / "x.npy", ds.images[:120])
    np.save(d / "y.npy", ds.labels[:120])
    np.savez(d / "x.npz", ds.images[:120])
    np.savez(d / "xy.npz", x=ds.images[:120], y=ds.labels[:120])
    y = ds.labels[:120].copy()
    y[0] = 10**9
    np.save(d / "y_huge.npy", y)
    sys.path.insert(0, str(FIXTURES))
    from byo_nets import TinyNet
    torch.save(TinyNet(width=4, in_channels=1).state_dict(), d / "ck.pt")
    return d


def _analyze(d: Path, *extra: str) -> list[str]:
    return ["analyze", "--model", f"{FIXTURES / 'byo_nets.py'}:TinyNet", "--model-arg", "width=4",
            "--checkpoints", str(d / "ck.pt"), "--layers", "pool", "--levels", "17", "--out", str(d / "out"),
            "--backend", "none", "--no-figures", "--quiet", *extra]


def _one_line(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err[-2000:])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("extra,needles", [
    (["--images", "{d}/x.npz", "--model-arg", "num_classes=abc"], ["--model-arg num_classes", "abc"]),
    (["--images", "{d}/x.npy", "--labels", "{d}/y_huge.npy"], ["y_huge.npy", "1000000000", "0..K-1"]),
    (["--images", "{d}/xy.npz"], ["xy.npz", "2 arrays", "--images-key"]),
    (["--images", "{d}/xy.npz", "--images-key", "z"], ["--images-key z", "it holds x, y"]),
    (["--images", "{d}/x.npy", "--images-key", "x"], ["--images-key", "drop"]),
    (["--images", "{d}/x.npy", "--model-arg", "width=four"], ["--model-arg width", "integer", "four"]),
    (["--images", "{d}/x.npy", "--model-arg", "depth=3"], ["--model-arg depth", "width, num_classes, in_channels"]),
    (["--images", "{d}/x.npy", "--model-arg", "width=-1"], ["TinyNet could not be called with", "width': -1"]),
], ids=["npz-and-bad-num-classes", "a-label-of-a-billion", "npz-of-two-arrays", "npz-key-absent",
        "key-of-an-npy", "width-not-an-int", "no-such-parameter", "constructor-refuses"])
def test_found_inputs_are_one_line_and_exit_2(user_files, capsys, extra, needles):
    argv = _analyze(user_files, *[a.replace("{d}", str(user_files)) for a in extra])
    _one_line(capsys, main(argv), *needles)
    assert not (user_files / "out").exists()


def test_an_npz_is_read_like_the_npy_it_holds(user_files):
    """One array of an .npz, or the one --images-key names, is the same data as the .npy."""
    for images, key in (("x.npz", None), ("xy.npz", "x")):
        argv = _analyze(user_files, "--images", str(user_files / images), "--labels", str(user_files / "xy.npz"),
                        "--labels-key", "y", "--model-arg", "num_classes=10", "--out", str(user_files / f"out_{images}"))
        argv += ["--images-key", key] if key else []
        assert main(argv) == 0
        spec = json.loads((user_files / f"out_{images}" / "analysis.json").read_text())["dataset"]
        assert spec.get("images_key") == key and spec["labels_key"] == "y"
        x = load_dataset(**spec).images
        assert np.array_equal(x, load_dataset("npy", images_path=user_files / "x.npy", levels=17).images)
