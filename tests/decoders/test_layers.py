"""Dropout keeps 1 - p of the elements (in steps of 2**-16) with their mean, and passes gradients through them only."""
from __future__ import annotations

import pytest
import torch

from decoders.layers import Dropout


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
