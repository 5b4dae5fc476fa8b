"""Discretized mixture of logistics with linear channel coupling (PixelCNN++, Salimans et al., 2017),
generalised to any number of channels C and levels L.

Per pixel and component k: one logit, C means, C log-scales (floored at -7, softly capped at 0) and C(C-1)/2
coupling coefficients (tanh), channel c's mean being mu_c + sum_{j<c} coeff_{c,j} * x_j with x_j the earlier channel's
value on [-1, 1]. Value v in [0, L-1] sits at 2v/(L-1) - 1 with half-width 1/(L-1); the first and last bins
take the tails. Bin masses are computed in log space without the reference code's midpoint fallback, so they
sum to 1 over the L values to float precision for any mean and scale. Always float32, also under autocast.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

MIN_LOG_SCALE = -7.0
MAX_LOG_SCALE = 0.0  # soft cap: scale 1 on the [-1, 1] value axis, i.e. half its width
_LOG_D_SMALL = -15.0  # below this, log(1 - exp(-d)) == log(d) to float precision


def num_params(channels: int, nr_mix: int) -> int:
    """Output channels of the network for a C-channel image and nr_mix components."""
    return nr_mix * (1 + 2 * channels + channels * (channels - 1) // 2)


class MixtureParams(NamedTuple):
    logits: torch.Tensor      # (B, M, H, W)
    means: torch.Tensor       # (B, M, C, H, W), before coupling
    log_scales: torch.Tensor  # (B, M, C, H, W), bounded by bound_log_scales
    coeffs: torch.Tensor      # (B, M, C(C-1)/2, H, W), in (-1, 1); pair (c, j), j < c, at c(c-1)/2 + j


def split_params(params: torch.Tensor, channels: int, nr_mix: int) -> MixtureParams:
    """Network output (B, P, H, W) -> float32 mixture parameters. Layout: logits | means | log_scales | coeffs."""
    params = params.float()
    m, c = nr_mix, channels
    k = c * (c - 1) // 2
    if params.shape[1] != num_params(c, m):
        raise ValueError(f"expected {num_params(c, m)} parameter channels for C={c}, M={m}, got {params.shape[1]}")
    logits, means, log_scales, coeffs = params.split((m, m * c, m * c, m * k), dim=1)
    return MixtureParams(
        logits=logits,
        means=rearrange(means, "b (m c) h w -> b m c h w", m=m),
        log_scales=bound_log_scales(rearrange(log_scales, "b (m c) h w -> b m c h w", m=m)),
        coeffs=torch.tanh(rearrange(coeffs, "b (m k) h w -> b m k h w", m=m)),
    )


def bound_log_scales(raw: torch.Tensor) -> torch.Tensor:
    """Raw network outputs -> log-scales in [MIN_LOG_SCALE, MAX_LOG_SCALE).

    Above, a smooth cap (MAX - softplus(MAX - raw)) that keeps a gradient everywhere. Without it, data that sit
    on the two edge levels (binary images) are fitted ever better by mean and scale growing together without
    bound (the tail bins take all the mass as the interior bins' share vanishes); the scale runs off to 1e7 and
    the means stop learning from the context. A logistic wider than half the value axis is never needed.
    Below, the usual hard floor. (MAX - softplus(MAX - raw) = MAX + logsigmoid(raw - MAX).)
    """
    return (logsigmoid(raw - MAX_LOG_SCALE) + MAX_LOG_SCALE).clamp(min=MIN_LOG_SCALE)


class _LogSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return z.clamp(max=0.0).sub_(torch.exp(-z.abs()).add_(1.0).log_())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        z, = ctx.saved_tensors
        return grad * torch.sigmoid(-z)


def logsigmoid(z: torch.Tensor) -> torch.Tensor:
    """log sigmoid(z). On CPU min(z, 0) - log(1 + exp(-|z|)): torch's log_sigmoid and log1p run a scalar loop
    there, ten times slower than exp and log (off log1p by at most 6e-8); the same value for an element whatever
    the tensor's layout, which the samplers need. F.logsigmoid elsewhere."""
    cpu = z.device.type == "cpu" and not torch.compiler.is_compiling()
    return _LogSigmoid.apply(z) if cpu else F.logsigmoid(z)


def scale_values(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integers in [0, L-1] -> bin centres 2x/(L-1) - 1 on [-1, 1] (float32)."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


def coupled_means(means: torch.Tensor, coeffs: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Channel c's mean plus sum_{j<c} coeff_{c,j} * xs_j. means (B, M, C, ...), xs (B, C, ...) -> (B, M, C, ...)."""
    c_total = means.shape[2]
    if c_total == 1:
        return means
    out = [means[:, :, 0]]
    k = 0
    for c in range(1, c_total):
        m = means[:, :, c]
        for j in range(c):
            m = m + coeffs[:, :, k] * xs[:, None, j]
            k += 1
        out.append(m)
    return torch.stack(out, dim=2)


def _log1mexp_of_log(log_d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) given log d, exact for tiny d (where d itself would underflow) and NaN-free in grad.

    1 - exp(-d) in float64 (exact to 1e-16 / d) instead of expm1, which runs a scalar loop on CPU.
    """
    d = torch.exp(log_d.clamp(min=_LOG_D_SMALL).double())
    big = torch.log(1.0 - torch.exp(-d)).to(log_d.dtype)
    return torch.where(log_d < _LOG_D_SMALL, log_d, big)


def log_bin_mass(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(value x) under a discretized logistic(mean, exp(log_scale)) on L levels (nats), broadcast shapes.

    x: integer values in [0, L-1]; mean, log_scale: float32 on the [-1, 1] scale.
    """
    half = 1.0 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    centred = scale_values(x, levels) - mean
    a = inv_s * (centred - half)  # lower edge, standardised
    b = inv_s * (centred + half)  # upper edge
    # log(sigmoid(b) - sigmoid(a)) = logsigmoid(b) + logsigmoid(-a) + log(1 - exp(a - b)), b - a = 2 half / s
    log_d = math.log(2.0 * half) - log_scale
    first = logsigmoid(b)     # (-inf, upper edge]
    last = logsigmoid(-a)     # [lower edge, +inf)
    # first for x = 0, last for x = L-1, first + last + log(1 - exp(a - b)) between: 0/1 masks instead of torch.where
    # (several times slower on CPU, forward and backward); the terms are finite for finite means and log-scales
    below = (x < levels - 1).to(first.dtype)  # the bin has an upper edge
    above = (x > 0).to(first.dtype)  # the bin has a lower edge
    return first * below + last * above + _log1mexp_of_log(log_d) * (below * above)


def component_log_probs(mp: MixtureParams, x: torch.Tensor, levels: int) -> torch.Tensor:
    """log p_k(x_c | x_<c) per component and channel: x (B, C, H, W) int -> (B, M, C, H, W) nats."""
    means = coupled_means(mp.means, mp.coeffs, scale_values(x, levels))
    return log_bin_mass(x[:, None], means, mp.log_scales, levels)


def log_prob(params: torch.Tensor, x: torch.Tensor, levels: int, nr_mix: int) -> torch.Tensor:
    """Per-sub-pixel conditionals log p(x_c | x_<c, earlier pixels): (B, P, H, W), (B, C, H, W) -> (B, C, H, W) nats.

    p(x_c | x_<c) = sum_k w_k(c) p_k(x_c | x_<c), w_k(c) the posterior of component k given the pixel's earlier
    channels (w_k(0) = pi_k), so each term is a normalised conditional and their sum over c is the pixel's joint.
    """
    with torch.autocast(device_type=params.device.type, enabled=False):
        mp = split_params(params, x.shape[1], nr_mix)
        lp = component_log_probs(mp, x, levels)  # (B, M, C, H, W)
        log_pi = F.log_softmax(mp.logits, dim=1)  # (B, M, H, W)
        before = torch.cumsum(lp, dim=2) - lp  # exclusive sum over earlier channels
        log_w = F.log_softmax(log_pi[:, :, None] + before, dim=1)  # (B, M, C, H, W) posterior weights
        return torch.logsumexp(log_w + lp, dim=1)  # (B, C, H, W)


def joint_log_prob(params: torch.Tensor, x: torch.Tensor, levels: int, nr_mix: int) -> torch.Tensor:
    """log p(pixel | earlier pixels) = logsumexp_k(log pi_k + sum_c log p_k(x_c | x_<c)): -> (B, H, W) nats."""
    with torch.autocast(device_type=params.device.type, enabled=False):
        mp = split_params(params, x.shape[1], nr_mix)
        lp = component_log_probs(mp, x, levels)  # (B, M, C, H, W)
        return torch.logsumexp(F.log_softmax(mp.logits, dim=1) + lp.sum(dim=2), dim=1)  # (B, H, W)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gdev, dtype=torch.float64)
    return u.to(device)


@functools.lru_cache(maxsize=32)
def _pick_index(nr_mix: int, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat parameter index of component 0's means | log-scales | coefficients, and its step per component."""
    m, c = nr_mix, channels
    k = c * (c - 1) // 2
    base = torch.cat((torch.arange(c), m * c + torch.arange(c), 2 * m * c + torch.arange(k))) + m
    step = torch.tensor([c] * (2 * c) + [k] * k)
    return base.to(device), step.to(device)


def sample(params: torch.Tensor, levels: int, nr_mix: int, channels: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact draw of one pixel per row from the mixture: params (N, P) -> int64 (N, C) in [0, L-1].

    Component by Gumbel-max on the logits, then each channel in order from its discretized logistic via the
    inverse CDF and the bin containing the draw, the coupling using the earlier channels' drawn bin centres.
    Only the chosen component's parameters are transformed (the values split_params would give them).
    """
    with torch.autocast(device_type=params.device.type, enabled=False):
        p = params.float()
        n, dev, c = p.shape[0], p.device, channels
        if p.shape[1] != num_params(c, nr_mix):
            raise ValueError(f"expected {num_params(c, nr_mix)} parameter channels for C={c}, M={nr_mix}, "
                             f"got {p.shape[1]}")
        u = _uniform((n, nr_mix), generator, dev).clamp(1e-300, 1.0)
        k = torch.argmax(p[:, :nr_mix].double() - torch.log(-torch.log(u)), dim=1)  # (N,)
        base, step = _pick_index(nr_mix, c, dev)
        raw = p.gather(1, base + k[:, None] * step)  # (N, 2C + C(C-1)/2): means | log-scales | coefficients
        chosen = torch.cat((raw[:, :c], bound_log_scales(raw[:, c:2 * c]), torch.tanh(raw[:, 2 * c:])), 1).double()
        spread = torch.exp(chosen[:, c:2 * c]) * torch.logit(_uniform((n, c), generator, dev))  # (N, C); +-inf ok
        values, xs = [], []
        idx = 2 * c
        for ch in range(c):
            mean = chosen[:, ch]
            for j in range(ch):
                mean = mean + chosen[:, idx] * xs[j]
                idx += 1
            v = torch.round((mean + spread[:, ch] + 1.0) * ((levels - 1) / 2.0)).nan_to_num_(0.0).clamp_(0, levels - 1)
            values.append(v)
            if ch + 1 < c:
                xs.append(v * (2.0 / (levels - 1)) - 1.0)
        return torch.stack(values, 1).long()
