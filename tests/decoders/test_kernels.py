"""Fast kernels compute what the plain formulas do: concat_elu (with a dropout mask) and its gradient; the decoder's
NLL and gradients against a reference built from torch's elu, sigmoid gate, logsigmoid and 1x1 convolution, and the
network without reused activations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import decoders.kernels as kernels
import decoders.layers as layers
import decoders.pixelcnn as pixelcnn
from decoders import DecoderConfig, PixelCNNPP, mixture
from decoders.kernels import concat_elu


def reference_concat_elu(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    out = F.elu(torch.cat((x, -x), dim=1))
    return out if keep is None else out * keep


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
    keep = (torch.rand(3, 10, 6, 7, generator=torch.Generator().manual_seed(2)) > 0.5).float() * 2
    got, want = concat_elu(x, keep), reference_concat_elu(x) * keep
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               atol=1e-6, rtol=1e-5)



def reference_network(self, x, cond):
    """PixelCNNPP._network as written before activations were reused: concat_elu recomputed for every use."""
    xs = mixture.scale_values(x, self.cfg.levels)
    xs = torch.cat((xs, torch.ones_like(xs[:, :1])), dim=1)

    def hs(level):
        if cond is None or isinstance(cond, torch.Tensor):
            return cond
        return cond[level][:, :, :x.shape[2] >> level]

    u_list = [kernels.down_shift(self.u_init(xs))]
    ul_list = [kernels.down_shift(self.ul_init_down(xs)) + kernels.right_shift(self.ul_init_right(xs))]
    for level in range(3):
        u, ul, h = u_list[-1], ul_list[-1], hs(level)
        for bu, bul in zip(self.up_u[level], self.up_ul[level]):
            u = bu(u, h=h)
            ul = bul(ul, a=u, h=h)
            u_list.append(u)
            ul_list.append(ul)
        if level < 2:
            u_list.append(self.downsize_u[level](u))
            ul_list.append(self.downsize_ul[level](ul))
    u, ul = u_list.pop(), ul_list.pop()
    for i, level in enumerate((2, 1, 0)):
        h = hs(level)
        for bu, bul in zip(self.down_u[i], self.down_ul[i]):
            u = bu(u, a=u_list.pop(), h=h)
            ul = bul(ul, a=torch.cat((u, ul_list.pop()), dim=1), h=h)
        if level > 0:
            u = self.upsize_u[i](u)
            ul = self.upsize_ul[i](ul)
    return self.nin_out(F.elu(ul))


def reference_gate(x, y, c):
    if c is not None:
        y = y.add_(c)
    a, b = y.chunk(2, dim=1)
    return x + a * torch.sigmoid(b)


@pytest.mark.parametrize("code_shape", [None, (6,), (4, 5, 5)])
def test_decoder_nll_and_gradients_match_the_reference_path(code_shape, monkeypatch):
    torch.manual_seed(0)
    model = PixelCNNPP(DecoderConfig((3, 8, 8), levels=256, nr_resnet=2, nr_filters=8, nr_mix=3,
                                     code_shape=code_shape, cond_filters=8)).eval()
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    code = None if code_shape is None else torch.randn(4, *code_shape, generator=torch.Generator().manual_seed(2))

    def nll_and_grads():
        model.zero_grad()
        nll = model.nll_bits(x, code)
        nll.sum().backward()
        return nll.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast, fast_grads = nll_and_grads()
    # the modules look the kernels up in layers' namespace
    monkeypatch.setattr(layers, "concat_elu", reference_concat_elu)
    monkeypatch.setattr(layers, "gate", reference_gate)
    monkeypatch.setattr(layers, "conv2d", lambda x, w, b, stride=1: F.conv2d(x, w, b, stride))
    monkeypatch.setattr(pixelcnn, "elu", F.elu)
    monkeypatch.setattr(pixelcnn.PixelCNNPP, "_network", reference_network)
    monkeypatch.setattr(mixture, "logsigmoid", F.logsigmoid)
    ref, ref_grads = nll_and_grads()
    torch.testing.assert_close(fast, ref, atol=1e-3, rtol=1e-6)  # bits per image, ~600 of them
    assert len(fast_grads) == len(ref_grads)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)

