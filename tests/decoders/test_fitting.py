"""fit(): learns structure, resumes bit-identically, is deterministic, stops early, rejects bad input."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from decoders.fitting import FitConfig, NonFiniteLossError, evaluate_nll_bits, fit

L = 17
SHAPE = (1, 4, 4)

try:  # the real decoder once it exists; a tiny stand-in with the same surface until then
    import decoders.pixelcnn  # noqa: F401
    from decoders import DecoderConfig, PixelCNNPP  # noqa: F401
    HAVE_REAL = True
except Exception:  # pragma: no cover - only while decoders/pixelcnn.py is missing
    HAVE_REAL = False


@dataclass(frozen=True)
class _Cfg:
    image_shape: tuple = SHAPE
    levels: int = L
    code_shape: tuple | None = None
    dropout: float = 0.5


class StandIn(torch.nn.Module):
    """Independent categorical per sub-pixel (+ a zero-initialised linear code term), with dropout."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.logits = torch.nn.Parameter(torch.zeros(*cfg.image_shape, cfg.levels))
        d = 0 if cfg.code_shape is None else int(np.prod(cfg.code_shape))
        self.proj = torch.nn.Linear(max(d, 1), int(np.prod(cfg.image_shape)) * cfg.levels)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.register_buffer("code_mean", torch.zeros(max(d, 1)))
        self.register_buffer("code_std", torch.ones(max(d, 1)))

    def set_code_stats(self, codes):
        c = torch.as_tensor(codes).float().flatten(1)
        self.code_mean.copy_(c.mean(0))
        self.code_std.copy_(c.std(0).clamp_min(1e-6))

    def log_prob(self, x, code=None):
        logits = self.drop(self.logits).expand(x.shape[0], *self.logits.shape)  # (B, C, H, W, L)
        if code is not None:
            c = (code.flatten(1) - self.code_mean) / self.code_std
            logits = logits + self.proj(c).view_as(logits)
        lp = torch.log_softmax(logits, -1)
        return lp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)  # (B, C, H, W)

    def nll_bits(self, x, code=None):
        return -self.log_prob(x, code).flatten(1).sum(1) / math.log(2)


def make_model(code_shape=None, seed=0):
    torch.manual_seed(seed)
    if HAVE_REAL:
        cfg = DecoderConfig(image_shape=SHAPE, levels=L, nr_resnet=1, nr_filters=12, nr_mix=2, dropout=0.1,
                            code_shape=code_shape)
        return PixelCNNPP(cfg)
    return StandIn(_Cfg(code_shape=code_shape))


def templates_data(n=240, seed=0, noise=0.15, k=4):
    """k templates plus sparse +-1 noise: far less than log2(L) bits/dim of entropy."""
    temps = np.random.default_rng(1234).integers(2, L - 2, size=(k, *SHAPE))  # the same templates for every seed
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, k, size=n)
    flip = rng.random((n, *SHAPE)) < noise
    sign = rng.choice([-1, 1], size=(n, *SHAPE))
    x = np.clip(temps[ids] + flip * sign, 0, L - 1).astype(np.uint8)
    return x, ids


FAST = FitConfig(epochs=3, batch_size=32, lr=5e-3, lr_decay=0.95, patience=0, device="cpu", progress=False)


