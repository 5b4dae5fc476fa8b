"""PixelCNNPP: exact normalisation, causality, conditioning, warm starts, exact sampling, numerics, files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoders import DecoderConfig, PixelCNNPP, load_decoder, save_decoder
from decoders.errors import DecoderFileError, IncompatibleWeightsError
from tests.helpers import chi2_critical, chi2_statistic


def tiny(shape=(1, 8, 8), levels=17, code_shape=None, nr_mix=3, seed=0, cond_scale=0.5) -> PixelCNNPP:
    """A tiny model in eval mode with random, non-trivial weights (conditioning projections included)."""
    torch.manual_seed(seed)
    cfg = DecoderConfig(shape, levels=levels, nr_resnet=1, nr_filters=8, nr_mix=nr_mix, dropout=0.5,
                        code_shape=code_shape, cond_filters=8)
    model = PixelCNNPP(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cond" in name and p.abs().max() == 0:  # zero-initialised projections
                p.normal_(0.0, cond_scale)
        model.nin_out.conv.bias.normal_(0.0, 1.0)  # a peaked, non-uniform first pixel
    return model


def rand_images(n, shape, levels, seed=0) -> torch.Tensor:
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


def rand_code(n, code_shape, seed=1):
    if code_shape is None:
        return None
    return torch.randn(n, *code_shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def first_pixel_distribution(model, code=None) -> torch.Tensor:
    """p(x_{0,0,0} = v) for v in [0, L-1], float64 (L,)."""
    levels = model.cfg.levels
    x = torch.zeros(levels, *model.cfg.image_shape, dtype=torch.long)
    x[:, 0, 0, 0] = torch.arange(levels)
    c = None if code is None else code.expand(levels, *code.shape[1:])
    with torch.no_grad():
        return model.log_prob(x, c)[:, 0, 0, 0].double().exp()


# ----------------------------------------------------------------------------------------------- config
def test_config_validates_and_normalises_fields():
    cfg = DecoderConfig([3, 8, 12], code_shape=[4, 2, 2])
    assert cfg.image_shape == (3, 8, 12) and cfg.code_shape == (4, 2, 2) and cfg.code_kind == "spatial"
    assert DecoderConfig(**cfg.to_dict()) == cfg
    for bad, msg in [(dict(image_shape=(1, 6, 8)), "multiples of 4"), (dict(image_shape=(8, 8)), "(C, H, W)"),
                     (dict(image_shape=(1, 8, 8), levels=1), "levels"),
                     (dict(image_shape=(1, 8, 8), levels=300), "levels"),
                     (dict(image_shape=(1, 8, 8), code_shape=(3, 4)), "code_shape"),
                     (dict(image_shape=(1, 8, 8), dropout=1.0), "dropout")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            DecoderConfig(**bad)


def test_unconditional_model_has_no_conditioning_parameters():
    names = [n for n, _ in PixelCNNPP(DecoderConfig((1, 8, 8), nr_resnet=1, nr_filters=8)).state_dict().items()]
    assert not any("cond" in n or "code_" in n for n in names)


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("shape,levels,code_shape", [
    ((1, 8, 8), 17, None), ((3, 8, 8), 17, None), ((1, 8, 8), 256, None),
    ((1, 8, 8), 17, (6,)), ((3, 8, 8), 256, (6,)),
    ((1, 8, 8), 17, (5, 3, 3)), ((3, 8, 8), 17, (5, 3, 3)),
])
def test_every_subpixel_conditional_sums_to_one(shape, levels, code_shape):
    model = tiny(shape, levels, code_shape)
    c_, h, w = shape
    base = rand_images(1, shape, levels)
    code = rand_code(1, code_shape)
    for (i, j) in [(0, 0), (3, 5), (h - 1, w - 1)]:
        for c in range(c_):
            x = base.repeat(levels, 1, 1, 1)
            x[:, c, i, j] = torch.arange(levels)
            cc = None if code is None else code.expand(levels, *code.shape[1:])
            with torch.no_grad():
                lp = model.log_prob(x, cc)[:, c, i, j]  # (L,) all values of one sub-pixel, the rest fixed
            assert torch.isfinite(lp).all()
            assert abs(torch.logsumexp(lp.double(), 0).item()) < 1e-5, (i, j, c)
            assert lp.max() - lp.min() > 0.1  # not trivially uniform


def test_nll_bits_equals_summed_log_prob():
    model = tiny((3, 8, 8), 256, (6,))
    x, code = rand_images(4, (3, 8, 8), 256), rand_code(4, (6,))
    with torch.no_grad():
        want = -model.log_prob(x, code).double().sum((1, 2, 3)) / math.log(2)
        got = model.nll_bits(x, code)
    assert got.shape == (4,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape,code_shape", [((1, 4, 4), None), ((3, 4, 4), None), ((3, 4, 4), (2, 6, 6))])
def test_causality_earlier_subpixels_ignore_later_ones(shape, code_shape):
    levels = 5
    model = tiny(shape, levels, code_shape, nr_mix=2)
    c_, h, w = shape
    base = rand_images(1, shape, levels, seed=3)
    order = [(i, j, c) for i in range(h) for j in range(w) for c in range(c_)]  # raster, then channels
    xs = [base[0]]
    for (i, j, c) in order:
        x = base[0].clone()
        x[c, i, j] = (x[c, i, j] + 2) % levels
        xs.append(x)
    x = torch.stack(xs)  # (1 + D, C, H, W)
    code = rand_code(1, code_shape)
    cc = None if code is None else code.expand(len(x), *code.shape[1:])
    with torch.no_grad():
        lp = model.log_prob(x, cc)
    ref = lp[0]
    for k, (i, j, c) in enumerate(order):
        diff = (lp[k + 1] - ref).abs()  # (C, H, W)
        flat = torch.stack([diff[cc_, ii, jj] for (ii, jj, cc_) in order])  # in autoregressive order
        assert k == 0 or flat[:k].max() < 1e-6, f"sub-pixel {(c, i, j)} leaks into earlier ones"
        if k + 1 < len(order):
            assert flat[k + 1:].max() > 1e-4, f"perturbing {(c, i, j)} changes nothing later"


def test_a_top_crop_gives_the_same_rows_as_the_full_image():
    model = tiny((3, 8, 8), 17, (5, 3, 3))
    x, code = rand_images(2, (3, 8, 8), 17), rand_code(2, (5, 3, 3))
    with torch.no_grad():
        cond = model._condition(code, 2)
        full = model._network(x, cond)
        top = model._network(x[:, :, :4], cond)
    torch.testing.assert_close(top, full[:, :, :4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("code_shape", [(6,), (5, 3, 3), (4, 16, 16)])
def test_code_changes_the_first_pixel_distribution(code_shape):
    model = tiny((1, 8, 8), 17, code_shape)
    p_a = first_pixel_distribution(model, rand_code(1, code_shape, seed=1))
    p_b = first_pixel_distribution(model, rand_code(1, code_shape, seed=2))
    assert (p_a - p_b).abs().max() > 1e-3


@pytest.mark.parametrize("code_shape,vector_cond", [((6,), "linear"), ((6,), "mlp"), ((5, 3, 3), "linear")])
def test_starting_from_an_unconditional_decoder_is_exact(code_shape, vector_cond):
    uncond = tiny((3, 8, 8), 17, None)
    torch.manual_seed(9)
    cond = PixelCNNPP(DecoderConfig((3, 8, 8), levels=17, nr_resnet=1, nr_filters=8, nr_mix=3,
                                    code_shape=code_shape, cond_filters=8, vector_cond=vector_cond)).eval()
    cond.start_from(uncond)
    assert set(cond.state_dict()) - set(uncond.state_dict()) == set(cond.code_path_names())
    x, code = rand_images(3, (3, 8, 8), 17), rand_code(3, code_shape)
    with torch.no_grad():
        assert torch.equal(cond.log_prob(x, code), uncond.log_prob(x))


@pytest.mark.parametrize("other", [dict(nr_filters=16), dict(nr_resnet=2), dict(nr_mix=4), dict(levels=256)])
def test_starting_from_a_decoder_of_another_size_is_an_error(other):
    """Weights that do not fit are refused as a whole: nothing is copied, nothing is silently skipped."""
    base = dict(image_shape=(3, 8, 8), levels=17, nr_resnet=1, nr_filters=8, nr_mix=3)
    source = PixelCNNPP(DecoderConfig(**{**base, **other}))
    cond = PixelCNNPP(DecoderConfig(**base, code_shape=(4,)))
    before = {k: v.clone() for k, v in cond.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match="cannot start this decoder"):
        cond.start_from(source)
    assert all(torch.equal(before[k], v) for k, v in cond.state_dict().items())
    with pytest.raises(IncompatibleWeightsError, match="unexpected"):  # a conditional source is not a start
        PixelCNNPP(DecoderConfig(**base, code_shape=(4,))).start_from(cond)


# ----------------------------------------------------------------------------------------------- codes
def test_set_code_stats_standardises_inside_the_model():
    model = tiny((1, 8, 8), 17, (3,))
    raw = np.stack([np.linspace(0, 10, 50), np.full(50, 7.0), np.linspace(-1, 1, 50) * 1e-9], 1).astype(np.float32)
    model.set_code_stats(raw)
    r = raw.astype(np.float64)
    np.testing.assert_allclose(model.code_mean.numpy(), r.mean(0), rtol=1e-5, atol=1e-6)
    assert model.code_std[1].item() == 1.0  # zero variance -> 1
    assert model.code_std[2].item() == pytest.approx(1e-6)  # clamped below
    assert model.code_std[0].item() == pytest.approx(r[:, 0].std(), rel=1e-5)
    x = rand_images(2, (1, 8, 8), 17)
    with torch.no_grad():
        stats = model.log_prob(x, raw[:2].astype(np.float16))  # raw float16 numpy codes are accepted
        model.code_mean.zero_()
        model.code_std.fill_(1.0)
        z = (r[:2].astype(np.float16).astype(np.float64) - r.mean(0)) / np.array([r[:, 0].std(), 1.0, 1e-6])
        manual = model.log_prob(x, torch.as_tensor(z, dtype=torch.float32))
    torch.testing.assert_close(stats, manual, atol=1e-4, rtol=1e-4)


def test_spatial_code_stats_are_per_channel_and_chunking_does_not_change_them(monkeypatch):
    import decoders.pixelcnn as pixelcnn
    model = tiny((1, 8, 8), 17, (2, 3, 3))
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(37, 2, 3, 3, generator=g) * torch.tensor([3.0, 0.5])[:, None, None] + 1e3
    monkeypatch.setattr(pixelcnn, "_STATS_CHUNK_ELEMENTS", 18 * 5)  # chunks of 5 codes
    model.set_code_stats(codes)
    r = codes.double().numpy().transpose(1, 0, 2, 3).reshape(2, -1)
    assert model.code_mean.shape == (2, 1, 1)
    np.testing.assert_allclose(model.code_mean.flatten().numpy(), r.mean(1), rtol=1e-6)
    np.testing.assert_allclose(model.code_std.flatten().numpy(), r.std(1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects \[N, 2, 3, 3\]"):
        model.set_code_stats(codes[:, :1])


def test_bad_inputs_raise_clear_errors():
    model = tiny((1, 8, 8), 17, (5, 3, 3))
    x = rand_images(2, (1, 8, 8), 17)
    with pytest.raises(ValueError, match=r"expects \[2, 5, 3, 3\]"):
        model.log_prob(x, torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="give a code"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="integers"):
        model.log_prob(x.float(), torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match="outside"):
        model.log_prob(x + 17, torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match="expects"):
        model.log_prob(x[:, :, :4], torch.zeros(2, 5, 3, 3))
    with pytest.raises(ValueError, match="unconditional"):
        tiny((1, 8, 8), 17).log_prob(x, torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------- sampling
def test_first_subpixel_samples_follow_log_prob():
    levels, n = 9, 3000
    model = tiny((1, 4, 4), levels, None)
    probs = first_pixel_distribution(model).numpy()
    s = model.sample(n=n, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.uint8 and s.shape == (n, 1, 4, 4) and int(s.max()) <= levels - 1
    counts = np.bincount(s[:, 0, 0, 0].long().numpy(), minlength=levels)
    stat, df = chi2_statistic(counts, probs)
    assert df >= 3 and stat < chi2_critical(df), (stat, df)
    # the check has power: the same counts against a flattened distribution fail
    assert chi2_statistic(counts, (probs + probs.mean()) / 2)[0] > chi2_critical(df)


def test_first_pixel_joint_samples_follow_log_prob_with_vector_code():
    levels, n = 3, 3000
    model = tiny((3, 4, 4), levels, (6,), nr_mix=2)
    code = rand_code(1, (6,))
    cells = torch.tensor([[a, b, c] for a in range(levels) for b in range(levels) for c in range(levels)])
    x = torch.zeros(len(cells), 3, 4, 4, dtype=torch.long)
    x[:, :, 0, 0] = cells
    with torch.no_grad():
        probs = model.log_prob(x, code.expand(len(cells), 6))[:, :, 0, 0].sum(1).double().exp().numpy()
    s = model.sample(code.expand(n, 6), generator=torch.Generator().manual_seed(1)).long()
    assert s.shape == (n, 3, 4, 4)
    idx = (s[:, 0, 0, 0] * levels + s[:, 1, 0, 0]) * levels + s[:, 2, 0, 0]
    stat, df = chi2_statistic(np.bincount(idx.numpy(), minlength=levels ** 3), probs)
    assert stat < chi2_critical(df), (stat, df)


def test_sampling_is_reproducible_and_restores_train_mode():
    model = tiny((1, 4, 4), 17, (5, 2, 2)).train()
    code = rand_code(3, (5, 2, 2))
    a = model.sample(code, generator=torch.Generator().manual_seed(4))
    b = model.sample(code, generator=torch.Generator().manual_seed(4))
    c = model.sample(code, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 1, 4, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.training
    with pytest.raises(ValueError, match="give n"):
        tiny((1, 4, 4), 17).sample()


# ----------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("fill", [0, 255])
def test_extreme_images_and_outputs_give_finite_values_and_gradients(fill):
    model = tiny((3, 8, 8), 256, (6,)).train()
    with torch.no_grad():
        model.nin_out.conv.parametrizations.weight.original0.mul_(1e4)  # weight-norm gain: outputs x 1e4
        model.nin_out.conv.bias.mul_(1e4)
    x = torch.full((2, 3, 8, 8), fill, dtype=torch.uint8)
    lp = model.log_prob(x, rand_code(2, (6,)))
    nll = model.nll_bits(x, rand_code(2, (6,)))
    assert torch.isfinite(lp).all() and torch.isfinite(nll).all()
    (lp.sum() + nll.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cpu_bf16_autocast_gives_finite_float32_log_prob_close_to_fp32():
    model = tiny((3, 8, 8), 256, (5, 3, 3))
    x, code = rand_images(2, (3, 8, 8), 256), rand_code(2, (5, 3, 3))
    with torch.no_grad():
        ref = model.nll_bits(x, code)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = model.log_prob(x, code)
            nll = model.nll_bits(x, code)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert ((nll - ref).abs() / ref).max() < 0.05


def test_channels_last_input_and_model_match_contiguous():
    model = tiny((3, 8, 8), 17, (5, 3, 3))
    x, code = rand_images(2, (3, 8, 8), 17), rand_code(2, (5, 3, 3))
    with torch.no_grad():
        ref = model.log_prob(x, code)
        model.to(memory_format=torch.channels_last)
        got = model.log_prob(x.contiguous(memory_format=torch.channels_last),
                             code.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny((3, 8, 8), 17, (5, 3, 3))
    model.set_code_stats(torch.randn(20, 5, 3, 3) * 3 + 2)
    path = save_decoder(model, tmp_path / "d" / "decoder.pt", extra={"layer": "layer2", "epoch": 3})
    raw = torch.load(path, weights_only=True)  # tensors and primitives only
    assert raw["format"] == "decoders.pixelcnnpp/2" and raw["config"]["code_shape"] == [5, 3, 3]
    loaded, extra = load_decoder(path, with_extra=True)
    assert loaded.cfg == model.cfg and extra == {"layer": "layer2", "epoch": 3} and not loaded.training
    x, code = rand_images(2, (3, 8, 8), 17), rand_code(2, (5, 3, 3))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, code), model.log_prob(x, code))
    assert not list(path.parent.glob("*.tmp"))


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DecoderFileError, match="not a readable decoder file"):
        load_decoder(bad)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(DecoderFileError, match="format"):
        load_decoder(other)
    with pytest.raises(FileNotFoundError):
        load_decoder(tmp_path / "missing.pt")


def test_vector_cond_mlp_round_trips_and_older_files_load_as_linear(tmp_path):
    """A decoder with the vector MLP saves and loads exactly; a file written before vector_cond existed (vector
    codes fed linearly, the default) loads as such; an unknown form is a config error."""
    torch.manual_seed(0)
    mlp = PixelCNNPP(DecoderConfig((1, 4, 4), levels=17, nr_resnet=1, nr_filters=8, nr_mix=2, code_shape=(3,),
                                   cond_filters=8, vector_cond="mlp")).eval()
    loaded = load_decoder(save_decoder(mlp, tmp_path / "mlp.pt"))
    x, code = rand_images(2, (1, 4, 4), 17), rand_code(2, (3,))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, code), mlp.log_prob(x, code))
    old = tiny((1, 4, 4), 17, (3,))
    path = save_decoder(old, tmp_path / "old.pt")
    raw = torch.load(path, weights_only=True)
    del raw["config"]["vector_cond"]
    torch.save(raw, path)
    loaded = load_decoder(path)
    assert loaded.cfg.vector_cond == "linear" and not hasattr(loaded, "cond_net")
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, code), old.log_prob(x, code))
    with pytest.raises(ValueError, match="vector_cond"):
        DecoderConfig((1, 4, 4), code_shape=(3,), vector_cond="deep")


def test_decoders_fitted_before_the_log_scale_cap_are_refused(tmp_path):
    path = save_decoder(tiny((1, 4, 4), 17, None), tmp_path / "decoder.pt")
    raw = torch.load(path, weights_only=True)
    raw["format"] = "decoders.pixelcnnpp/1"
    torch.save(raw, path)
    with pytest.raises(DecoderFileError, match="uncapped log-scales.*fit it again"):
        load_decoder(path)
