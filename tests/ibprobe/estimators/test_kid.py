"""KID: zero for equal laws, positive for a shift, the library's numbers on fixed features, a standard error that is
the spread of KID over draws of the data, features from a layer, the flags' feature rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ibprobe.capture import capture
from ibprobe.errors import ConfigError, DataError, LayerError
from ibprobe.estimators import kid as kid_module
from ibprobe.estimators.kid import (KidConfig, default_feature_layer, kid, kid_features, kid_halves, kid_rows,
                                    kid_split_half, load_feature_model, mmd2_and_variance, mmd2_unbiased,
                                    polynomial_kernel)
from ibprobe.models import build_model
from ibprobe.rundir.tables import KID


def _gauss(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_identical_distributions_give_kid_within_two_std_of_zero():
    r = kid(_gauss(400, seed=1), _gauss(400, seed=2), subsets=50, subset_size=200, seed=3)
    assert r.std > 0 and abs(r.kid) < 2 * r.std
    s = kid_split_half(_gauss(400, seed=4), subsets=50, subset_size=200, seed=3)
    assert s.std > 0 and abs(s.kid) < 2 * s.std and (s.n_real, s.n_fake) == (200, 200)


def test_a_shifted_distribution_gives_a_clearly_positive_kid():
    same = kid(_gauss(400, seed=1), _gauss(400, seed=2), subsets=50, subset_size=200)
    shifted = kid(_gauss(400, seed=1), _gauss(400, shift=0.5, seed=2), subsets=50, subset_size=200)
    assert shifted.kid > 10 * shifted.std and shifted.kid > 20 * abs(same.kid)


def test_unbiased_mmd_equals_its_definition_for_unequal_sizes():
    x, y = _gauss(7, d=3, seed=5), _gauss(5, d=3, shift=0.3, seed=6)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12, abs=1e-12)
    assert polynomial_kernel(torch.ones(1, 4), torch.ones(1, 4)).item() == 8.0  # (4/4 + 1)^3


def test_matches_torchmetrics_on_fixed_features():
    tm = pytest.importorskip("torchmetrics.image.kid", reason="torchmetrics is in the test extra")
    real, fake = _gauss(120, d=10, seed=7), _gauss(90, d=10, shift=0.2, seed=8)
    real_t, fake_t = torch.tensor(real), torch.tensor(fake)  # float64 on both sides
    assert mmd2_unbiased(real[:60], fake[:60]) == pytest.approx(tm.poly_mmd(real_t[:60], fake_t[:60]).item(), abs=1e-6)
    with pytest.warns(UserWarning):  # the library warns that it keeps all features in memory
        metric = tm.KernelInceptionDistance(feature=nn.Identity(), subsets=20, subset_size=50)
    metric.update(real_t, real=True)
    metric.update(fake_t, real=False)
    torch.manual_seed(11)  # the library draws its subsets from the global generator
    lib_mean, lib_std = metric.compute()
    ours = kid(real, fake, subsets=20, subset_size=50, seed=11)
    assert abs(ours.kid - lib_mean.item()) < 1e-6 and abs(ours.std - lib_std.item()) < 1e-6
    assert ours.kid > 0


def test_halves_never_pair_a_sample_with_its_original():
    held = _gauss(200, d=6, seed=1)
    opts = dict(subsets=40, subset_size=1000, seed=2)
    floor = kid_split_half(held, **opts)
    copy = kid_halves(held, held.copy(), **opts)  # a decoder that reproduced every original
    assert (copy.kid, copy.std) == (floor.kid, floor.std) and floor.subset_size == 100
    fresh = kid_halves(held, _gauss(200, d=6, seed=3), **opts)  # same law, independent draws
    assert abs(fresh.kid) < 2 * fresh.std
    off = kid_halves(held, _gauss(200, d=6, shift=0.5, seed=3), **opts)
    assert off.kid > 5 * off.std
    with pytest.raises(DataError, match="row for row"):
        kid_halves(held, held[:100], **opts)


@pytest.mark.parametrize("rho,shift,naive_low", [(0.0, 0.0, True), (0.9, 0.0, False), (0.5, 0.5, True)])
def test_the_sem_is_the_spread_of_kid_over_draws_of_the_data(rho, shift, naive_low):
    """Over 200 draws of N = 48 images and samples (sample i depending on image i by rho), the spread of the KID on
    halves matches the rms of its sem, while the std over (overlapping) subsets / sqrt(subsets) understates it
    unless the samples nearly copy their images (then the all-data statistic barely varies, and the subsets' own
    noise is most of the error)."""
    rng = np.random.default_rng(0)
    means, sems, naive = [], [], []
    for rep in range(200):
        x = rng.standard_normal((48, 4))
        s = rho * x + np.sqrt(1 - rho ** 2) * 1.3 * rng.standard_normal((48, 4)) + shift
        r = kid_halves(x, s, subsets=20, seed=rep)
        means.append(r.kid), sems.append(r.sem), naive.append(r.std / np.sqrt(20))
    spread, sem = np.std(means), np.sqrt(np.mean(np.square(sems)))
    assert 0.8 < sem / spread < 1.25, (sem, spread)
    assert (np.mean(naive) < 0.75 * spread) == naive_low


def test_the_variance_of_the_u_statistic_is_unbiased():
    rng = np.random.default_rng(1)
    draws = [mmd2_and_variance(rng.standard_normal((12, 3)), rng.standard_normal((12, 3)) + 0.4) for _ in range(3000)]
    u = [kid for kid, _ in draws]
    assert np.mean([v for _, v in draws]) == pytest.approx(np.var(u), rel=0.1)
    with pytest.raises(DataError, match="equal size >= 4"):
        mmd2_and_variance(rng.standard_normal((12, 3)), rng.standard_normal((10, 3)))


def test_kernels_computed_once_give_what_kernels_per_subset_give(monkeypatch):
    x, s = _gauss(90, d=5, seed=1), _gauss(90, d=5, shift=0.2, seed=2)
    once = kid_halves(x, s, subsets=15, seed=3), kid(x, s[:70], subsets=15, subset_size=40, seed=3)
    monkeypatch.setattr(kid_module, "FULL_KERNELS_MAX", 10)
    per_subset = kid_halves(x, s, subsets=15, seed=3), kid(x, s[:70], subsets=15, subset_size=40, seed=3)
    for a, b in zip(once, per_subset):
        assert (a.kid, a.std, a.sem) == pytest.approx((b.kid, b.std, b.sem), rel=1e-9, abs=1e-12)
    floor = kid_split_half(x, subsets=15, seed=3)  # the all-data statistic of a set with itself is exactly 0
    assert floor.sem == pytest.approx(floor.std / np.sqrt(15))


def test_kid_rows_share_splits_and_are_reproducible():
    held = _gauss(60, d=4, seed=1)
    cond = {(0, "layer1"): _gauss(60, d=4, seed=2), (3, "layer1"): _gauss(60, d=4, shift=1.0, seed=3)}
    cfg = KidConfig(subsets=10, subset_size=1000, seed=5)
    rows = kid_rows(held, cond, unconditional=_gauss(60, d=4, seed=4), cfg=cfg, features="run:pool")
    assert [r["reference"] for r in rows] == ["conditional", "conditional", "unconditional", "split_half"]
    assert {r["subset_size"] for r in rows} == {30}  # half the held-out set
    assert all(set(r) == set(KID.columns) for r in rows) and rows[0]["features"] == "run:pool"
    assert rows[2]["step"] is None and rows[2]["epoch"] is None and rows[2]["layer"] is None
    assert [(r["step"], r["epoch"]) for r in rows[:2]] == [(0, 0.0), (3, 3.0)]  # a step without an epoch: its own
    assert rows[1]["kid_mean"] > rows[0]["kid_mean"]
    assert rows == kid_rows(held, cond, unconditional=_gauss(60, d=4, seed=4), cfg=cfg, features="run:pool")
    with pytest.raises(DataError, match="at least 4"):
        kid_rows(held[:3], {}, cfg=cfg)
    with pytest.raises(ConfigError):
        KidConfig(subset_size=1)
    with pytest.raises(ConfigError, match="kid-weights"):
        KidConfig(features="torchvision:inception_v3")
    with pytest.raises(ConfigError, match="kid-features"):  # weights for the run's own network mean nothing
        KidConfig(weights="w.pt")


def _images(n=6, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 17, size=(n, c, 8, 8), dtype=np.uint8)


def test_features_default_to_the_penultimate_layer():
    torch.manual_seed(0)
    net = build_model("resnet", in_shape=(1, 8, 8), widths=(4, 8))
    x = _images()
    assert default_feature_layer(net, torch.zeros(2, 1, 8, 8)) == "pool"
    f = kid_features(net, x, levels=17)
    assert f.shape == (6, 8) and f.dtype == np.float32
    np.testing.assert_array_equal(f, capture(net, x, ["pool"], levels=17)["pool"])
    assert kid_features(net, x, levels=17, layer="layer1").shape == (6, 4 * 8 * 8)
    ae = build_model("resnet_ae", in_shape=(1, 8, 8), widths=(4, 8))
    assert default_feature_layer(ae, torch.zeros(2, 1, 8, 8)) == "bottleneck"
    with pytest.raises(LayerError, match="penultimate"):
        default_feature_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.zeros(2, 1, 8, 8))


def test_a_torchvision_feature_network_from_local_weights(tmp_path):
    torch.manual_seed(0)
    ref = build_model("torchvision:resnet18", in_shape=(3, 16, 16), num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    net = load_feature_model("torchvision:resnet18", str(path))
    assert net.fc.out_features == 7 and net.conv1.in_channels == 3 and not net.training
    grey = _images(4, c=1)
    f = kid_features(net, grey, levels=17, input_size=16)  # grey -> 3 channels, 8x8 -> 16x16
    assert f.shape == (4, 512)
    rgb = np.repeat(grey, 3, axis=1)
    up = torch.nn.functional.interpolate(torch.tensor(rgb, dtype=torch.float32) / 16, size=(16, 16), mode="bilinear",
                                         align_corners=False)
    ref.eval()
    with torch.no_grad():
        want = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(up))))))))), 1)
    np.testing.assert_allclose(f, want.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="weights"):
        load_feature_model("torchvision:resnet18", None)