@pytest.mark.skipif(not HAVE_REAL, reason="needs decoders.pixelcnn (the stand-in cannot model the structure)")
def test_fit_learns_structure_far_below_uniform():
    # entropy about (1 + 16 * 0.34) / 16 = 0.4 bits/dim; log2(17) = 4.09 bits/dim
    x, _ = templates_data(n=120, noise=0.05, k=2)
    xt, _ = templates_data(n=64, seed=1, noise=0.05, k=2)
    model = make_model()
    uniform = evaluate_nll_bits(model, xt, device="cpu").mean() / 16  # untrained model: about log2(L)
    res = fit(model, x, cfg=replace(FAST, epochs=12, batch_size=16, lr=1e-2, betas=(0.9, 0.999)), eval_images=xt)
    bpd = res.eval_nll_bits.mean() / 16
    assert res.eval_nll_bits.shape == (64,) and res.eval_nll_bits.dtype == np.float64
    assert bpd < 0.5 * math.log2(L), (bpd, uniform)
    assert bpd < uniform - 1.0
    assert [r["epoch"] for r in res.curve] == list(range(1, res.epochs_run + 1))
    assert set(res.curve[0]) == {"epoch", "train_bits_per_dim", "val_bits_per_dim", "lr", "seconds"}
    assert res.curve[1]["lr"] == pytest.approx(res.curve[0]["lr"] * 0.95)
    assert res.curve[-1]["val_bits_per_dim"] < res.curve[0]["val_bits_per_dim"]
    assert res.n_train + res.n_val == 120 and res.n_val == 12


