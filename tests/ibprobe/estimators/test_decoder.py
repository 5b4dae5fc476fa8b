"""estimate_mi: split, paired CI, input validation, determinism, shared unconditional decoder."""
import json

import numpy as np
import pytest

from ibprobe.errors import ConfigError, DataError
from ibprobe.estimators.decoder import MIEstimate, estimate_mi, paired_mi


# ------------------------------------------------------------------------------------------------ split and CI
def test_the_api_splits_as_the_pipeline_does(monkeypatch):
    """estimate_mi and the run-folder pipeline share one split: data.stratified_split, stratified by the labels."""
    import ibprobe.estimators.decoder as est
    from ibprobe.data import stratified_split

    seen = []
    monkeypatch.setattr(est, "stratified_split", lambda *a: seen.append(stratified_split(*a)) or seen[-1])
    x, h = _data(n=40)
    labels = np.arange(40) % 3
    with pytest.raises(ConfigError):  # stop right after the split
        estimate_mi(x, h, levels=4, labels=labels, decoder={"bogus": 1}, seed=5, progress=False)
    tr, te = seen[0]
    assert np.array_equal(te, stratified_split(labels, 0.2, 5)[1]) and len(tr) + len(te) == 40


def test_paired_ci_contains_estimate_and_is_a_t_interval():
    rng = np.random.default_rng(0)
    hx = 100 + rng.normal(size=50)
    hxh = hx - 2 + 0.5 * rng.normal(size=50)
    r = paired_mi(hx, hxh, dims=64)
    d = hx - hxh
    assert r.bits == pytest.approx(d.mean())
    assert r.ci_low < r.bits < r.ci_high
    # t_{0.975, 49} = 2.0096
    assert r.ci_high - r.bits == pytest.approx(2.0096 * d.std(ddof=1) / np.sqrt(50), rel=1e-3)
    assert r.bits_per_dim == pytest.approx(r.bits / 64)
    assert r.h_x_bits == pytest.approx(hx.mean()) and r.n == 50


def test_paired_mi_reports_negative_values_unclipped():
    r = paired_mi(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.5, 3.0]), dims=1)
    assert r.bits < 0 and r.ci_low <= r.bits <= r.ci_high


# ------------------------------------------------------------------------------------------------ bad inputs
def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (n, 1, 4, 4)).astype(np.uint8)
    return x, rng.normal(size=(n, 3)).astype(np.float32)


@pytest.mark.parametrize("mutate, match", [
    (lambda x, h: (x, h[:-1]), "rows but there are 40 images"),
    (lambda x, h: (x.astype(np.float32), h), "must hold integers"),
    (lambda x, h: (x + 4, h), r"outside \[0, 3\] \(levels=4\)"),
    (lambda x, h: (x.astype(np.int64) - 1, h), r"values in \[-1"),
    (lambda x, h: (x, np.where(np.arange(3) == 1, np.nan, h)), "NaN or inf"),
    (lambda x, h: (x[:, 0], h), "rank 3"),
    (lambda x, h: (x[:5], h[:5]), "leaves 4 train and 1 test images; need at least 4 and 2"),
])
def test_bad_inputs_raise_data_error(mutate, match):
    x, h = mutate(*_data())
    with pytest.raises(DataError, match=match):
        estimate_mi(x, h, levels=4, progress=False)


def test_label_count_mismatch_and_bad_fraction():
    x, h = _data()
    with pytest.raises(DataError, match="39 labels for 40 images"):
        estimate_mi(x, h, levels=4, labels=np.zeros(39, np.int64), progress=False)
    with pytest.raises(ConfigError, match="test_fraction"):
        estimate_mi(x, h, levels=4, test_fraction=1.5, progress=False)


def test_nan_in_one_code_of_a_dict_names_it():
    x, h = _data()
    bad = h.copy()
    bad[7, 0] = np.inf
    with pytest.raises(DataError, match="'b'.*rows 0..39"):
        estimate_mi(x, {"a": h, "b": bad}, levels=4, progress=False)


# ------------------------------------------------------------------------------------------------ with decoders
TINY_DEC = {"nr_resnet": 1, "nr_filters": 8, "nr_mix": 2, "dropout": 0.0}
TINY_FIT = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "patience": 0}


