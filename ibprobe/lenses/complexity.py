"""Norm-based complexity of a network: per-layer operator norms and the capacity terms of two margin bounds.

Bartlett, Foster & Telgarsky ("Spectrally-normalized margin bounds for neural networks", 2017) bound a chain of
weight layers A_1..A_L by its spectral complexity
    R = (prod_i s_i) * (sum_i (b_i / s_i)^(2/3))^(3/2),   s_i = ||A_i||_2 (spectral), b_i = ||A_i^T||_{2,1},
with 1-Lipschitz activations and reference matrices 0; the bound scales as R * rms input norm / (margin * sqrt(n)).
He, Liu & Tao ("Why ResNet Works? Residuals Generalize", 2019) carry the same covering argument through residual
units: an identity shortcut has no weights, so it adds nothing to the covering number, and a unit
x -> x + branch(x) only multiplies the Lipschitz constant of the path by (1 + prod of its branch's s_i).
We read their complexity term as Bartlett's with each layer's coefficient being the Lipschitz bound of the
rest of the network around it:
    R_res = (sum_j (c_j * b_j)^(2/3))^(3/2),
    c_j = L / s_j on the main path,  c_j = (L / L_u) * prod_{i in u, i != j} s_i
for a layer j in the branch of unit u, where L_u = s_shortcut + prod_{i in branch u} s_i (s_shortcut = 1 for an
identity shortcut, the projection's norm otherwise) and L = prod_{main path} s_i * prod_units L_u. On a plain
chain R_res equals Bartlett's R. `bartlett` below is Bartlett's R over every weight layer as if all were in
series (branches and projections included, identities left out).

What is computed, per weight layer (Conv2d, ConvTranspose2d, Linear):
  - spectral: the largest singular value of the layer's LINEAR OPERATOR on the input size it sees in the
    model, by power iteration with conv2d / conv_transpose2d (the adjoint), the layer's stride, padding,
    dilation and groups; not of the reshaped kernel (that one is `spectral_kernel`, for reference);
  - l21: ||A^T||_{2,1} of that operator, i.e. the sum over output units (channel x position) of the l2 norm
    of the weights feeding it, exactly (border positions see fewer taps); `l21_kernel` is the same for the
    kernel reshaped to (out, in*k*k), one row per output channel;
  - frobenius: of the weight tensor; frobenius_param: of the raw parameter (what weight decay shrinks).
A BatchNorm2d applied directly to a conv's output is folded into it (eval mode: per-channel scale
gamma / sqrt(running_var + eps)), so the norms are those of the map conv+BN actually computes; a raw conv
before BN is scale-free and its norm alone says nothing. Parameter-free layers (ReLU, pooling, upsampling,
sigmoid) count as 1-Lipschitz (nearest upsampling by s in fact scales l2 norms by s: the autoencoder's
products leave that constant factor out). Residual units are recognised for our BasicBlock (ResNet, ResNet autoencoder)
and RiRBlock. In an RiRBlock each generalized residual layer is ONE operator on the concatenated streams (row
`layerS.B.conv{i}`): its four convolutions and its own residual-stream shortcut, kernel [[rr + shortcut_i, tr],
[rt, tt]] with the shortcut (identity, or the 1x1 projection with its BatchNorm) at the centre tap, and the
BatchNorm that follows the sum folded into its rows; the layer's shortcut is thus part of the operator (its norms
count it), and the block's outer shortcut makes the block a unit. Any other model is treated as a chain of its
weight layers in forward order.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ibprobe.errors import ConfigError
from ibprobe.models.resnet import BasicBlock
from ibprobe.models.rir import RiRBlock

WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


# ------------------------------------------------------------------------------------ one operator's norms
def _conv_geometry(m: nn.Module) -> dict:
    geo = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
    if isinstance(m, nn.ConvTranspose2d):
        geo["output_padding"] = m.output_padding
    return geo


def _forward(weight: torch.Tensor, x: torch.Tensor, transposed: bool, geo: dict) -> torch.Tensor:
    """The layer's map: conv2d, or conv_transpose2d with its own output_padding."""
    if not transposed:
        return F.conv2d(x, weight, None, geo["stride"], geo["padding"], geo["dilation"], geo["groups"])
    return F.conv_transpose2d(x, weight, None, geo["stride"], geo["padding"], geo.get("output_padding", 0),
                              geo["groups"], geo["dilation"])


