"""`ibprobe analyze`: bring-your-own model and checkpoints, end to end, and every hostile input as one line + exit 2."""
from __future__ import annotations

import csv
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ibprobe.cli import main
from ibprobe.errors import ConfigError
from ibprobe.rundir.paths import sanitize_name
from ibprobe.rundir.sources import dataset_spec, parse_layers, parse_normalize
from tests.helpers import FIXTURES


@pytest.fixture
def byo(tmp_path, monkeypatch):
    """A user's folder: byo_nets.py importable from the cwd, tiny 3x8x8 arrays (4 levels), two TinyNet checkpoints."""
    monkeypatch.chdir(FIXTURES)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(FIXTURES))])
    from ibprobe.models import build_model

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 4, size=(24, 3, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.arange(24) % 3)
    ck = tmp_path / "ckpts"
    ck.mkdir()
    for epoch in (0, 5):
        torch.manual_seed(epoch)
        net = build_model("byo_nets:TinyNet", in_shape=(3, 8, 8), num_classes=3, width=4)
        torch.save({"model": net.state_dict(), "epoch": epoch}, ck / f"e{epoch}.pt")
    yield tmp_path
    sys.modules.pop("byo_nets", None)


def _argv(d: Path, *extra: str, ckpts: str | None = None, layers: str = "act1,act2") -> list[str]:
    return ["analyze", "--model", "byo_nets:TinyNet", "--model-arg", "width=4", "--checkpoints",
            ckpts or str(d / "ckpts" / "*.pt"), "--layers", layers, "--images", str(d / "x.npy"),
            "--labels", str(d / "y.npy"), "--levels", "4", "--out", str(d / "out"), "--quiet", *extra]


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ibprobe analyze: error: ")
    return lines[0]


def _rewrite(d: Path, x=None, y=None):
    if x is not None:
        np.save(d / "x.npy", x)
    if y is not None:
        np.save(d / "y.npy", y)


# ------------------------------------------------------------------------------------------ hostile input

def test_missing_checkpoint(byo, capsys):
    msg = _one_line_error(capsys, _argv(byo, ckpts=str(byo / "nope.pt")))
    assert "no such checkpoint" in msg and "nope.pt" in msg
    msg = _one_line_error(capsys, _argv(byo, ckpts=str(byo / "ckpts" / "*.pth")))
    assert "no checkpoint file matched" in msg
    assert not (byo / "out").exists()  # nothing written before the inputs are valid


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"\x80\x02garbage"])
def test_corrupt_checkpoint(byo, capsys, content):
    (byo / "ckpts" / "e9.pt").write_bytes(content)
    msg = _one_line_error(capsys, _argv(byo))
    assert "e9.pt" in msg and "corrupt" in msg


class _OpenPayload:
    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


class _SystemPayload:
    target = ""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
@pytest.mark.parametrize("payload", [_OpenPayload, _SystemPayload])
def test_pickle_payload_is_refused_not_executed(byo, capsys, how, payload):
    target = byo / "PWNED"
    payload.target = str(target)
    evil = byo / "ckpts" / "e7.pt"
    if how == "torch.save":
        torch.save({"model": {}, "epoch": 7, "extra": payload()}, evil)
    else:
        evil.write_bytes(pickle.dumps({"state_dict": payload()}, protocol=2))
    msg = _one_line_error(capsys, _argv(byo))
    assert not target.exists()
    assert "refused" in msg and "e7.pt" in msg and "nothing in it was executed" in msg
    assert ("system" if payload is _SystemPayload else "open") in msg


def test_unknown_layer_lists_available(byo, capsys):
    msg = _one_line_error(capsys, _argv(byo, layers="act1,conv9"))
    assert "unknown layer(s) 'conv9'" in msg
    assert "available:" in msg and "conv1" in msg and "act2" in msg and "fc" in msg


def test_unknown_layer_in_a_big_model_lists_the_top_levels_and_close_names():
    from torch import nn

    from ibprobe.capture import check_layers
    from ibprobe.errors import LayerError

    net = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.Tanh())) for _ in range(12)])
    names = [n for n, _ in net.named_modules() if n]
    assert len(names) == 60
    with pytest.raises(LayerError) as e:
        check_layers(net, ["3.1", "11.l"], spec="pkg.mod:net")
    msg = str(e.value)
    assert "unknown layer(s) '11.l'" in msg
    assert re.search(r"did you mean [^;]*\b11\.1\b", msg)
    assert "11.2.0" not in msg and "11.2," in msg  # two levels shown, deeper ones counted
    assert "(and 12 deeper ones; `ibprobe layers --model pkg.mod:net` lists all)" in msg


