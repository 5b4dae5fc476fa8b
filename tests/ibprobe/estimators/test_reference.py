"""The reference for H(X): every candidate is a normalised density over images (a mixture is exactly the weighted
sum of normalised conditionals, image by image), and one candidate is chosen on validation NLLs."""
import numpy as np
import pytest
import torch

from decoders import DecoderConfig, PixelCNNPP, evaluate_nll_bits
from ibprobe.estimators.reference import CODES, LABELS, PLAIN, choose, label_mixture
from ibprobe.fit import code_mixture, mixture_nll_bits


def _decoder(code_shape, seed):
    torch.manual_seed(seed)
    model = PixelCNNPP(DecoderConfig((1, 4, 4), levels=3, nr_resnet=1, nr_filters=4, nr_mix=2, dropout=0.0,
                                     code_shape=code_shape, cond_filters=4)).eval()
    with torch.no_grad():  # make the code path matter: its projections start at zero
        for name, p in model.named_parameters():
            if ".cond." in name:
                p.normal_(0, 0.5)
    return model


def _parts(model, images, codes):
    return np.stack([evaluate_nll_bits(model, images, np.repeat(c[None], len(images), 0)) for c in codes])


def test_mixtures_are_weighted_sums_of_normalised_conditionals():
    """sum_j w_j q(x|h_j) with sum_j w_j = 1 is a density whenever each q(.|h_j) is one (the decoders' own
    normalisation is tested exactly in tests/decoders); here: the mixture NLL is that sum, image by image."""
    x = np.random.default_rng(0).integers(0, 3, (40, 1, 4, 4)).astype(np.uint8)
    cond = _decoder((3,), 1)
    codes = code_mixture(np.random.default_rng(0).normal(size=(50, 3)), 4, seed=0)
    assert codes.shape == (4, 3) and np.array_equal(codes, code_mixture(np.random.default_rng(0).normal(size=(50, 3)),
                                                                          4, seed=0))
    np.testing.assert_allclose(np.exp2(-mixture_nll_bits(cond, x, codes)), np.exp2(-_parts(cond, x, codes)).mean(0),
                               rtol=1e-6)
    onehot, pi = label_mixture(np.array([0, 0, 1, 2, 2, 2]), 4)
    assert pi.tolist() == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0.0])
    lab = _decoder((4,), 2)
    np.testing.assert_allclose(np.exp2(-mixture_nll_bits(lab, x, onehot, pi)),
                               (pi[:, None] * np.exp2(-_parts(lab, x, onehot))).sum(0), rtol=1e-6)
    # the mixture lies between its best and worst component for every image: never a per-image minimum
    mix, parts = mixture_nll_bits(cond, x, codes), _parts(cond, x, codes)
    assert np.all(mix >= parts.min(0) - 1e-9) and np.all(mix <= parts.max(0) + 1e-9)


def test_one_reference_is_chosen_on_validation():
    val = {PLAIN: np.array([10.0, 12.0]), LABELS: np.array([9.0, 12.5]), CODES + "pool@3": np.array([11.0, 9.0])}
    assert choose(val, "best") == CODES + "pool@3"
    assert choose(val, "plain") == PLAIN
    assert choose({PLAIN: val[PLAIN], LABELS: np.array([11.0, 11.0])}) == PLAIN  # ties go to the plain q(x)
