"""Fast layers compute what the plain formulas do: concat_elu, logsigmoid and their gradients, the decoder's NLL
and gradients against torch's elu and logsigmoid, dropout's keep rate and scale."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import decoders.layers as layers
from decoders import DecoderConfig, PixelCNNPP, mixture
from decoders.layers import Dropout, concat_elu


def reference_concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat((x, -x), dim=1))


def test_concat_elu_and_its_gradient_match_the_plain_formula():
    x = (torch.randn(3, 5, 6, 7, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    g = torch.randn(3, 10, 6, 7, generator=torch.Generator().manual_seed(1))
    got, want = concat_elu(x), reference_concat_elu(x)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               atol=1e-6, rtol=1e-5)
    x64 = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(concat_elu, (x64,))
    zero = torch.zeros(1, 2, 1, 1, requires_grad=True)
    assert torch.equal(concat_elu(zero), torch.zeros(1, 4, 1, 1))


def test_logsigmoid_and_its_gradient_match_torch():
    z = (torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 20).requires_grad_()
    z.data[:4] = torch.tensor([0.0, -1e30, 1e30, 88.0])
    got, want = mixture.logsigmoid(z), F.logsigmoid(z)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), z)[0], torch.autograd.grad(want.sum(), z)[0])


@pytest.mark.parametrize("code_shape", [None, (6,), (4, 5, 5)])
def test_decoder_nll_and_gradients_match_the_reference_elu_and_logsigmoid(code_shape, monkeypatch):
    torch.manual_seed(0)
    model = PixelCNNPP(DecoderConfig((3, 8, 8), levels=256, nr_resnet=1, nr_filters=8, nr_mix=3,
                                     code_shape=code_shape, cond_filters=8)).eval()
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    code = None if code_shape is None else torch.randn(4, *code_shape, generator=torch.Generator().manual_seed(2))

    def nll_and_grads():
        model.zero_grad()
        nll = model.nll_bits(x, code)
        nll.sum().backward()
        return nll.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast, fast_grads = nll_and_grads()
    monkeypatch.setattr(layers, "concat_elu", reference_concat_elu)
    monkeypatch.setattr(mixture, "logsigmoid", F.logsigmoid)
    ref, ref_grads = nll_and_grads()
    torch.testing.assert_close(fast, ref, atol=1e-3, rtol=1e-6)  # bits per image, ~600 of them
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.9])
def test_dropout_keeps_1_minus_p_and_preserves_the_mean(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.full((64, 32, 16, 16), 2.0, requires_grad=True)
    y = drop(x)
    kept = (y != 0).double().mean().item()
    assert abs(kept - (1 - p)) < 4 * ((p * (1 - p)) / x.numel()) ** 0.5 + 2 ** -16
    assert abs(y.mean().item() - 2.0) < 0.01
    assert torch.equal(torch.unique(y), torch.tensor([0.0, 2.0 * 65536 / drop.kept]))
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # the gradient flows through kept elements only
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x
