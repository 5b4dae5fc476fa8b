"""Norm-based complexity: operator norms against explicit matrices, BatchNorm folding, residual units, and
on digits: random labels need more complexity than true ones at equal training accuracy; weight decay shrinks norms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ibprobe.data import load_dataset, to_model_input
from ibprobe.lenses.complexity import (complexity_summary, conv_spectral_norm, layer_norms, model_complexity,
                                       operator_l21)
from ibprobe.models import build_model


def _matrix(fn, in_shape):
    """The explicit matrix of a linear map on inputs of in_shape, one column per basis vector."""
    n = int(np.prod(in_shape))
    cols = [fn(torch.eye(n, dtype=torch.float64)[i].view(1, *in_shape)).reshape(-1) for i in range(n)]
    return torch.stack(cols, 1)  # (out, in)


@pytest.mark.parametrize("stride,padding,transposed", [(1, 1, False), (2, 1, False), (2, 0, False), (2, 1, True)])
def test_conv_operator_norms_equal_those_of_the_explicit_matrix(stride, padding, transposed):
    g = torch.Generator().manual_seed(0)
    shape = (3, 5, 5)
    if transposed:
        w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
        fn = lambda x: F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=1)  # noqa: E731
        kw = dict(output_padding=1)
    else:
        w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
        fn = lambda x: F.conv2d(x, w, stride=stride, padding=padding)  # noqa: E731
        kw = {}
    a = _matrix(fn, shape)
    sigma = conv_spectral_norm(w, shape, transposed=transposed, stride=stride, padding=padding, tol=1e-13,
                               iters=20000, **kw)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(a, ord=2)), rel=1e-6)
    l21, fro = operator_l21(w, shape, transposed=transposed, stride=stride, padding=padding, **kw)
    assert l21 == pytest.approx(float(a.norm(dim=1).sum()), rel=1e-10)  # rows = output units
    assert fro == pytest.approx(float(a.norm()), rel=1e-10)
    # the reshaped kernel is another matrix: its spectral norm is not the operator's
    assert abs(float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)) - sigma) > 1e-3


def test_batchnorm_is_folded_into_the_conv_before_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        net[1].running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
        net[1].weight.copy_(torch.tensor([1.0, -3.0, 0.5]))
    rows = layer_norms(net, (2, 4, 4), iters=2000)
    assert [r["layer"] for r in rows] == ["0", "4"] and rows[0]["bn_folded"] and not rows[1]["bn_folded"]
    eval_map = lambda x: net[1].eval()(net[0](x)) - net[1].eval()(net[0](torch.zeros_like(x)))  # noqa: E731
    with torch.no_grad():
        a = _matrix(lambda x: eval_map(x.float()).double(), (2, 4, 4))
    assert rows[0]["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(a, ord=2)), rel=1e-4)
    assert rows[0]["frobenius_param"] == pytest.approx(float(net[0].weight.detach().norm()), rel=1e-6)
    assert rows[1]["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(net[4].weight.detach().double(), ord=2)))
    # a chain: the residual complexity is Bartlett's spectral complexity
    s = complexity_summary(rows)
    sp = [r["spectral"] for r in rows]
    b = [r["l21"] for r in rows]
    want = sp[0] * sp[1] * sum((bb / ss) ** (2 / 3) for bb, ss in zip(b, sp)) ** 1.5
    assert s["bartlett"] == pytest.approx(want) and s["residual_complexity"] == pytest.approx(want)


def test_residual_units_count_identity_shortcuts_as_one():
    torch.manual_seed(0)
    m = build_model("resnet", in_shape=(1, 8, 8), num_classes=3, widths=(4, 6), blocks=(2, 1), init="zero")
    rows = layer_norms(m)
    roles = {r["layer"]: (r["role"], r["unit"]) for r in rows}
    assert roles["stem.0"] == ("main", "") and roles["fc"] == ("main", "")
    assert roles["layer1.1.conv2"] == ("branch", "layer1.1")
    assert roles["layer2.0.shortcut.0"] == ("shortcut", "layer2.0")
    assert not any(r["layer"].startswith("layer1.0.shortcut") for r in rows)  # identity: no weights, no row
    # zero init: every branch's last BN gamma is 0, so each branch is the zero map and adds nothing
    assert rows[[r["layer"] for r in rows].index("layer1.0.conv2")]["spectral"] == 0.0
    s = complexity_summary(rows)
    by = {r["layer"]: r["spectral"] for r in rows}
    assert s["n_units"] == 3
    assert s["lipschitz_residual"] == pytest.approx(by["stem.0"] * by["layer2.0.shortcut.0"] * by["fc"])
    assert s["spectral_product"] == 0.0 and math.isfinite(s["residual_complexity"])


def _digits(n: int, seed: int = 0):
    ds = load_dataset("digits")
    x, y = ds.split("train")
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return to_model_input(x[idx], ds.levels), torch.as_tensor(y[idx])


def _fit(model, x, y, *, target_acc=1.0, weight_decay=0.0, max_epochs=300, seed=0):
    """Adam minibatch training until training accuracy (eval mode) reaches target_acc; returns epochs used."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    for epoch in range(1, max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            if (model(x).argmax(1) == y).float().mean() >= target_acc:
                return epoch
    return max_epochs