@pytest.mark.skipif(not HAVE_REAL, reason="needs decoders.pixelcnn")
def test_binary_edge_images_are_learnt_without_the_scale_running_off():
    """Two channels that only take levels 0 and L-1, constant over the image: H(X) = 2 bits, 1/16 bit/dim.

    Such data is fitted ever better by a logistic whose mean and scale grow together; before log-scales were
    capped the scale ran off to ~1e7 and the decoder stuck at exactly 1 bit/dim (it could no longer copy the
    neighbours).
    """
    from decoders import mixture

    seed = 0
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, 240)
    x = np.zeros((240, 2, 4, 4), np.uint8)
    x[:, 0] = (L - 1) * (t % 2)[:, None, None]
    x[:, 1] = (L - 1) * (t // 2)[:, None, None]
    torch.manual_seed(seed)
    model = PixelCNNPP(DecoderConfig(image_shape=(2, 4, 4), levels=L, nr_resnet=1, nr_filters=16, nr_mix=4,
                                     dropout=0.0))
    res = fit(model, x[:200], cfg=replace(FAST, epochs=6, batch_size=16, lr=1e-2), eval_images=x[200:])
    assert res.eval_nll_bits.mean() < 6.0, res.curve  # 32 sub-pixels; stuck = 32 bits, truth = 2 bits
    with torch.no_grad():
        mp = mixture.split_params(model(torch.as_tensor(x[200:])), 2, 4)
    assert torch.isfinite(mp.means).all() and mp.log_scales.max() <= mixture.MAX_LOG_SCALE


def test_log_scale_bound_is_smooth_and_keeps_a_gradient():
    from decoders import mixture

    raw = torch.tensor([-50.0, -7.5, -3.0, 0.0, 3.0, 50.0], requires_grad=True)
    out = mixture.bound_log_scales(raw)
    assert out[0] == mixture.MIN_LOG_SCALE and (out <= mixture.MAX_LOG_SCALE).all()
    assert out[2].item() == pytest.approx(-3.0, abs=0.05) and (out.diff() >= 0).all()
    out.sum().backward()
    assert (raw.grad[2:5] > 0).all()  # a gradient above the cap, so a raw value pushed high can come back


def test_killed_and_resumed_fit_is_bit_identical(tmp_path):
    x, _ = templates_data(n=96)
    xt, _ = templates_data(n=16, seed=1)
    cfg = replace(FAST, epochs=4)
    ref = fit(make_model(), x, cfg=cfg, eval_images=xt)

    class Killed(Exception):
        pass

    def kill_after_2(epoch):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(make_model(), x, cfg=cfg, eval_images=xt, workdir=tmp_path, _after_epoch=kill_after_2)
    assert (tmp_path / "fit_state.pt").exists()
    torch.manual_seed(12345)  # a different process would start from a different global RNG state
    res = fit(make_model(seed=99), x, cfg=cfg, eval_images=xt, workdir=tmp_path)
    assert res.resumed_from_epoch == 2
    np.testing.assert_array_equal(res.eval_nll_bits, ref.eval_nll_bits)
    for a, b in zip(res.curve, ref.curve):
        assert a["train_bits_per_dim"] == b["train_bits_per_dim"]
        assert a["val_bits_per_dim"] == b["val_bits_per_dim"]
    # a finished workdir: a rerun trains nothing and returns the same numbers
    again = fit(make_model(seed=7), x, cfg=cfg, eval_images=xt, workdir=tmp_path)
    assert again.resumed_from_epoch == 4
    np.testing.assert_array_equal(again.eval_nll_bits, ref.eval_nll_bits)


def test_workdir_with_other_config_is_refused(tmp_path):
    x, _ = templates_data(n=64)
    fit(make_model(), x, cfg=replace(FAST, epochs=1), workdir=tmp_path)
    with pytest.raises(ValueError, match="different configuration.*lr"):
        fit(make_model(), x, cfg=replace(FAST, epochs=1, lr=1e-3), workdir=tmp_path)
    with pytest.raises(ValueError, match="different configuration.*images"):
        fit(make_model(), templates_data(n=64, seed=5)[0], cfg=replace(FAST, epochs=1), workdir=tmp_path)
    (tmp_path / "fit_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        fit(make_model(), x, cfg=replace(FAST, epochs=1), workdir=tmp_path)


def test_same_seed_same_numbers_other_seed_differs():
    x, _ = templates_data(n=64)
    xt, _ = templates_data(n=8, seed=1)
    cfg = replace(FAST, epochs=2)
    a = fit(make_model(), x, cfg=cfg, eval_images=xt)
    b = fit(make_model(), x, cfg=cfg, eval_images=xt)
    c = fit(make_model(), x, cfg=replace(cfg, seed=1), eval_images=xt)
    np.testing.assert_array_equal(a.eval_nll_bits, b.eval_nll_bits)
    assert [r["train_bits_per_dim"] for r in a.curve] == [r["train_bits_per_dim"] for r in b.curve]
    assert not np.array_equal(a.eval_nll_bits, c.eval_nll_bits)


def test_early_stopping_restores_best_weights():
    x, _ = templates_data(n=64)
    # a learning rate this large makes validation NLL get worse after the first epochs
    cfg = replace(FAST, epochs=30, lr=0.5, lr_decay=1.0, patience=2, grad_clip=None)
    model = make_model()
    res = fit(model, x, cfg=cfg, eval_images=x)
    vals = [r["val_bits_per_dim"] for r in res.curve]
    assert res.stopped_early and res.epochs_run < 30
    assert res.epochs_run == res.best_epoch + 2
    assert res.best_val_bits_per_dim == min(vals) == vals[res.best_epoch - 1]
    assert all(v >= res.best_val_bits_per_dim for v in vals[res.best_epoch:])
    # the model holds the best weights: re-evaluating the val split reproduces the best val figure
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    val_idx = np.sort(perm[:res.n_val])
    again = evaluate_nll_bits(model, x[val_idx]).mean() / 16
    assert again == pytest.approx(res.best_val_bits_per_dim, rel=1e-6)


def test_nan_loss_raises(monkeypatch):
    x, _ = templates_data(n=64)
    model = make_model()
    calls = {"n": 0}
    real = model.nll_bits

    def nan_after_3(xb, code=None):
        calls["n"] += 1
        out = real(xb, code)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(model, "nll_bits", nan_after_3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 step 1"):
        fit(model, x, cfg=replace(FAST, epochs=3), desc="nan-test")
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_nan_loss_leaves_last_good_state(tmp_path, monkeypatch):
    x, _ = templates_data(n=64)
    model = make_model()
    real, calls = model.nll_bits, {"n": 0}

    def nan_in_epoch_2(xb, code=None):
        calls["n"] += 1
        out = real(xb, code)
        return out * float("nan") if calls["n"] > 3 else out  # 2 steps per epoch + 1 val batch

    monkeypatch.setattr(model, "nll_bits", nan_in_epoch_2)
    with pytest.raises(NonFiniteLossError):
        fit(model, x, cfg=replace(FAST, epochs=3), workdir=tmp_path)
    st = torch.load(tmp_path / "fit_state.pt", weights_only=True)
    assert st["epoch"] == 1 and all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


def test_conditional_fit_sets_code_stats_and_uses_codes():
    x, ids = templates_data(n=128)
    codes = (np.eye(4)[ids] * 3.0 + 5.0).astype(np.float16)  # one-hot template id, shifted and scaled
    model = make_model(code_shape=(4,))
    res = fit(model, x, codes, cfg=replace(FAST, epochs=4, lr=1e-2), eval_images=x[:32], eval_codes=codes[:32])
    assert res.eval_nll_bits.shape == (32,)
    assert torch.allclose(model.code_mean.float().flatten()[:4].cpu(),
                          torch.tensor(codes[:, :4].astype(np.float32)).mean(0), atol=0.3)
    wrong = evaluate_nll_bits(model, x[:32], codes[np.roll(np.arange(32), 1)])
    assert wrong.mean() != res.eval_nll_bits.mean()


@pytest.mark.parametrize("kwargs, match", [
    (dict(images=np.zeros((8, 1, 4, 5), np.uint8)), "shape"),
    (dict(images=np.zeros((8, 1, 4, 4), np.float32)), "integers"),
    (dict(images=np.full((8, 1, 4, 4), L, np.uint8)), "outside"),
    (dict(images=np.zeros((1, 1, 4, 4), np.uint8)), "too few"),
    (dict(codes=np.zeros((8, 4), np.float32)), "unconditional"),
    (dict(eval_codes=np.zeros((8, 4), np.float32)), "without eval_images"),
])
def test_input_validation_unconditional(kwargs, match):
    args = dict(images=np.zeros((8, 1, 4, 4), np.uint8))
    args.update(kwargs)
    images = args.pop("images")
    with pytest.raises(ValueError, match=match):
        fit(make_model(), images, cfg=FAST, **args)


@pytest.mark.parametrize("codes, match", [
    (None, "conditional"),
    (np.zeros((7, 4), np.float32), "7 rows"),
    (np.zeros((8, 3), np.float32), "shape"),
    (np.array([[np.nan, 0, 0, 0]] * 8, np.float32), "NaN"),
])
def test_input_validation_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        fit(make_model(code_shape=(4,)), np.zeros((8, 1, 4, 4), np.uint8), codes, cfg=FAST)


def test_fitconfig_rejects_nonsense():
    with pytest.raises(ValueError):
        FitConfig(val_fraction=1.0)
    with pytest.raises(ValueError):
        FitConfig(epochs=0)


def test_spatial_codes_from_float16_memmap(tmp_path):
    x, ids = templates_data(n=48)
    raw = np.lib.format.open_memmap(tmp_path / "codes.npy", mode="w+", dtype=np.float16, shape=(48, 2, 2, 2))
    raw[:] = (ids[:, None, None, None] + np.zeros((1, 2, 2, 2))).astype(np.float16)
    raw.flush()
    codes = np.load(tmp_path / "codes.npy", mmap_mode="r")
    model = make_model(code_shape=(2, 2, 2))
    res = fit(model, x, codes, cfg=replace(FAST, epochs=1), eval_images=x[:8], eval_codes=codes[:8])
    assert res.eval_nll_bits.shape == (8,) and np.isfinite(res.eval_nll_bits).all()
    assert float(model.code_std.flatten()[0]) == pytest.approx(float(np.std(ids[np.sort(
        torch.randperm(48, generator=torch.Generator().manual_seed(0)).numpy()[res.n_val:])])), rel=1e-3)


# ----------------------------------------------------------------------------------------------- paired-fit options
def test_start_candidate_keeps_the_starting_weights_when_training_does_not_beat_them():
    x, _ = templates_data(n=96)
    model = make_model()
    fit(model, x, cfg=replace(FAST, epochs=4))  # a trained start
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # a learning rate far too high: every epoch ends worse than the start on validation
    res = fit(model, x, cfg=replace(FAST, epochs=2, lr=5.0, grad_clip=None, start_candidate=True))
    assert res.best_epoch == 0 and res.epochs_run == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
    assert res.val_nll_bits.shape == (res.n_val,)


def test_min_delta_is_in_bits_per_image():
    x, _ = templates_data(n=96)
    big = fit(make_model(), x, cfg=replace(FAST, epochs=3, min_delta=1e6))  # no improvement ever counts
    assert big.best_epoch == 1
    dims = int(np.prod(SHAPE))
    res = fit(make_model(), x, cfg=replace(FAST, epochs=3))
    gains = [a["val_bits_per_dim"] - b["val_bits_per_dim"] for a, b in zip(res.curve, res.curve[1:])]
    just_below = min(g for g in gains if g > 0) * dims * 0.999  # the smallest gain, in bits per image, counts
    assert fit(make_model(), x, cfg=replace(FAST, epochs=3, min_delta=just_below)).best_epoch == res.best_epoch


@pytest.mark.skipif(not HAVE_REAL, reason="needs decoders.pixelcnn (code_path_names)")
def test_code_path_has_its_own_schedule_and_a_frozen_trunk_stays_put():
    from decoders.fitting import group_lr, split_code_path

    x, ids = templates_data(n=96)
    codes = np.eye(4, dtype=np.float32)[ids]
    model = make_model(code_shape=(4,))
    trunk, code = split_code_path(model)
    names = set(model.code_path_names())
    assert code and len(code) == sum(1 for n, _ in model.named_parameters() if n in names)
    assert len(trunk) + len(code) == len(list(model.parameters()))
    cfg = replace(FAST, lr=1e-3, code_lr=1e-2, code_lr_decay=0.5, code_warmup=1.0)
    assert group_lr(cfg, "trunk", 2, 0, 4) == pytest.approx(1e-3 * 0.95 ** 2)
    assert group_lr(cfg, "code", 0, 1, 4) == pytest.approx(1e-2 * 2 / 4)  # warm-up, per step
    assert group_lr(cfg, "code", 2, 0, 4) == pytest.approx(1e-2 * 0.5 ** 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = fit(model, x, codes, replace(FAST, epochs=2, code_lr=1e-2, freeze_trunk=True))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= names
    assert all(p.requires_grad for p in model.parameters())
    assert res.curve[0]["code_lr"] == pytest.approx(1e-2)


@pytest.mark.skipif(not HAVE_REAL, reason="needs decoders.pixelcnn")
def test_a_scalar_code_is_read_through_the_vector_mlp():
    """Images black or white by the parity of a template id T in {0..3} given as one number: H(X | T) = 0 while
    H(X) = 1 bit. Parity is no monotone function of T; the vector conditioning MLP (vector_cond="mlp") reads it to
    within 0.05 bit in 25 epochs. (A per-block linear bias of T, the default, ended 0.10 to 0.75 bit above it over
    seeds 0-2 with the same budget: its gates can bend the bias, slowly.)"""
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 240)
    x = np.broadcast_to(((t % 2) * (L - 1)).astype(np.uint8)[:, None, None, None], (240, *SHAPE)).copy()
    code = t[:, None].astype(np.float32)
    torch.manual_seed(0)
    model = PixelCNNPP(DecoderConfig(image_shape=SHAPE, levels=L, nr_resnet=1, nr_filters=12, nr_mix=2,
                                     dropout=0.0, code_shape=(1,), cond_filters=16, vector_cond="mlp"))
    assert "cond_net.hidden.weight" in model.code_path_names()
    res = fit(model, x[:200], code[:200], replace(FAST, epochs=25, batch_size=16, lr=1e-2), eval_images=x[200:],
              eval_codes=code[200:])
    assert float(res.eval_nll_bits.mean()) < 0.05
