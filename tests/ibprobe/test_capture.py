"""Layer taps: captured == fresh forward, copies survive in-place ops, fire-once checks, hooks removed, the store."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from ibprobe.capture import ActivationStore, capture, capture_to_store, iter_capture, tappable_layers
from ibprobe.cli import main
from ibprobe.data import to_model_input
from ibprobe.errors import LayerError
from ibprobe.models import build_model


def _images(n=10, seed=0):
    return np.random.default_rng(seed).integers(0, 17, size=(n, 1, 8, 8), dtype=np.uint8)


def _net():
    torch.manual_seed(0)
    return build_model("resnet", in_shape=(1, 8, 8), widths=(4, 8))


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_capture_equals_a_fresh_forward_pass():
    model, x = _net(), _images(10)
    model.train()  # capture must switch to eval (BN running stats) and restore the flag
    acts = capture(model, x, ["layer1", "pool", "fc"], levels=17, batch_size=3)
    assert model.training and _no_hooks(model)
    model.eval()
    with torch.no_grad():
        inp = to_model_input(x, 17)
        h1 = model.layer1(model.stem(inp))
        logits = model(inp)
    assert acts["layer1"].dtype == np.float32 and acts["layer1"].shape == (10, 4, 8, 8)
    np.testing.assert_allclose(acts["layer1"], h1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["fc"], logits.numpy(), rtol=1e-5, atol=1e-6)
    assert acts["pool"].shape == (10, 8)


class InplaceAfter(nn.Module):
    """conv -> (tapped) -> in-place relu_ and in-place add: a stored view would be overwritten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        h.relu_()
        h.add_(100.0)
        return h


def test_inplace_op_after_the_tap_does_not_corrupt_it():
    torch.manual_seed(0)
    model, x = InplaceAfter(), _images(4)
    acts = capture(model, x, ["conv"], levels=17)
    with torch.no_grad():
        expected = model.conv(to_model_input(x, 17)).numpy()
    assert (expected < 0).any()  # so relu_ would have changed a view
    np.testing.assert_allclose(acts["conv"], expected, rtol=1e-6)


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.lin = nn.Linear(64, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.act(self.lin(self.act(x.flatten(1))))


def test_layer_firing_twice_or_never_is_an_error_and_hooks_are_removed():
    model, x = Reused(), _images(4)
    with pytest.raises(LayerError, match="fired 2 times"):
        capture(model, x, ["act"], levels=17)
    assert _no_hooks(model)
    with pytest.raises(LayerError, match="fired 0 times"):
        capture(model, x, ["unused"], levels=17)
    assert _no_hooks(model)
    assert capture(model, x, ["lin"], levels=17)["lin"].shape == (4, 4)


def test_unknown_layer_lists_available():
    model = _net()
    with pytest.raises(LayerError, match="layer2.0"):
        capture(model, _images(2), ["layer9"], levels=17)


def test_iter_capture_yields_batches_and_cleans_up_when_abandoned():
    model, x = _net(), _images(10)
    gen = iter_capture(model, x, ["pool"], levels=17, batch_size=4)
    first = next(gen)
    assert first["pool"].shape == (4, 8) and not _no_hooks(model)
    gen.close()
    assert _no_hooks(model)
    sizes = [b["pool"].shape[0] for b in iter_capture(model, x, ["pool"], levels=17, batch_size=4)]
    assert sizes == [4, 4, 2]


def test_tappable_layers_of_ours_and_foreign_models():
    assert tappable_layers(_net())[:2] == ["stem", "layer1.0"]
    assert tappable_layers(Reused()) == ["act", "lin", "unused"]
    model = Reused()
    assert tappable_layers(model, torch.zeros(2, 1, 8, 8)) == ["lin"]  # act fires twice, unused never
    assert _no_hooks(model)


def test_store_roundtrip_manifest_and_skip(tmp_path):
    model, x = _net(), _images(11)
    store = ActivationStore(tmp_path / "acts")
    paths = capture_to_store(model, x, ["layer1", "pool"], store, step=3, split="test", levels=17, batch_size=4,
                             checkpoint="ck.pt")
    ref = capture(model, x, ["layer1", "pool"], levels=17)
    for layer in ("layer1", "pool"):
        got = store.read(3, layer, "test")
        assert isinstance(got, np.memmap) and got.dtype == np.float16 and got.shape == ref[layer].shape
        np.testing.assert_allclose(got, ref[layer].astype(np.float16))
        assert store.has(3, layer, "test") and not store.has(3, layer, "train")
    assert paths["pool"] == tmp_path / "acts" / "step_00000003" / "pool" / "test.npy"
    man = json.loads((tmp_path / "acts" / "step_00000003" / "manifest.json").read_text())
    assert man["layer1"]["splits"]["test"] == {"shape": [11, 4, 8, 8], "dtype": "float16", "n": 11, "key": None,
                                               "checkpoint": "ck.pt", "file": "layer1/test.npy"}
    stamp = paths["pool"].stat().st_mtime_ns
    capture_to_store(model, x, ["pool"], store, step=3, split="test", levels=17)
    assert paths["pool"].stat().st_mtime_ns == stamp  # already stored: skipped
    assert not list((tmp_path / "acts").rglob("*.tmp"))
    with pytest.raises(LayerError, match="run `ibprobe capture`"):
        store.read(3, "layer2", "test")


class Huge(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = nn.Identity()

    def forward(self, x):
        return self.big(x * 1e6)


def test_store_refuses_float16_overflow_and_leaves_nothing(tmp_path):
    store = ActivationStore(tmp_path)
    with pytest.raises(LayerError, match="float16"):
        capture_to_store(Huge(), _images(4), ["big"], store, step=0, split="train", levels=17)
    assert not store.has(0, "big", "train") and not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("*.tmp"))


def test_layer_names_are_sanitised_into_one_folder(tmp_path):
    store = ActivationStore(tmp_path)
    p = store.path(1, "../../evil layer", "test")
    assert p.parent.parent == tmp_path / "step_00000001"


_PEAK = """
import resource, sys, numpy as np, torch
torch.set_num_threads(1)
from ibprobe.models import build_model
from ibprobe.capture import ActivationStore, capture_to_store
model = build_model("resnet", in_shape=(1, 8, 8), widths=(16, 8))
for n in map(int, sys.argv[2:]):
    x = np.zeros((n, 1, 8, 8), np.uint8)
    capture_to_store(model, x, ["layer1"], ActivationStore(sys.argv[1]), step=n, split="train", levels=17,
                     batch_size=200)
    del x
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)  # KiB, high-water mark so far
"""


def test_store_peak_memory_does_not_grow_with_n(tmp_path):
    """layer1 is 16x8x8 float16 = 2 KiB per image: 12,000 images = 23 MiB that must not become resident."""
    out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path), "1000", "12000"], capture_output=True,
                         text=True, check=True)
    small, large = map(int, out.stdout.split()[-2:])
    assert (tmp_path / "step_00012000" / "layer1" / "train.npy").stat().st_size > 12000 * 2048
    assert large - small < 6 * 1024, (small, large)  # far less than the 21 MiB of extra activations


