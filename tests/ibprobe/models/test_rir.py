"""ResNet in ResNet: each generalized layer is Targ et al.'s Equation 1 (its own shortcut inside σ), the outer
shortcut joins the residual stream after the last σ, a block reduces to a one-stream ResNet and to a plain two-stream
CNN block, taps fire once, zero init starts the residual stream on its shortcuts, and it learns digits."""
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
from ibprobe.models import build_model
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


def _conv(block: RiRBlock, i: int, name: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    c = getattr(block, f"conv{i}_{name}")
    return F.conv2d(x, c.weight, c.bias, stride=stride if i == 1 else 1, padding=1)


def _equation_1(block: RiRBlock, r: torch.Tensor, t: torch.Tensor, stride: int) -> torch.Tensor:
    """The block written out from the module docstring: per layer r' = σ(rr(r) + tr(t) + shortcut_i(r)),
    t' = σ(rt(r) + tt(t)), σ = BN then ReLU; then relu(r_k + shortcut(r_0)) on the residual stream."""
    r0 = r
    for i in range(1, block.depth + 1):
        r, t = (F.relu(getattr(block, f"bn{i}_r")(_conv(block, i, "rr", r, stride) + _conv(block, i, "tr", t, stride)
                                                   + getattr(block, f"shortcut{i}")(r))),
                F.relu(getattr(block, f"bn{i}_t")(_conv(block, i, "rt", r, stride) + _conv(block, i, "tt", t, stride))))
    if block.depth >= 2:
        r = F.relu(r + block.shortcut(r0))
    return torch.cat([r, t], 1)


@pytest.mark.parametrize("depth,stride,r_in,batchnorm", [(1, 1, 4, True), (1, 2, 3, True), (2, 2, 3, True),
                                                         (2, 1, 4, True), (3, 1, 4, True), (2, 2, 3, False)])
def test_every_generalized_layer_is_equation_1_and_the_outer_shortcut_joins_after_it(depth, stride, r_in, batchnorm):
    torch.manual_seed(0)
    block = RiRBlock(r_in, 2, 4, 3, stride=stride, depth=depth, batchnorm=batchnorm).eval()
    _randomize_bn(block, 1)
    r, t = torch.randn(5, r_in, 6, 6), torch.rand(5, 2, 6, 6)
    out = block(torch.cat([r, t], 1))
    assert out.shape == (5, 4 + 3, 6 // stride, 6 // stride)
    assert torch.allclose(out, _equation_1(block, r, t, stride), atol=1e-5)
    projects = stride != 1 or r_in != 4  # where the shape changes, layer 1's shortcut and the outer one project
    assert isinstance(block.shortcut1, nn.Sequential) == projects
    assert all(isinstance(getattr(block, f"shortcut{i}"), nn.Identity) for i in range(2, depth + 1))
    assert (block.shortcut is None) == (depth == 1)


@pytest.mark.parametrize("depth,want", [(1, 2.0), (2, 5.0), (3, 9.0)])
def test_each_generalized_layer_adds_its_own_shortcut_before_its_batchnorm(depth, want):
    """All convolutions zero and every BatchNorm a plain x2 (gamma 2, no shift): each layer's residual stream is
    relu(2 (0 + r)) = 2 relu(r), since its shortcut is summed BEFORE its BatchNorm; the outer shortcut then adds r_0
    after the last σ. So r_out = 2 relu(r) at depth 1 (no outer shortcut), (4 + 1) relu(r) at depth 2 and
    (8 + 1) relu(r) at depth 3; the transient stream, without a shortcut, is relu(0) = 0."""
    block = RiRBlock(4, 2, 4, 3, depth=depth).eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(2.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.eps = 0.0
    r = torch.randn(3, 4, 5, 5)
    out = block(torch.cat([r, torch.rand(3, 2, 5, 5)], 1))
    assert torch.allclose(out[:, :4], want * F.relu(r), atol=1e-6)
    assert torch.equal(out[:, 4:], torch.zeros_like(out[:, 4:]))


def _one_stream(block: RiRBlock, r: torch.Tensor, stride: int) -> torch.Tensor:
    """A one-stream ResNet of one-convolution units r -> relu(bn(conv(r) + shortcut(r))), with the outer shortcut."""
    r0 = r
    for i in range(1, block.depth + 1):
        r = F.relu(getattr(block, f"bn{i}_r")(_conv(block, i, "rr", r, stride) + getattr(block, f"shortcut{i}")(r)))
    return F.relu(r + block.shortcut(r0)) if block.shortcut is not None else r


@pytest.mark.parametrize("depth,stride,r_in", [(1, 1, 4), (2, 2, 3), (3, 1, 4)])
def test_with_transient_and_cross_weights_zero_the_residual_stream_is_a_one_stream_resnet(depth, stride, r_in):
    torch.manual_seed(0)
    block = RiRBlock(r_in, 2, 4, 3, stride=stride, depth=depth).eval()
    _randomize_bn(block, 1)
    with torch.no_grad():
        for i in range(1, depth + 1):
            for name in ("tr", "rt", "tt"):
                getattr(block, f"conv{i}_{name}").weight.zero_()
    r, t = torch.rand(5, r_in, 6, 6), torch.rand(5, 2, 6, 6)
    out = block(torch.cat([r, t], 1))
    assert torch.allclose(out[:, :4], _one_stream(block, r, stride), atol=1e-6)
    assert torch.equal(out[:, :4], block(torch.cat([r, t + 1], 1))[:, :4])  # the transient stream no longer reaches it


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
def test_zero_init_starts_the_residual_stream_on_its_shortcuts(batchnorm):
    """rr and tr start at zero: each generalized layer passes a post-ReLU r through σ(r) (BatchNorm at its initial
    statistics is x / sqrt(1 + eps)), and the outer shortcut adds r again: a block starts as twice the identity on
    its residual stream, while its transient stream already computes something."""
    torch.manual_seed(0)
    m = build_model("rir", in_shape=(1, 8, 8), widths=(4, 4), strides=(1, 1), blocks=2, init="zero",
                    batchnorm=batchnorm).eval()
    with torch.no_grad():
        h = m.stem(torch.rand(2, 1, 8, 8))
        for stage in m.stages():
            for block in stage.blocks():
                out = block(h)
                assert torch.allclose(out[:, :4], 2 * h[:, :4], rtol=1e-4, atol=0)
                assert not torch.equal(out[:, 4:], h[:, 4:])
                h = out


def test_rir_learns_digits(tmp_path):
    cfg = TrainConfig(dataset="digits", model="rir", model_args={"widths": (8, 16), "transient_widths": (4, 8)},
                      epochs=6, batch_size=32, lr=0.05, checkpoint_epochs=(6,))
    run = train(cfg, tmp_path / "rir", device="cpu", progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_acc"] >= 0.95