def _conv_t(x: torch.Tensor, weight: torch.Tensor, geo: dict, out_hw) -> torch.Tensor:
    """conv_transpose2d whose output has spatial size out_hw (output_padding chosen to reach it): the adjoint
    of conv2d on inputs of that size."""
    y = F.conv_transpose2d(x, weight, None, geo["stride"], geo["padding"], 0, geo["groups"], geo["dilation"])
    if tuple(y.shape[-2:]) == tuple(out_hw):
        return y
    pad = tuple(int(o - s) for o, s in zip(out_hw, y.shape[-2:]))
    return F.conv_transpose2d(x, weight, None, geo["stride"], geo["padding"], pad, geo["groups"], geo["dilation"])


def conv_spectral_norm(weight: torch.Tensor, in_shape: Sequence[int], *, transposed: bool = False,
                       stride=1, padding=0, dilation=1, groups: int = 1, output_padding=0, iters: int = 1000,
                       tol: float = 1e-7, seed: int = 0) -> float:
    """Largest singular value of the convolution x -> conv2d(x, weight) (or conv_transpose2d) on inputs of shape
    in_shape = (C, H, W), by power iteration on A^T A with the transposed convolution as A^T.

    Stops when the estimate changes by less than tol relative, or after `iters` steps; the estimate rises
    towards the true value (error shrinking like (s_2 / s_1)^(2 * steps)), so a cut-off one is a slight underestimate.
    """
    geo = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
           "output_padding": output_padding}
    w = weight.detach().double()
    in_hw = tuple(int(s) for s in in_shape[-2:])
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(1, *[int(s) for s in in_shape], generator=g, dtype=torch.float64).to(w.device)
    sigma = 0.0
    for _ in range(int(iters)):
        v = v / v.norm()
        u = _forward(w, v, transposed, geo)  # (1, C_out, H', W')
        new = float(u.norm())
        if new == 0.0:
            return 0.0
        # the adjoint of conv2d is conv_transpose2d with the same weight, and vice versa
        v = _conv_t(u, w, geo, in_hw) if not transposed else F.conv2d(u, w, None, stride, padding, dilation, groups)
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


def operator_l21(weight: torch.Tensor, in_shape: Sequence[int], *, transposed: bool = False, stride=1, padding=0,
                 dilation=1, groups: int = 1, output_padding=0) -> tuple[float, float]:
    """(||A^T||_{2,1}, ||A||_F) of the convolution operator A on inputs (C, H, W), exactly: the squared weights
    convolved over an all-ones input give each output unit's squared row norm, borders included."""
    geo = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
           "output_padding": output_padding}
    w2 = weight.detach().double() ** 2
    ones = torch.ones(1, *[int(s) for s in in_shape], dtype=torch.float64, device=w2.device)
    rows = _forward(w2, ones, transposed, geo)  # (1, C_out, H', W'): sum of squares per operator row
    return float(rows.clamp_min(0).sqrt().sum()), float(rows.sum().sqrt())


