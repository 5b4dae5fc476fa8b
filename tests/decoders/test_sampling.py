"""Cached sampling draws exactly what the naive sampler draws: the same integers and the same mixture
parameters at every pixel, bit for bit, on CPU, for every kind of code, depth, size, channel count and
number of levels; exact_kernels() makes a pixel's value independent of how much of the image is computed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoders import DecoderConfig, PixelCNNPP, mixture
from decoders.kernels import conv2d, exact_kernels
from decoders.layers import DownRightShiftedDeconv2d, DownShiftedDeconv2d


def model(shape, levels, code_shape=None, nr_resnet=1, nr_filters=8, nr_mix=3, seed=0) -> PixelCNNPP:
    """A small model with random, non-trivial weights, conditioning projections included."""
    torch.manual_seed(seed)
    m = PixelCNNPP(DecoderConfig(shape, levels=levels, nr_resnet=nr_resnet, nr_filters=nr_filters, nr_mix=nr_mix,
                                 code_shape=code_shape, cond_filters=8))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "cond" in name and p.abs().max() == 0:  # zero-initialised projections
                p.normal_(0.0, 0.5)
        m.nin_out.conv.bias.normal_(0.0, 1.0)
    return m


def code_for(n, code_shape, seed=1):
    if code_shape is None:
        return None
    return torch.randn(n, *code_shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def draw(m, code, n, method, seed=7):
    return m.sample(code, n=n, generator=torch.Generator().manual_seed(seed), method=method)


CASES = [  # (image shape, levels, code shape, nr_resnet, batch)
    ((1, 8, 8), 17, None, 1, 3),
    ((3, 8, 8), 256, None, 2, 2),
    ((3, 8, 8), 256, (6,), 1, 4),
    ((1, 8, 8), 17, (6,), 3, 1),
    ((3, 8, 8), 17, (5, 3, 3), 1, 2),
    ((1, 8, 8), 256, (4, 12, 12), 2, 5),
    ((1, 16, 16), 17, None, 1, 2),
    ((3, 16, 16), 256, (6,), 2, 2),
    ((3, 16, 16), 17, (2, 4, 4), 1, 3),
    ((1, 4, 8), 17, (3,), 2, 2),
]


@pytest.mark.parametrize("shape,levels,code_shape,nr_resnet,n", CASES)
def test_cached_sampler_draws_the_naive_samplers_integers(shape, levels, code_shape, nr_resnet, n):
    m = model(shape, levels, code_shape, nr_resnet)
    code = code_for(n, code_shape)
    naive, cached = draw(m, code, n, "naive"), draw(m, code, n, "cached")
    assert cached.dtype == torch.uint8 and cached.shape == (n, *shape)
    assert torch.equal(cached, naive)
    assert len(torch.unique(cached)) > 2  # real draws, not a constant image
    assert not torch.equal(draw(m, code, n, "cached", seed=8), cached)


@pytest.mark.parametrize("shape,levels,code_shape,nr_resnet,n", [CASES[2], CASES[4], CASES[7]])
def test_cached_and_naive_mixture_parameters_are_bit_identical(shape, levels, code_shape, nr_resnet, n, monkeypatch):
    m = model(shape, levels, code_shape, nr_resnet)
    code = code_for(n, code_shape)
    seen: dict[str, list[torch.Tensor]] = {"naive": [], "cached": []}
    real = mixture.sample
    for method in seen:
        def record(params, *args, _log=seen[method]):
            _log.append(params.clone())
            return real(params, *args)
        monkeypatch.setattr(mixture, "sample", record)
        draw(m, code, n, method)
    assert len(seen["naive"]) == len(seen["cached"]) == shape[1] * shape[2]
    for a, b in zip(seen["naive"], seen["cached"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape,levels,code_shape,nr_resnet,n", [CASES[1], CASES[5]])
def test_unpinned_cached_sampler_computes_the_naive_parameters(shape, levels, code_shape, nr_resnet, n, monkeypatch):
    """Without exact kernels (as on a GPU) the samplers differ in the last bits only: the same parameters to
    float precision, and the same integers until a last-bit difference flips a draw, if one does."""
    m = model(shape, levels, code_shape, nr_resnet)
    code = code_for(n, code_shape)
    seen: dict[str, list[torch.Tensor]] = {"naive": [], "cached": []}
    drawn: dict[str, list[torch.Tensor]] = {"naive": [], "cached": []}
    real = mixture.sample
    for method in seen:
        def record(params, *args, _log=seen[method], _out=drawn[method]):
            _log.append(params.clone())
            _out.append(real(params, *args))
            return _out[-1]
        monkeypatch.setattr(mixture, "sample", record)
        m._sample(code, n, torch.Generator().manual_seed(7), method, exact=False)
    same = [torch.equal(a, b) for a, b in zip(drawn["naive"], drawn["cached"])]
    first_diff = same.index(False) if False in same else len(same)
    assert first_diff >= len(same) // 2
    for a, b in zip(seen["naive"][:first_diff + 1], seen["cached"][:first_diff + 1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sampling_restores_threads_and_mode_and_rejects_unknown_methods():
    m = model((1, 4, 4), 17).train()
    threads = torch.get_num_threads()
    draw(m, None, 2, "cached")
    assert m.training and torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="method must be one of cached, naive"):
        m.sample(n=2, method="fast")


# ------------------------------------------------------------------------------------------- exact kernels
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("kernel,stride", [((2, 3), 1), ((2, 2), 1), ((2, 3), 2), ((2, 2), 2), ((1, 1), 1)])
def test_exact_conv_pixel_does_not_depend_on_the_input_size(batch, kernel, stride):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, 17, 18, generator=g)
    w, b = torch.randn(24, 16, *kernel, generator=g), torch.randn(24, generator=g)
    kh, kw = kernel
    with exact_kernels():
        full = conv2d(x, w, b, stride)
        for (i, j) in [(0, 0), (3, 5), (full.shape[2] - 1, full.shape[3] - 1)]:
            window = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            assert torch.equal(conv2d(window, w, b, stride)[:, :, 0, 0], full[:, :, i, j])
            row = x[:, :, i * stride:i * stride + kh]
            assert torch.equal(conv2d(row, w, b, stride)[:, :, 0], full[:, :, i])
    torch.testing.assert_close(full, F.conv2d(x, w, b, stride), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cls", [DownShiftedDeconv2d, DownRightShiftedDeconv2d])
def test_exact_transposed_conv_matches_torch_and_a_row_alone(cls):
    torch.manual_seed(0)
    up = cls(8, 6)
    x = torch.randn(3, 8, 4, 5)
    with torch.no_grad():
        ref = up(x)
        with exact_kernels():
            got = up(x)
            row = up(x[:, :, 2:3])
    assert got.shape == ref.shape == (3, 6, 8, 10)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(row, got[:, :, 4:6])