def _structured(n=60, seed=0):
    """Two constant-band templates (levels 4): code = template id carries 1 bit."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    x = (2 * t[:, None, None, None] + rng.integers(0, 2, (n, 1, 4, 4))).astype(np.uint8)
    return x, t


def _est(x, codes, **kw):
    return estimate_mi(x, codes, levels=4, decoder=TINY_DEC, fit=TINY_FIT, device="cpu", progress=False, **kw)


def test_same_seed_same_estimate_and_ci_contains_it():
    x, t = _structured()
    a = _est(x, t.astype(np.float32), seed=1)
    b = _est(x, t.astype(np.float32), seed=1)
    assert isinstance(a, MIEstimate)
    assert a == b
    assert a.ci_low <= a.bits <= a.ci_high
    assert a.n == 12 and a.bits_per_dim == pytest.approx(a.bits / 16)
    assert a.bits == pytest.approx(a.h_x_bits - a.h_x_given_h_bits)


def _count_fits(monkeypatch):
    import decoders.fitting

    calls, lrs = _Calls(), []
    real = decoders.fitting.fit

    def counting(model, images, codes=None, cfg=None, **kw):
        calls.append(None if codes is None else tuple(codes.shape[1:]))
        lrs.append(cfg.lr)
        return real(model, images, codes, cfg, **kw)

    monkeypatch.setattr(decoders.fitting, "fit", counting)
    calls.lrs = lrs
    return calls


class _Calls(list):
    pass


def test_dict_of_codes_fits_unconditional_once(monkeypatch, tmp_path):
    calls = _count_fits(monkeypatch)
    x, t = _structured()
    codes = {"vec": np.eye(2, dtype=np.float32)[t], "map": t[:, None, None, None].repeat(2, 2).repeat(2, 3) * 1.0,
             "scalar": t}
    out = _est(x, codes, workdir=tmp_path, paired=False)
    assert set(out) == {"vec", "map", "scalar"}
    assert calls.count(None) == 1 and len(calls) == 4
    assert sorted(c for c in calls if c) == [(1,), (1, 2, 2), (2,)]
    for name in ("_unconditional", "vec", "map", "scalar"):
        assert (tmp_path / name / "result.json").exists() and (tmp_path / name / "decoder.pt").exists()
    # The jobs are idempotent: a second call with the same workdir fits nothing and gives the same numbers.
    calls.clear()
    again = _est(x, codes, workdir=tmp_path, paired=False)
    assert calls == [] and again == out


def test_labels_add_i_yh():
    x, t = _structured(80)
    e = _est(x, np.eye(2, dtype=np.float32)[t], labels=t)
    assert e.h_y_bits == pytest.approx(1.0, abs=0.05)
    assert e.i_yh_bits == pytest.approx(e.h_y_bits, abs=0.1)


def test_decoder_overrides_that_contradict_the_data_are_config_errors():
    x, t = _structured()
    with pytest.raises(ConfigError, match="levels"):
        estimate_mi(x, t, levels=4, decoder={"levels": 256}, progress=False)
    with pytest.raises(ConfigError, match="nr_filterz"):
        estimate_mi(x, t, levels=4, decoder={"nr_filterz": 3}, progress=False)


def test_paired_fitting_continues_q0_for_reference_and_codes(monkeypatch, tmp_path):
    calls = _count_fits(monkeypatch)
    x, t = _structured()
    e = _est(x, {"vec": np.eye(2, dtype=np.float32)[t]}, workdir=tmp_path, paired=True)["vec"]
    assert calls == [None, None, (2,)]  # q0(x), then q(x) and q(x|h) both from q0
    best = json.loads((tmp_path / "_unconditional_init" / "result.json").read_text())["best_epoch"]
    lr, decay = TINY_FIT["lr"], 0.95  # default lr_decay of the 8x8 fit config
    assert calls.lrs[0] == pytest.approx(lr) and calls.lrs[1:] == pytest.approx([lr * decay**best] * 2)
    plain = np.load(tmp_path / "_unconditional" / "test_nll_bits.npy").mean()
    assert e.h_x_plain_bits == pytest.approx(plain)
    if e.h_x_ref == "plain":
        assert e.h_x_bits == pytest.approx(plain)
    else:
        assert e.h_x_ref == "codes:vec" and e.h_x_bits == pytest.approx(
            np.load(tmp_path / "vec" / "mix_test_nll_bits.npy").mean())


def test_the_second_stage_continues_q0_from_its_best_epoch(monkeypatch):
    """q(x) and q(x|h) start from q0's best weights, so their learning rate continues from that epoch, not from
    the last one q0 ran."""
    import decoders.fitting

    lrs = []
    real = decoders.fitting.fit

    def best_at_one(model, images, codes=None, cfg=None, **kw):
        lrs.append(cfg.lr)
        res = real(model, images, codes, cfg, **kw)
        res.best_epoch = 1  # as if q0's validation NLL was lowest after its first epoch
        return res

    monkeypatch.setattr(decoders.fitting, "fit", best_at_one)
    x, t = _structured(n=30)
    _est(x, t.astype(np.float32), paired=True, init_epochs=3, reference="plain")
    assert lrs == pytest.approx([TINY_FIT["lr"]] + [TINY_FIT["lr"] * 0.95] * 2)


def test_labels_and_codes_give_reference_candidates(tmp_path):
    """With labels, a label decoder q(x|y) is fitted too; the reference is the best of the plain q(x), the label
    mixture and the code mixtures on validation images, and `reference="plain"` keeps q(x)."""
    x, t = _structured(80)
    codes = {"id": np.eye(2, dtype=np.float32)[t], "noise": np.random.default_rng(0).normal(size=(80, 2))}
    best = _est(x, codes, labels=t, workdir=tmp_path, mixture_codes=4)
    names = {"plain", "labels", "codes:id", "codes:noise"}
    val = {n: np.load(tmp_path / d / f).mean() for n, d, f in [
        ("plain", "_unconditional", "val_nll_bits.npy"), ("labels", "_labels", "mix_val_nll_bits.npy"),
        ("codes:id", "id", "mix_val_nll_bits.npy"), ("codes:noise", "noise", "mix_val_nll_bits.npy")]}
    assert best["id"].h_x_ref == best["noise"].h_x_ref == min(val, key=val.get) and set(val) == names
    plain = _est(x, codes, labels=t, reference="plain")
    assert plain["id"].h_x_ref == "plain" and plain["id"].h_x_bits == plain["id"].h_x_plain_bits


def test_without_the_label_reference_one_workdir_gives_both_label_modes(tmp_path):
    """label_reference=False: no label decoder, the reference is chosen among the plain q(x) and the code mixtures;
    the same workdir then gives the estimate with the label reference by fitting q(x|y) only."""
    x, t = _structured(80)
    codes = {"id": np.eye(2, dtype=np.float32)[t], "noise": np.random.default_rng(0).normal(size=(80, 2))}
    without = _est(x, codes, labels=t, workdir=tmp_path, mixture_codes=4, label_reference=False)
    assert not (tmp_path / "_labels").exists() and without["id"].h_x_ref != "labels"
    val = {n: np.load(tmp_path / d / f).mean() for n, d, f in [
        ("plain", "_unconditional", "val_nll_bits.npy"), ("codes:id", "id", "mix_val_nll_bits.npy"),
        ("codes:noise", "noise", "mix_val_nll_bits.npy")]}
    assert without["id"].h_x_ref == min(val, key=val.get)
    stamp = (tmp_path / "id" / "result.json").stat().st_mtime_ns
    both = _est(x, codes, labels=t, workdir=tmp_path, mixture_codes=4)
    assert (tmp_path / "_labels" / "result.json").is_file()
    assert (tmp_path / "id" / "result.json").stat().st_mtime_ns == stamp  # read, not fitted again
    for name in codes:  # the same q(x|h) on the same test images: raw = reference - q(x|h), whatever the reference
        q_both, q_without = (e[name].h_x_bits - e[name].bits_raw for e in (both, without))
        assert q_both == pytest.approx(q_without, abs=1e-9)


def test_init_epochs_sets_q0s_budget_only(monkeypatch):
    import decoders.fitting

    epochs = []
    real = decoders.fitting.fit

    def counting(model, images, codes=None, cfg=None, **kw):
        epochs.append(cfg.epochs)
        return real(model, images, codes, cfg, **kw)

    monkeypatch.setattr(decoders.fitting, "fit", counting)
    x, t = _structured(n=30)
    _est(x, t.astype(np.float32), paired=True, init_epochs=3)
    assert epochs == [3, TINY_FIT["epochs"], TINY_FIT["epochs"]]  # q0(x), then q(x) and q(x|h)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="init_epochs"):
            _est(x, t.astype(np.float32), init_epochs=bad)
