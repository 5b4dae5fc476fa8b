"""ResNet in ResNet: a block reduces to a ResNet block and to a plain two-stream CNN block, taps fire once,
zero init is the identity on the residual stream, and it learns digits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ibprobe.capture import capture
from ibprobe.config import TrainConfig
from ibprobe.errors import ConfigError
from ibprobe.models import BasicBlock, build_model
from ibprobe.models.rir import RiRBlock
from ibprobe.train import train


def _randomize_bn(block: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("depth,stride,r_in,batchnorm", [(1, 1, 4, True), (2, 2, 3, True), (3, 1, 4, True),
                                                         (2, 1, 4, False)])
def test_with_transient_and_cross_weights_zero_a_block_is_a_resnet_block(depth, stride, r_in, batchnorm):
    torch.manual_seed(0)
    rir = RiRBlock(r_in, 2, 4, 3, stride=stride, depth=depth, batchnorm=batchnorm)
    res = BasicBlock(r_in, 4, stride=stride, depth=depth, batchnorm=batchnorm)
    _randomize_bn(rir, 1)
    with torch.no_grad():
        for i in range(1, depth + 1):
            for name in ("tr", "rt", "tt"):
                getattr(rir, f"conv{i}_{name}").weight.zero_()
            getattr(res, f"conv{i}").load_state_dict(getattr(rir, f"conv{i}_rr").state_dict())
            getattr(res, f"bn{i}").load_state_dict(getattr(rir, f"bn{i}_r").state_dict())
        res.shortcut.load_state_dict(rir.shortcut.state_dict())
    r, t = torch.rand(5, r_in, 6, 6), torch.rand(5, 2, 6, 6)
    for mode in ("eval", "train"):  # train last: it moves both blocks' running statistics alike
        rir.train(mode == "train")
        res.train(mode == "train")
        out = rir(torch.cat([r, t], 1))
        assert out.shape == (5, 4 + 3, 6 // stride, 6 // stride)
        assert torch.allclose(out[:, :4], res(r), atol=1e-6), mode
        if mode == "eval":  # the transient stream no longer reaches the residual one
            assert torch.equal(out[:, :4], rir(torch.cat([r, t + 1], 1))[:, :4])


def _two_stream_cnn(block: RiRBlock, r: torch.Tensor, t: torch.Tensor, stride: int) -> torch.Tensor:
    """The plain two-stream CNN, written out: per layer, both streams read both streams; no shortcut."""
    for i in range(1, block.depth + 1):
        s = stride if i == 1 else 1

        def conv(name, x):
            c = getattr(block, f"conv{i}_{name}")
            return F.conv2d(x, c.weight, c.bias, stride=s, padding=1)

        r, t = (F.relu(getattr(block, f"bn{i}_r")(conv("rr", r) + conv("tr", t))),
                F.relu(getattr(block, f"bn{i}_t")(conv("rt", r) + conv("tt", t))))
    return torch.cat([r, t], 1)


@pytest.mark.parametrize("depth,stride", [(1, 1), (2, 2), (3, 1)])
def test_without_the_shortcut_a_block_is_a_plain_two_stream_cnn_block(depth, stride):
    torch.manual_seed(0)
    block = RiRBlock(4, 2, 4, 3, stride=stride, depth=depth, shortcut=False).eval()
    _randomize_bn(block, 2)
    r, t = torch.rand(3, 4, 6, 6), torch.rand(3, 2, 6, 6)
    want = _two_stream_cnn(block, r, t, stride)
    assert torch.allclose(block(torch.cat([r, t], 1)), want, atol=1e-6)
    torch.manual_seed(0)
    with_sc = RiRBlock(4, 2, 4, 3, stride=stride, depth=depth).eval()
    _randomize_bn(with_sc, 2)
    assert not torch.allclose(with_sc(torch.cat([r, t], 1)), want, atol=1e-3)  # the shortcut matters


def test_taps_fire_once_and_split_the_streams():
    m = build_model("rir", in_shape=(1, 8, 8), num_classes=4, widths=(4, 6), transient_widths=(2, 3), blocks=(2, 1))
    names = m.tap_names()
    for n in ["stem", "layer1.0", "layer1.1", "layer1.residual", "layer1.transient", "layer1", "layer2", "pool"]:
        assert n in names
    assert names.index("layer1.1") < names.index("layer1.residual") < names.index("layer2.0")
    for mod in m.modules():
        assert getattr(mod, "inplace", False) is False
    images = np.random.default_rng(0).integers(0, 17, size=(3, 1, 8, 8)).astype(np.uint8)
    acts = capture(m, images, names, levels=17)  # raises if a tap fires zero or several times
    assert acts["layer1.residual"].shape == (3, 4, 8, 8) and acts["layer1.transient"].shape == (3, 2, 8, 8)
    assert np.array_equal(np.concatenate([acts["layer2.residual"], acts["layer2.transient"]], 1), acts["layer2"])
    assert acts["layer2"].shape == (3, 9, 4, 4) and acts["fc"].shape == (3, 4)
    with pytest.raises(ConfigError, match="one entry per stage"):
        build_model("rir", in_shape=(1, 8, 8), widths=(4, 6), transient_widths=(2, 3, 4))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_zero_init_blocks_are_the_identity_on_the_residual_stream(batchnorm):
    torch.manual_seed(0)
    m = build_model("rir", in_shape=(1, 8, 8), widths=(4, 4), strides=(1, 1), blocks=2, init="zero",
                    batchnorm=batchnorm).eval()
    with torch.no_grad():
        h = m.stem(torch.rand(2, 1, 8, 8))
        for stage in m.stages():
            for block in stage.blocks():
                out = block(h)
                assert torch.equal(out[:, :4], h[:, :4]) and not torch.equal(out[:, 4:], h[:, 4:])
                h = out


def test_rir_learns_digits(tmp_path):
    cfg = TrainConfig(dataset="digits", model="rir", model_args={"widths": (8, 16), "transient_widths": (4, 8)},
                      epochs=6, batch_size=32, lr=0.05, checkpoint_epochs=(6,))
    run = train(cfg, tmp_path / "rir", device="cpu", progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_acc"] >= 0.95