def _kernel_matrix(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    w = weight.detach().double()
    if transposed:
        w = w.transpose(0, 1)  # (C_out / groups, C_in, k, k) -> per output channel rows
    return w.reshape(w.shape[0], -1)  # (out, in * k * k)


# ------------------------------------------------------------------------------------- model structure
def _trace(model: nn.Module, in_shape: Sequence[int]) -> tuple[list[tuple[str, nn.Module, tuple]], dict]:
    """Weight layers in forward order with their input shapes, and {conv name: BatchNorm2d fed by its output}."""
    order: list[tuple[str, nn.Module, tuple]] = []
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []
    bn_of: dict[str, nn.Module] = {}
    handles = []

    def weight_hook(name):
        def hook(m, inp, out):
            if name not in [n for n, _, _ in order]:
                order.append((name, m, tuple(inp[0].shape[1:])))
            produced[id(out)] = name
            keep.append(out)
        return hook

    def bn_hook(m, inp, _out):
        src = produced.get(id(inp[0]))
        if src is not None and src not in bn_of:
            bn_of[src] = m

    was = model.training
    try:
        for name, m in model.named_modules():
            if isinstance(m, WEIGHT_LAYERS):
                handles.append(m.register_forward_hook(weight_hook(name)))
            elif isinstance(m, nn.BatchNorm2d):
                handles.append(m.register_forward_hook(bn_hook))
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *[int(s) for s in in_shape], dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return order, bn_of


def _units(model: nn.Module) -> dict[str, tuple[str, str]]:
    """{weight layer name: (role, unit)} for the layers inside our residual blocks; role branch or shortcut."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (BasicBlock, RiRBlock)):
            if m.shortcut is None:  # an RiR block without an outer shortcut: its layers are on the main path
                continue
            for i in range(1, m.depth + 1):
                out[f"{name}.conv{i}"] = ("branch", name)
            for sub, s in m.shortcut.named_modules():
                if isinstance(s, WEIGHT_LAYERS):
                    out[f"{name}.shortcut.{sub}"] = ("shortcut", name)
    return out


def _bn_scale(bn: nn.Module, n: int) -> torch.Tensor:
    """Per-channel factor of an eval-mode BatchNorm2d (ones for an Identity): gamma / sqrt(running_var + eps)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return torch.ones(n, dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones(n, dtype=torch.float64)
    return gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)  # (C_out,)


def _effective_weight(m: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    w = m.weight.detach().double()
    if bn is None:
        return w
    scale = _bn_scale(bn, bn.num_features).to(w.device)
    if isinstance(m, nn.ConvTranspose2d):  # weight (C_in, C_out / groups, k, k), output channels in dim 1 per group
        c_in, c_g = w.shape[:2]
        wg = w.view(m.groups, c_in // m.groups, c_g, *w.shape[2:]) * scale.view(m.groups, 1, c_g, 1, 1)
        return wg.reshape(w.shape)
    return w * scale.view(-1, *([1] * (w.ndim - 1)))


def _rir_layer(block: RiRBlock, i: int, hw: tuple, name: str) -> dict:
    """Generalized residual layer i of an RiR block as ONE conv on the concatenated streams [r, t]: kernel
    [[rr + shortcut_i, tr], [rt, tt]] (the layer's shortcut at the 3x3 kernel's centre tap, which reads what a
    strided 1x1 conv reads), with bn{i}_r / bn{i}_t folded into its residual / transient output rows."""
    c = {k: getattr(block, f"conv{i}_{k}") for k in ("rr", "tr", "rt", "tt")}
    rr = c["rr"].weight.detach().double().clone()  # (r_out, r_in, 3, 3)
    sc = block.layer_shortcut(i)
    if isinstance(sc, nn.Identity):
        rr[:, :, 1, 1] += torch.eye(rr.shape[0], rr.shape[1], dtype=rr.dtype, device=rr.device)
    elif sc is not None:  # the projection: a 1x1 conv and the norm that follows it
        proj, norm = sc[0], sc[1]
        rr[:, :, 1, 1] += _effective_weight(proj, norm if isinstance(norm, nn.BatchNorm2d) else None)[:, :, 0, 0]
    w = torch.cat([torch.cat([rr, c["tr"].weight.detach().double()], 1),
                   torch.cat([c["rt"].weight, c["tt"].weight], 1).detach().double()], 0)  # (r+t, r_in+t_in, k, k)
    bn_r, bn_t = getattr(block, f"bn{i}_r"), getattr(block, f"bn{i}_t")
    scale = torch.cat([_bn_scale(bn_r, block.r_out), _bn_scale(bn_t, block.t_out)]).to(w.device)
    c_in = block.r_in + block.t_in if i == 1 else block.r_out + block.t_out
    params = list(c.values()) + ([sc[0]] if isinstance(sc, nn.Sequential) else [])
    return {"name": name, "module": c["rr"], "weight": w * scale.view(-1, 1, 1, 1),
            "param_norm": float(sum(x.weight.detach().double().pow(2).sum() for x in params).sqrt()),
            "shape": (c_in, *hw), "bn_folded": isinstance(bn_r, nn.BatchNorm2d)}


def _layer_specs(model: nn.Module, in_shape: Sequence[int]) -> list[dict]:
    """Each weight operator in forward order: name, module (for its geometry), effective weight, raw
    parameter norm, input shape, whether a BatchNorm was folded in."""
    order, bn_of = _trace(model, in_shape)
    rir = {name: m for name, m in model.named_modules() if isinstance(m, RiRBlock)}
    specs, done = [], set()
    for name, m, shape in order:
        parent, _, leaf = name.rpartition(".")
        block, _, sub = parent.rpartition(".")
        if block in rir and sub.startswith("shortcut") and sub[8:].isdigit():
            continue  # a generalized layer's own projection: part of that layer's operator
        if parent in rir and leaf.startswith("conv"):
            i = int(leaf[4:].split("_")[0])
            if (parent, i) not in done:
                done.add((parent, i))
                specs.append(_rir_layer(rir[parent], i, shape[1:], f"{parent}.conv{i}"))
            continue
        bn = bn_of.get(name)
        specs.append({"name": name, "module": m, "weight": _effective_weight(m, bn),
                      "param_norm": float(m.weight.detach().double().norm()), "shape": shape,
                      "bn_folded": bn is not None})
    return specs


def layer_norms(model: nn.Module, in_shape: Sequence[int] | None = None, *, iters: int = 1000,
                seed: int = 0) -> list[dict]:
    """One row per weight layer, in forward order; see the module docstring for each norm.

    Columns: layer, kind (conv, conv_transpose, linear), role (main, branch, shortcut), unit (the residual
    block's module path, "" on the main path), in_shape ("CxHxW" or "D"), bn_folded, spectral, spectral_kernel,
    l21, l21_kernel, frobenius, frobenius_param. `in_shape` (C, H, W) defaults to model.ibprobe_build's.
    """
    if in_shape is None:
        build = getattr(model, "ibprobe_build", None)
        if not build:
            raise ConfigError("pass in_shape=(C, H, W): the model does not say what input it takes")
        in_shape = build["in_shape"]
    units = _units(model)
    rows = []
    for spec in _layer_specs(model, in_shape):
        name, m, w, shape = spec["name"], spec["module"], spec["weight"], spec["shape"]
        role, unit = units.get(name, ("main", ""))
        row = {"layer": name, "role": role, "unit": unit, "in_shape": "x".join(str(s) for s in shape),
               "bn_folded": spec["bn_folded"], "frobenius": float(w.norm()), "frobenius_param": spec["param_norm"]}
        if isinstance(m, nn.Linear):
            row.update(kind="linear", spectral=float(torch.linalg.matrix_norm(w, ord=2)),
                       l21=float(w.norm(dim=1).sum()))
            row.update(spectral_kernel=row["spectral"], l21_kernel=row["l21"])
        else:
            transposed = isinstance(m, nn.ConvTranspose2d)
            geo = _conv_geometry(m)
            km = _kernel_matrix(w, transposed)
            l21, _ = operator_l21(w, shape, transposed=transposed, **geo)
            row.update(kind="conv_transpose" if transposed else "conv",
                       spectral=conv_spectral_norm(w, shape, transposed=transposed, iters=iters, seed=seed, **geo),
                       spectral_kernel=float(torch.linalg.matrix_norm(km, ord=2)), l21=l21,
                       l21_kernel=float(km.norm(dim=1).sum()))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ the bounds
def _prod(xs: Iterable[float]) -> float:
    out = 1.0
    for x in xs:
        out *= x
    return out


def _complexity(coeffs: list[float], b: list[float]) -> float:
    return sum((c * bb) ** (2.0 / 3.0) for c, bb in zip(coeffs, b)) ** 1.5


def complexity_summary(rows: list[dict]) -> dict:
    """The bounds' terms from layer_norms rows (see the module docstring).

    Keys: n_layers, n_units, spectral_product (prod of every layer's s), lipschitz_residual (L, identity
    shortcuts counted as 1), sum_frobenius_sq, sum_l21, bartlett (chain R), residual_complexity (R_res).
    """
    s = [r["spectral"] for r in rows]
    b = [r["l21"] for r in rows]
    n = len(rows)
    chain = [_prod(s[i] for i in range(n) if i != j) for j in range(n)]
    units: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        if r["unit"]:
            units.setdefault(r["unit"], {"branch": [], "shortcut": []})[r["role"]].append(i)
    main = [i for i, r in enumerate(rows) if not r["unit"]]
    lip_unit = {u: (_prod(s[i] for i in d["shortcut"]) if d["shortcut"] else 1.0) + _prod(s[i] for i in d["branch"])
                for u, d in units.items()}

    def outside(unit: str | None, skip: int | None) -> float:
        """Lipschitz bound of everything but `unit` (and but layer `skip` on the main path)."""
        return _prod(s[i] for i in main if i != skip) * _prod(v for u, v in lip_unit.items() if u != unit)

    coeffs = []
    for j, r in enumerate(rows):
        if not r["unit"]:
            coeffs.append(outside(None, j))
        else:
            d = units[r["unit"]]
            group = d["branch"] if r["role"] == "branch" else d["shortcut"]
            coeffs.append(outside(r["unit"], None) * _prod(s[i] for i in group if i != j))
    return {"n_layers": n, "n_units": len(units), "spectral_product": _prod(s),
            "lipschitz_residual": outside(None, None), "sum_frobenius_sq": sum(r["frobenius"] ** 2 for r in rows),
            "sum_l21": sum(b), "bartlett": _complexity(chain, b), "residual_complexity": _complexity(coeffs, b)}


@torch.no_grad()
def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Per-example margin f(x)_y - max_{j != y} f(x)_j of the logits in eval mode (negative: misclassified)."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size]).double()  # (B, classes)
            yy = y[i:i + batch_size].to(logits.device)
            true = logits.gather(1, yy[:, None])[:, 0]
            other = logits.scatter(1, yy[:, None], -math.inf).amax(1)
            out.append((true - other).cpu())
    finally:
        model.train(was)
    return torch.cat(out).numpy()


def model_complexity(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                     in_shape: Sequence[int] | None = None, margin_quantile: float = 0.1, iters: int = 1000,
                     seed: int = 0) -> tuple[list[dict], dict]:
    """(layer rows, summary) of one model. With data (x, y), the summary adds `margin` (the margin_quantile
    quantile of the margins on it), `bartlett_margin` and `residual_margin` (each complexity divided by that
    margin; inf when the margin is <= 0, i.e. more than that fraction of x is misclassified), `train_acc_eval`
    (the accuracy on x in eval mode) and `n_images` (len(x))."""
    if in_shape is None and x is not None:
        in_shape = tuple(x.shape[1:])
    rows = layer_norms(model, in_shape, iters=iters, seed=seed)
    summary = complexity_summary(rows)
    summary["param_norm_sq"] = float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
    if x is not None and y is not None:
        m = margins(model, x, y)
        gamma = float(np.quantile(m, margin_quantile))
        summary["margin"] = gamma
        for k in ("bartlett", "residual_complexity"):
            key = "bartlett_margin" if k == "bartlett" else "residual_margin"
            summary[key] = summary[k] / gamma if gamma > 0 else math.inf
        summary["train_acc_eval"] = float((m > 0).mean())
        summary["n_images"] = len(x)
    return rows, summary


def complexity_rows(models: Iterable[tuple[int, nn.Module]], x: torch.Tensor | None = None,
                    y: torch.Tensor | None = None, **kwargs) -> tuple[list[dict], list[dict]]:
    """(layer rows, summary rows) over (step, model) checkpoints, each row with its `step` first; kwargs to
    model_complexity."""
    layers, summaries = [], []
    for step, model in models:
        rows, summary = model_complexity(model, x, y, **kwargs)
        layers += [{"step": int(step), **r} for r in rows]
        summaries.append({"step": int(step), **summary})
    return layers, summaries
