"""ResNet classifier and autoencoder: shapes, tap names, shortcut depth, inits, identity blocks, registry errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ibprobe.errors import ConfigError
from ibprobe.models import MODEL_NAMES, BasicBlock, build_model

TINY = dict(widths=(4, 8), blocks=1)


def test_registry_names_and_shapes():
    assert set(MODEL_NAMES) >= {"resnet", "resnet_ae"}
    x = torch.rand(2, 3, 8, 8)
    clf = build_model("resnet", in_shape=(3, 8, 8), num_classes=5, **TINY)
    assert clf(x).shape == (2, 5)
    ae = build_model("resnet_ae", in_shape=(3, 8, 8), **TINY)
    y = ae(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert clf.ibprobe_build == {"model": "resnet", "model_args": {"widths": [4, 8], "blocks": 1},
                                 "in_shape": [3, 8, 8], "num_classes": 5}


def test_registry_errors_list_the_options():
    with pytest.raises(ConfigError, match="resnet_ae"):
        build_model("nope", in_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="shortcut_depth"):
        build_model("resnet", in_shape=(1, 8, 8), depth=3)
    with pytest.raises(ConfigError, match="shortcut_depth must be"):
        build_model("resnet", in_shape=(1, 8, 8), shortcut_depth=4)
    with pytest.raises(ConfigError, match="init must be"):
        build_model("resnet", in_shape=(1, 8, 8), init="he")
    with pytest.raises(ConfigError, match="one entry per stage"):
        build_model("resnet", in_shape=(1, 8, 8), widths=(4, 8), strides=(1, 2, 2))


def test_tap_names_are_module_paths_in_forward_order():
    m = build_model("resnet", in_shape=(1, 8, 8), widths=(4, 8, 8), blocks=(1, 2, 1))
    names = m.tap_names()
    modules = dict(m.named_modules())
    assert all(n in modules for n in names)
    for n in ["stem", "layer1", "layer1.0", "layer2.1", "layer3", "pool"]:
        assert n in names
    assert names.index("stem") < names.index("layer1") < names.index("layer2.0") < names.index("pool")
    ae = build_model("resnet_ae", in_shape=(1, 8, 8), **TINY)
    for n in ["encoder.layer1", "encoder.layer2", "bottleneck", "decoder.layer1", "decoder.layer2"]:
        assert n in ae.tap_names() and n in dict(ae.named_modules())


def test_no_inplace_activation_and_no_module_reused():
    m = build_model("resnet", in_shape=(1, 8, 8), widths=(4, 8), blocks=2)
    for mod in m.modules():
        if hasattr(mod, "inplace"):
            assert mod.inplace is False
    calls: dict[str, int] = {}
    handles = [mod.register_forward_hook(lambda mod, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
               for name, mod in m.named_modules() if name]
    m(torch.rand(2, 1, 8, 8))
    for h in handles:
        h.remove()
    assert calls and set(calls.values()) == {1}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shortcut_depth_is_the_number_of_convs_per_branch(depth):
    m = build_model("resnet", in_shape=(1, 8, 8), shortcut_depth=depth, **TINY)
    block = m.layer1[0]
    assert isinstance(block, BasicBlock) and block.depth == depth
    n_conv = sum(isinstance(c, nn.Conv2d) for n, c in block.named_children() if n.startswith("conv"))
    assert n_conv == depth
    d1 = build_model("resnet", in_shape=(1, 8, 8), shortcut_depth=1, **TINY)
    assert sum(p.numel() for p in m.parameters()) > sum(p.numel() for p in d1.parameters()) or depth == 1


@pytest.mark.parametrize("depth,batchnorm", [(1, True), (2, True), (3, True), (2, False)])
def test_zero_init_blocks_are_identity(depth, batchnorm):
    torch.manual_seed(0)
    m = build_model("resnet", in_shape=(1, 8, 8), widths=(6, 6, 6), strides=(1, 1, 1), blocks=2,
                    shortcut_depth=depth, init="zero", batchnorm=batchnorm)
    x = torch.rand(4, 1, 8, 8)
    for mode in (m.train, m.eval):
        mode()
        with torch.no_grad():
            h = m.stem(x)  # non-negative (post-ReLU)
            for block in [b for stage in m.stages() for b in stage]:
                assert torch.equal(block(h), h)
    # kaiming init is not the identity
    k = build_model("resnet", in_shape=(1, 8, 8), widths=(6, 6, 6), strides=(1, 1, 1), shortcut_depth=depth,
                    init="kaiming", batchnorm=batchnorm).eval()
    with torch.no_grad():
        h = k.stem(x)
        assert not torch.allclose(k.layer1[0](h), h)


def test_zero_init_still_learns():
    """Zeroing only the last BN gamma (not also the conv) keeps gradients flowing into the branch."""
    torch.manual_seed(0)
    m = build_model("resnet", in_shape=(1, 8, 8), init="zero", **TINY)
    loss = m(torch.rand(4, 1, 8, 8)).logsumexp(1).mean()
    loss.backward()
    assert m.layer1[0].bn2.weight.grad.abs().sum() > 0


def test_inits_differ():
    stats = {}
    for init in ["kaiming", "xavier", "orthogonal", "zero"]:
        torch.manual_seed(0)
        m = build_model("resnet", in_shape=(1, 8, 8), init=init, **TINY)
        stats[init] = m.layer2[0].conv1.weight.detach().clone()  # fan_in != fan_out, so kaiming != xavier
    inits = list(stats)
    for i in range(len(inits)):
        for j in range(i + 1, len(inits)):
            assert not torch.allclose(stats[inits[i]], stats[inits[j]])
    w = stats["orthogonal"].flatten(1)  # (out, in*k*k) with out <= in*k*k: orthogonal rows
    gram = w @ w.T
    assert torch.allclose(gram, gram[0, 0] * torch.eye(len(w)), atol=1e-4)


def test_same_seed_same_weights():
    def make():
        torch.manual_seed(7)
        return build_model("resnet", in_shape=(1, 8, 8), **TINY).state_dict()

    a, b = make(), make()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_four_stage_default_strides_and_autoencoder_mirror():
    m = build_model("resnet", in_shape=(3, 32, 32), widths=(4, 4, 8, 8), blocks=(1, 1, 1, 1))
    assert m.cfg.strides == (1, 2, 2, 2)
    ae = build_model("resnet_ae", in_shape=(1, 8, 8), widths=(4, 8, 8), bottleneck_channels=3)
    z = ae.encode(torch.rand(2, 1, 8, 8))
    assert z.shape == (2, 3, 2, 2)
    with pytest.raises(ConfigError, match="divisible"):
        build_model("resnet_ae", in_shape=(1, 6, 6), widths=(4, 8, 8))


@pytest.mark.parametrize("name", ["resnet", "resnet_ae", "rir"])
def test_chain_names_are_taps_in_forward_order_without_branches(name):
    """The data-processing self-check walks these: each must be a tap, in the taps' order, off every branch."""
    model = build_model(name, in_shape=(1, 8, 8), widths=(4, 8))
    taps, chain = model.tap_names(), model.chain_names()
    assert chain == [t for t in taps if t in set(chain)] and len(chain) >= 4
    assert not any(t.rsplit(".", 1)[-1].startswith("relu") or t.endswith(("residual", "transient")) for t in chain)