def test_hostile_layer_name_cannot_escape_out(byo, capsys):
    hostile = "../../escape"
    folder = sanitize_name(hostile)
    assert "/" not in folder and not folder.startswith(".")
    out = byo / "out"
    assert (out / "decoders" / folder).resolve().parent == (out / "decoders").resolve()
    for name in ("..", ".", "/etc/passwd", "a/../../b", "~"):
        f = sanitize_name(name)
        assert "/" not in f and f not in (".", "..") and (out / f).resolve().parent == out.resolve()
    msg = _one_line_error(capsys, _argv(byo, layers=hostile))
    assert "unknown layer(s) '../../escape'" in msg
    assert not (byo / "escape").exists() and not (byo.parent / "escape").exists() and not out.exists()


def test_model_checkpoint_mismatch_is_summarised(byo, capsys):
    argv = _argv(byo)
    argv[argv.index("width=4")] = "width=8"
    msg = _one_line_error(capsys, argv)
    assert "does not fit the model" in msg and "shape mismatch" in msg and "conv1.weight (4, 3, 3, 3)" in msg
    torch.save({"encoder.w": torch.zeros(2)}, byo / "ckpts" / "e9.pt")
    msg = _one_line_error(capsys, _argv(byo))
    assert "e9.pt" in msg and "6 missing key(s)" in msg and "1 unexpected key(s) (encoder.w)" in msg


@pytest.mark.parametrize(
    "x, expect",
    [
        (np.zeros((24, 3, 8, 8), np.float32), "dtype float32"),
        (np.zeros((24, 192), np.uint8), "shape (24, 192)"),
        (np.full((24, 3, 8, 8), 4, np.uint8), "outside [0, 3] for levels=4"),
        (np.zeros((24, 3, 10, 10), np.uint8), "multiples of 4"),
    ],
)
def test_bad_images(byo, capsys, x, expect):
    _rewrite(byo, x=x)
    assert expect in _one_line_error(capsys, _argv(byo))


def test_label_count_must_match(byo, capsys):
    _rewrite(byo, y=np.zeros(23, np.int64))
    msg = _one_line_error(capsys, _argv(byo))
    assert "one label per image" in msg and "(23,)" in msg


def test_bad_options(byo, capsys):
    assert "--images needs --levels" in _one_line_error(
        capsys, [a for a in _argv(byo) if a not in ("--levels", "4")])
    assert "unknown --decoder field(s) bogus" in _one_line_error(capsys, _argv(byo, "--decoder", "bogus=1"))
    assert "--normalize needs 2 numbers" in _one_line_error(capsys, _argv(byo, "--normalize", "0.5,0.2,0.1"))
    assert "could not import 'byo_netz'" in _one_line_error(
        capsys, [a.replace("byo_nets:", "byo_netz:") for a in _argv(byo)])


def test_model_that_cannot_take_the_images(byo, capsys):
    from ibprobe.models import build_model

    torch.save(build_model("byo_nets:Fixed32", in_shape=(3, 8, 8), num_classes=3).state_dict(), byo / "f.pt")
    argv = ["analyze", "--model", "byo_nets:Fixed32", "--checkpoints", str(byo / "f.pt"), "--layers", "flat",
            "--images", str(byo / "x.npy"), "--labels", str(byo / "y.npy"), "--levels", "4", "--out", str(byo / "o")]
    msg = _one_line_error(capsys, argv)
    assert "the model failed on images of shape (3, 8, 8)" in msg and "RuntimeError" in msg


def test_parsers():
    assert parse_normalize("0.5,0.25", 3) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert parse_normalize("1,2,3,4", 2) == ((1.0, 2.0), (3.0, 4.0))
    assert parse_normalize("imagenet", 3)[0] == (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError, match="STD > 0"):
        parse_normalize("0.5,0", 1)
    assert parse_layers("a, b,a") == ("a", "b")
    with pytest.raises(ConfigError, match="share the folder"):
        parse_layers("a/b,a_b")
    spec = dataset_spec(None, images="x.npy", labels="y.npy", levels=17)
    assert spec["name"] == "npy" and Path(spec["images_path"]).is_absolute() and spec["levels"] == 17
    assert dataset_spec("cifar10", data_root="d") == {"name": "cifar10", "data_root": str(Path("d").resolve())}
    with pytest.raises(ConfigError, match="not both"):
        dataset_spec("cifar10", images="x.npy", levels=4)