def test_cli_layers_and_capture(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--model-arg", "widths=4,8", "--train", "max_train=64", "epochs=1",
                 "checkpoint_epochs=0,1", "test_fraction=0.05", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["layers", "--run", str(run)]) == 0
    names = capsys.readouterr().out.split()
    assert names[0] == "stem" and "layer2" in names and "pool" in names
    assert main(["capture", "--run", str(run), "--layers", "layer2,pool", "--epochs", "1", "--quiet"]) == 0
    store = ActivationStore(run / "activations")
    assert store.has(1, "pool", "fit") and store.has(1, "layer2", "test") and not store.has(0, "pool", "test")
    assert store.read(1, "pool", "test").shape[1:] == (8,)
    assert main(["capture", "--run", str(run), "--layers", "pool", "--steps", "0", "--quiet"]) == 0
    assert store.has(0, "pool", "test") and not store.has(0, "layer2", "test")  # 64 images, 64 a batch: step = epoch
    assert main(["capture", "--run", str(run), "--layers", "pool", "--epochs", "0.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at epoch 0.5; the checkpoints are at steps 0 (epoch 0), 1 (epoch 1)" in err
    assert main(["capture", "--run", str(run), "--layers", "nope", "--quiet"]) == 2
    assert "unknown layer" in capsys.readouterr().err
    assert main(["layers", "--model", "resnet_ae", "--dataset", "digits"]) == 0
    assert "bottleneck" in capsys.readouterr().out.split()


def test_a_store_entry_from_other_inputs_is_never_read_as_this_one(tmp_path):
    """Entries carry the digest of the images, the network and its normalisation, and the checkpoint's content:
    fill_store captures again when any of them changes, and a read under another key is refused rather than served
    stale."""
    from ibprobe.capture import codes_key, fill_store
    from ibprobe.rundir.files import file_digest
    from ibprobe.rundir.sources import ModelSource

    torch.manual_seed(0)
    model = build_model("resnet", in_shape=(1, 8, 8), widths=(4,), blocks=(1,))
    ck = tmp_path / "m.pt"
    torch.save(model.state_dict(), ck)
    source = ModelSource(kind="spec", model="resnet", model_args={"widths": (4,), "blocks": (1,)},
                         in_shape=(1, 8, 8), checkpoints=((0, str(ck)),))
    store = ActivationStore(tmp_path / "acts")
    a, b = (np.random.default_rng(s).integers(0, 17, (6, 1, 8, 8)).astype(np.uint8) for s in (1, 2))
    keys = fill_store(store, source, {"test": a}, ["layer1"], levels=17, progress=False)
    assert keys == {0: {"test": codes_key(a, source, file_digest(ck))}}
    assert store.has(0, "layer1", "test", keys[0]["test"])
    with pytest.raises(LayerError, match="captured from other images"):
        store.read(0, "layer1", "test", codes_key(b, source, file_digest(ck)))
    fill_store(store, source, {"test": b}, ["layer1"], levels=17, progress=False)
    np.testing.assert_allclose(store.read(0, "layer1", "test", codes_key(b, source, file_digest(ck))),
                               capture(model, b, ["layer1"], levels=17)["layer1"].astype(np.float16))

    # other weights under the same file name: captured again, never the old codes
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    torch.save(model.state_dict(), ck)
    key = fill_store(store, source, {"test": b}, ["layer1"], levels=17, progress=False)[0]["test"]
    np.testing.assert_allclose(store.read(0, "layer1", "test", key),
                               capture(model, b, ["layer1"], levels=17)["layer1"].astype(np.float16))
    # another normalisation: another key
    other = ModelSource(**{**source.__dict__, "normalize": ((0.5,), (0.25,))})
    assert codes_key(b, other, file_digest(ck)) != key
    # a damaged entry is captured again, not read
    store.path(0, "layer1", "test").write_bytes(b"garbage")
    assert not store.has(0, "layer1", "test", key)
    fill_store(store, source, {"test": b}, ["layer1"], levels=17, progress=False)
    assert store.has(0, "layer1", "test", key)
    (store.step_dir(0) / "manifest.json").write_text("{truncated")
    assert store.manifest(0) == {} and not store.has(0, "layer1", "test", key)
    fill_store(store, source, {"test": b}, ["layer1"], levels=17, progress=False)
    assert store.has(0, "layer1", "test", key)
