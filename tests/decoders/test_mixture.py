"""Discretized logistic mixture: exact normalisation, edge bins, logsigmoid as torch's, stable gradients, coupling,
exact sampling."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoders import mixture
from tests.helpers import chi2_critical, chi2_statistic


def _params(channels: int, nr_mix: int, b: int = 1, h: int = 1, w: int = 1, scale: float = 1.0,
            seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, mixture.num_params(channels, nr_mix), h, w, generator=g) * scale


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_bin_masses_sum_to_one_for_extreme_means_and_scales(levels):
    means = torch.tensor([-1e4, -30.0, -1.0, -0.5, 0.0, 0.37, 1.0, 30.0, 1e4])
    log_scales = torch.tensor([-7.0, -4.0, -1.0, 0.0, 3.0, 20.0, 90.0, 200.0, 1e4])
    mean, ls = torch.meshgrid(means, log_scales, indexing="ij")  # (9, 9)
    x = torch.arange(levels)[:, None, None]  # (L, 1, 1)
    lp = mixture.log_bin_mass(x, mean[None], ls[None], levels)  # (L, 9, 9)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(torch.logsumexp(lp, dim=0), torch.zeros_like(mean), atol=1e-5, rtol=0)


def test_bin_masses_match_float64_sigmoid_differences_and_edge_bins_take_the_tails():
    levels, half = 17, 1.0 / 16
    mean, ls = torch.tensor(0.2), torch.tensor(-2.0)
    x = torch.arange(levels)
    got = mixture.log_bin_mass(x, mean, ls, levels).double().exp()
    centres = x.double() * 2 / 16 - 1
    s = math.exp(-2.0)
    upper = torch.sigmoid((centres + half - 0.2) / s)
    lower = torch.sigmoid((centres - half - 0.2) / s)
    want = upper - lower
    want[0] = upper[0]            # (-inf, first upper edge]
    want[-1] = 1.0 - lower[-1]    # [last lower edge, +inf)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert want[0] > upper[0] - lower[0]  # the edge really absorbs a tail here


def test_log_scale_is_clamped_at_minus_seven():
    p = _params(1, 1)
    p[:, 2] = -50.0  # log-scale channel of the single component
    assert mixture.split_params(p, 1, 1).log_scales.min().item() == mixture.MIN_LOG_SCALE


def test_logsigmoid_and_its_gradient_match_torch():
    z = (torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 20).requires_grad_()
    z.data[:4] = torch.tensor([0.0, -1e30, 1e30, 88.0])
    got, want = mixture.logsigmoid(z), F.logsigmoid(z)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), z)[0], torch.autograd.grad(want.sum(), z)[0])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fill", ["zeros", "top", "random"])
def test_finite_log_prob_and_nan_free_gradients_for_extreme_outputs(channels, fill):
    levels, m = 256, 4
    params = (_params(channels, m, b=2, h=4, w=4, scale=1e4)).requires_grad_(True)
    x = {"zeros": torch.zeros(2, channels, 4, 4, dtype=torch.long),
         "top": torch.full((2, channels, 4, 4), levels - 1),
         "random": torch.randint(0, levels, (2, channels, 4, 4), generator=torch.Generator().manual_seed(1))}[fill]
    lp = mixture.log_prob(params, x, levels, m)
    joint = mixture.joint_log_prob(params, x, levels, m)
    assert torch.isfinite(lp).all() and torch.isfinite(joint).all()
    (lp.sum() + joint.sum()).backward()
    assert torch.isfinite(params.grad).all()


def test_pixel_joint_and_every_channel_conditional_normalise_c3():
    levels, m = 5, 3
    params = _params(3, m, scale=2.0, seed=3)  # (1, P, 1, 1)
    xs = torch.tensor(list(itertools.product(range(levels), repeat=3)))  # (125, 3) all pixels
    x = xs[:, :, None, None]  # (125, 3, 1, 1)
    p = params.expand(len(xs), -1, -1, -1)
    lp = mixture.log_prob(p, x, levels, m)[:, :, 0, 0]  # (125, 3)
    joint = mixture.joint_log_prob(p, x, levels, m)[:, 0, 0]  # (125,)
    torch.testing.assert_close(lp.sum(1), joint, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.logsumexp(joint, 0), torch.tensor(0.0), atol=1e-5, rtol=0)
    grid = lp.reshape(levels, levels, levels, 3)
    # channel 0 alone; channel 1 given each x0; channel 2 given each (x0, x1)
    torch.testing.assert_close(torch.logsumexp(grid[:, 0, 0, 0], 0), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.logsumexp(grid[:, :, 0, 1], 1), torch.zeros(levels), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.logsumexp(grid[:, :, :, 2], 2), torch.zeros(levels, levels), atol=1e-5, rtol=0)


def test_coupling_shifts_later_channel_means_by_earlier_values():
    levels = 17
    p = torch.zeros(1, mixture.num_params(3, 1), 1, 1)  # one component: logit | 3 means | 3 log-scales | 3 coeffs
    p[0, 1:4] = torch.tensor([0.1, -0.2, 0.3])[:, None, None]
    p[0, 4:7] = -2.0
    x = torch.tensor([[12, 3, 9]])[:, :, None, None]
    x_scaled = x[0, :, 0, 0].float() * 2 / 16 - 1
    ls = mixture.bound_log_scales(torch.tensor(-2.0))  # the log-scale the raw output -2 stands for
    # zero coefficients: the three channels are independent one-channel logistics
    indep = mixture.log_prob(p, x, levels, 1)[0, :, 0, 0]
    for c, mu in enumerate([0.1, -0.2, 0.3]):
        want = mixture.log_bin_mass(x[0, c, 0, 0], torch.tensor(mu), ls, levels)
        single = torch.cat([p[:, :1], p[:, 1 + c:2 + c], p[:, 4 + c:5 + c]], dim=1)  # C=1 layout
        torch.testing.assert_close(indep[c], want)
        torch.testing.assert_close(mixture.log_prob(single, x[:, c:c + 1], levels, 1)[0, 0, 0, 0], want)
    # coefficients (pre-tanh) a, b, c for pairs (1,0), (2,0), (2,1)
    p[0, 7:10] = torch.tensor([0.5, -0.7, 0.9])[:, None, None]
    t = torch.tanh(torch.tensor([0.5, -0.7, 0.9]))
    coupled = mixture.log_prob(p, x, levels, 1)[0, :, 0, 0]
    mu1 = -0.2 + t[0] * x_scaled[0]
    mu2 = 0.3 + t[1] * x_scaled[0] + t[2] * x_scaled[1]
    torch.testing.assert_close(coupled[0], indep[0])
    torch.testing.assert_close(coupled[1], mixture.log_bin_mass(x[0, 1, 0, 0], mu1, ls, levels))
    torch.testing.assert_close(coupled[2], mixture.log_bin_mass(x[0, 2, 0, 0], mu2, ls, levels))
    assert (coupled[1:] - indep[1:]).abs().min() > 1e-2


def test_autocast_inputs_are_computed_in_float32():
    p = _params(3, 2, b=2, h=4, w=4).bfloat16()
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = mixture.log_prob(p, x, 256, 2)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_samples_follow_the_pixel_joint_with_coupling():
    levels, m, n = 5, 3, 20000
    params = _params(2, m, scale=1.5, seed=7)  # (1, P, 1, 1)
    g = torch.Generator().manual_seed(0)
    draws = mixture.sample(params[:, :, 0, 0].expand(n, -1), levels, m, 2, generator=g)  # (n, 2)
    assert draws.dtype == torch.long and draws.min() >= 0 and draws.max() <= levels - 1
    cells = torch.tensor(list(itertools.product(range(levels), repeat=2)))  # (25, 2)
    joint = mixture.joint_log_prob(params.expand(len(cells), -1, -1, -1), cells[:, :, None, None], levels, m)
    probs = joint[:, 0, 0].double().exp().numpy()
    counts = np.bincount((draws[:, 0] * levels + draws[:, 1]).numpy(), minlength=levels * levels)
    stat, df = chi2_statistic(counts, probs)
    assert stat < chi2_critical(df), (stat, df)
    # the test can fail: samples that ignore the coupling do not pass
    params_nc = params.clone()
    params_nc[:, mixture.num_params(2, m) - m:] = 0.0  # coupling coefficients off
    draws_nc = mixture.sample(params_nc[:, :, 0, 0].expand(n, -1), levels, m, 2, generator=g)
    counts_nc = np.bincount((draws_nc[:, 0] * levels + draws_nc[:, 1]).numpy(), minlength=levels * levels)
    assert chi2_statistic(counts_nc, probs)[0] > chi2_critical(df)


def test_sampling_is_reproducible_with_a_generator_and_handles_extreme_scales():
    p = _params(3, 2, b=1, scale=1e4)[:, :, 0, 0].expand(64, -1)
    a = mixture.sample(p, 256, 2, 3, generator=torch.Generator().manual_seed(5))
    b = mixture.sample(p, 256, 2, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 255