# ------------------------------------------------------------------------------------------ failed jobs

def test_nan_in_one_job_marks_it_failed_and_the_rest_finish(byo, capsys, monkeypatch):
    """A decoder fit that goes NaN fails its own job only; the table and the exit code say which."""
    import ibprobe.fit
    from decoders import FitResult

    def fake_fit(model, images, codes=None, cfg=None, *, eval_images=None, eval_codes=None, workdir=None, desc=""):
        if codes is not None and "act2@5" in desc:
            raise FloatingPointError("loss is nan at epoch 1")
        n = len(eval_images)
        nll = np.full(n, 100.0) - (0.0 if codes is None else 10.0 + np.arange(n) % 2)
        return FitResult(eval_nll_bits=nll, curve=[], best_epoch=1, best_val_bits_per_dim=1.0, epochs_run=1,
                         stopped_early=True, val_nll_bits=np.full(2, 100.0 if codes is None else 90.0),
                         val_idx=np.arange(2))

    monkeypatch.setattr(ibprobe.fit.decoder_fitting, "fit", fake_fit)
    rc = main(_argv(byo, "--no-figures", "--no-probe", "--reference", "plain"))
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert "1 job(s) failed" in cap.err
    with open(byo / "out" / "analysis" / "mi.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["layer"], int(r["epoch"])): r for r in rows}
    assert set(got) == {("act1", 0), ("act2", 0), ("act1", 5), ("act2", 5)}
    assert got[("act2", 5)]["status"] == "failed" and "loss is nan" in got[("act2", 5)]["error"]
    for key in [("act1", 0), ("act2", 0), ("act1", 5)]:
        assert got[key]["status"] == "ok"
        assert float(got[key]["i_xh_bits"]) == pytest.approx(10.5)
    assert "failed: JobFailed: act2@5: loss is nan" in cap.out


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture
def one_thread():
    """One torch thread: on a small shared CPU, oversubscribed threads make this test many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_torchvision_resnet18_end_to_end_and_rerun_is_idempotent(tmp_path, capsys, one_thread):
    """torchvision:resnet18 on tiny synthetic 3x32x32 data (stored HWC), two checkpoint formats, a tiny decoder."""
    import json

    import torchvision

    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    x = rng.integers(0, 16, size=(16, 32, 32, 3), dtype=np.uint8)
    x[y == 1, :16] //= 4
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2)
    torch.save(net.state_dict(), tmp_path / "r18_ep0.pt")  # raw state_dict; epoch from the name
    with torch.no_grad():
        net.fc.weight.mul_(2.0)
    torch.save({"model": {"module." + k: v for k, v in net.state_dict().items()}, "epoch": 2}, tmp_path / "ddp.pt")
    out = tmp_path / "out"
    argv = ["analyze", "--model", "torchvision:resnet18", "--checkpoints", str(tmp_path / "*.pt"),
            "--layers", "layer1", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
            "--levels", "16", "--out", str(out), "--decoder", "nr_resnet=1", "nr_filters=8", "nr_mix=2",
            "--fit", "epochs=1", "batch_size=16", "--device", "cpu", "--no-figures", "--quiet", "--no-probe"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    table = (out / "analysis" / "mi.csv").read_text()
    with open(out / "analysis" / "mi.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), r["layer"], r["status"]) for r in rows] == [(0, "layer1", "ok"), (2, "layer1", "ok")]
    for r in rows:
        i, lo, hi = float(r["i_xh_bits"]), float(r["i_xh_ci_low"]), float(r["i_xh_ci_high"])
        assert np.isfinite([i, lo, hi]).all() and lo <= i <= hi
        assert float(r["h_x_bits"]) - float(r["h_x_given_h_bits"]) == pytest.approx(i, rel=1e-4, abs=1e-3)
        assert int(r["n_test"]) == 4
    assert rows[0]["h_x_bits"] == rows[1]["h_x_bits"]  # one shared unconditional reference
    src = json.loads((out / "source.json").read_text())
    assert src["kind"] == "spec" and src["model"] == "torchvision:resnet18" and src["num_classes"] == 2
    assert "layer1" in cap.out and "wrote" in cap.out
    # a rerun finds every job done: same table, nothing refitted
    mtime = (out / "decoders" / "layer1" / "step_00000002" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0
    capsys.readouterr()
    assert (out / "analysis" / "mi.csv").read_text() == table
    assert (out / "decoders" / "layer1" / "step_00000002" / "result.json").stat().st_mtime_ns == mtime