SMALL = dict(in_shape=(1, 8, 8), num_classes=10, widths=(8, 8, 8), blocks=(1, 1, 1))


def test_random_labels_need_more_complexity_at_equal_training_accuracy():
    x, y = _digits(300)
    y_rand = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    out = {}
    for name, labels in (("true", y), ("random", y_rand)):
        torch.manual_seed(0)
        model = build_model("resnet", **SMALL)
        epochs = _fit(model, x, labels, target_acc=0.95)
        _, out[name] = model_complexity(model, x, labels)
        out[name]["epochs"] = epochs
    assert out["random"]["epochs"] > out["true"]["epochs"]
    for key in ("bartlett_margin", "residual_margin", "residual_complexity", "lipschitz_residual"):
        assert out["random"][key] > out["true"][key], key


def test_weight_decay_gives_smaller_norms():
    x, y = _digits(300)
    out = {}
    for wd in (0.0, 0.3):  # no BatchNorm: the weights' scale is the function's, not a free parameter
        torch.manual_seed(0)
        model = build_model("resnet", batchnorm=False, **SMALL)
        _fit(model, x, y, weight_decay=wd, max_epochs=15, target_acc=2.0)  # the same 15 epochs for both
        with torch.no_grad():
            assert (model(x).argmax(1) == y).float().mean() >= 0.95
        _, out[wd] = model_complexity(model, x, y)
    for key in ("param_norm_sq", "sum_frobenius_sq", "sum_l21", "lipschitz_residual", "bartlett",
                "residual_complexity"):
        assert out[0.3][key] < 0.9 * out[0.0][key], key


def test_rir_layers_are_one_operator_on_both_streams():
    torch.manual_seed(0)
    m = build_model("rir", in_shape=(1, 6, 6), num_classes=3, widths=(3, 4), transient_widths=(2, 2),
                    blocks=(1, 1)).eval()
    block = getattr(m.layer2, "0")
    with torch.no_grad():
        for bn in (block.bn1_r, block.bn1_t, block.shortcut1[1]):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 2.0)
    rows = {r["layer"]: r for r in layer_norms(m, iters=5000)}
    assert rows["layer2.0.conv1"]["role"] == "branch" and rows["layer2.0.shortcut.0"]["role"] == "shortcut"
    assert rows["layer2.0.conv1"]["in_shape"] == "5x6x6" and rows["layer2.0.conv2"]["in_shape"] == "6x3x3"
    assert not any(name.endswith("_rr") or ".shortcut1" in name for name in rows)  # one operator per layer

    def layer1(blk, h):  # a block's first generalized layer before its ReLUs, less its value at 0 (its linear part)
        def pre(h):  # the four convs and the layer's own shortcut (identity or projection), then the BNs
            r, t = h.split([3, 2], 1)
            return torch.cat([blk.bn1_r(blk.conv1_rr(r) + blk.conv1_tr(t) + blk.shortcut1(r)),
                              blk.bn1_t(blk.conv1_rt(r) + blk.conv1_tt(t))], 1)
        return pre(h) - pre(torch.zeros_like(h))

    for name, blk in (("layer2.0", block), ("layer1.0", getattr(m.layer1, "0"))):  # a projection, the identity
        with torch.no_grad():
            a = _matrix(lambda h: layer1(blk, h.float()).double(), (5, 6, 6))
        assert rows[f"{name}.conv1"]["spectral"] == pytest.approx(float(torch.linalg.matrix_norm(a, ord=2)),
                                                                  rel=1e-4), name
    assert complexity_summary(list(rows.values()))["n_units"] == 2
