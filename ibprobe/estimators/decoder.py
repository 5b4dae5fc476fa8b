"""The decoder estimate of I(X;H): Î = Ĥ(X) − Ĥ(X|H) from per-image NLL differences on the same test images, with a
95% Student-t interval over images (`paired_mi`, `paired_difference`), and `estimate_mi`, which fits the decoders
for arrays in memory with the pipeline's own paired fit (ibprobe.fit). Bits per image unless named `bits_per_dim`
(bits per sub-pixel, D = C·H·W).

`estimate_mi` splits the images once (seeded, stratified by the labels when given), fits q(x) and one q(x|h) per
code, chooses one reference for Ĥ(X) on validation images (ibprobe.estimators.reference) and measures every code
against it, as the pipeline does.

Paired fitting is on by default. Measured on the known-answer family flat4 (`ibprobe validate --hard`'s budget:
N=400, 1x32x4 decoders, 8 epochs, batch 16, lr 3e-3; reference plain; truths 0 / 1 / 2 / 2 / 130 bits for
noise / id mod 2 / id / band map / image): independent fits gave 3.80 / 4.49 / 11.21 / 7.89 / 148.5, paired
fitting 0.20 / 1.21 / 4.59 / 9.42 / 144.4. Sharing q0 cuts the error of weak codes many-fold (the pair differs
only by its code path), at the cost of one extra unconditional fit; it does not fix informative codes when q(x)
itself is under-trained (ε_X = 16.4 bits there), which the best reference addresses. Plain warm start (q(x|h) from
q(x), Ĥ(X) from that same q(x)) is not offered: the conditional decoder would get extra training and the estimate
an upward bias.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from einops import rearrange

from decoders import DecoderConfig, DecoderError, FitConfig, check_images
from ibprobe.config import AnalysisConfig, Runtime, Settings
from ibprobe.data import stratified_split
from ibprobe.errors import ConfigError, DataError
from ibprobe.estimators.probe import probe_i_yh
from ibprobe.estimators.reference import CODES, LABELS, PLAIN, choose, with_ignorance
from ibprobe.fit import FitData, Mixture, Start, fit_decoder
from ibprobe.rundir.paths import DECODER, sanitize_name


@dataclass(frozen=True)
class Difference:
    """A paired difference mean(a − b) of per-image NLLs on the same images, bits per image, with its 95% Student-t
    interval, its standard error, degrees of freedom and two-sided p-value; `n` images, `seeds` fits of each."""

    bits: float
    ci_low: float
    ci_high: float
    n: int
    se_bits: float
    df: float = 0.0
    p_value: float = 1.0
    seeds: int = 1
    seed_sd: float | None = None  # the sd over seeds of each seed's mean difference (None with one seed)

    @property
    def significant(self) -> bool:
        """Whether the 95% interval excludes 0 (before any correction for many comparisons)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class MIEstimate:
    """One I(X;H) estimate on n test images. Bits per image unless stated; `bits_per_dim` = bits / D."""

    bits: float                       # Î(X;H) = mean over test images of −log2 q_ref(x) + log2 q(x|h)
    ci_low: float                     # 95% t-interval of the paired differences
    ci_high: float
    n: int
    h_x_bits: float                   # held-out mean −log2 q_ref(x), the reference (see ibprobe.estimators.reference)
    h_x_given_h_bits: float           # held-out mean −log2 q(x|h)
    bits_per_dim: float
    i_yh_bits: float | None = None    # Î(Y;H) = CE(prior) − CE(probe), when labels are given
    h_y_bits: float | None = None     # CE(prior): the held-out labels' cross-entropy under the label frequencies
    h_x_ref: str = "plain"            # which density the reference is
    h_x_plain_bits: float | None = None  # held-out mean −log2 q(x) of the plain unconditional decoder
    seeds: int = 1                    # fits of each decoder (--repeats); the estimate is their mean
    seed_sd: float | None = None      # sd of Î over seeds, None with one seed
    bits_raw: float | None = None     # Î from q(x|h) alone, before optional ignorance (None: not computed)
    from_decoder: bool = True         # the row's density is q(x|h); False: optional ignorance chose the reference

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(a, b) -> Difference:
    """mean(a − b) of two per-image NLL arrays (bits) on the same images, with a 95% Student-t interval, symmetric
    around, hence always containing, the estimate.

    a, b: [N] (one fit each: the interval is over images, mean ± t_{0.975,n−1}·sd/√n) or [K, N] (K seeds of each
    fit, --repeats, on the same N images). With K seeds the standard error adds the variation over images (of the
    per-image means over seeds) and over seeds (of the per-seed means): se² = s²_images/N + s²_seeds/K, with
    Welch–Satterthwaite degrees of freedom. That counts the seed-by-image interaction twice, so it is conservative.

    >>> d = paired_difference([3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 2.5, 4.5])
    >>> round(d.bits, 3), d.n, d.significant
    (2.0, 4, True)
    """
    from scipy.stats import t as student_t  # scipy.stats costs ~0.7 s to import: only here, not at CLI start-up
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2:
        raise DataError(f"a paired estimate needs NLLs of the same images: got shapes {a.shape} and {b.shape}")
    k, n = a.shape
    if n < 2:
        raise DataError(f"a paired estimate needs at least 2 images for a CI, got {n}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("per-image NLLs contain NaN or inf")
    d = a - b  # (K, N) bits
    bits = float(d.mean())
    per_image = d.mean(0)  # (N,)
    var_img = float(per_image.var(ddof=1)) / n
    seed_sd = None
    if k > 1:
        per_seed = d.mean(1)  # (K,)
        seed_sd = float(per_seed.std(ddof=1))
        var_seed = seed_sd ** 2 / k
        se = math.sqrt(var_img + var_seed)
        den = var_img ** 2 / (n - 1) + var_seed ** 2 / (k - 1)
        df = (var_img + var_seed) ** 2 / den if den > 0 else float(n - 1)
    else:
        se, df = math.sqrt(var_img), float(n - 1)
    half = float(student_t.ppf(0.975, df)) * se
    p = float(2 * student_t.sf(abs(bits) / se, df)) if se > 0 else (1.0 if bits == 0 else 0.0)
    return Difference(bits, bits - half, bits + half, int(n), se, df, p, int(k), seed_sd)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of p-values for many comparisons (controls the family-wise error rate):
    p_(i) -> max_{j <= i} min(1, (m − j + 1) p_(j)) in ascending order.

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def paired_mi(h_x_per_image, h_x_given_h_per_image, *, dims: int, probe=None, ref: str = "plain",
              h_x_plain_bits: float | None = None) -> MIEstimate:
    """Î(X;H) = mean_i(−log2 q_ref(x_i) + log2 q(x_i|h_i)) from the reference's and the conditional decoder's
    per-image test NLLs (bits) on the same images ([N], or [K, N] for K seeds), with its 95% CI
    (`paired_difference`); `dims` = D sub-pixels per image; `probe` an optional ProbeEstimate of I(Y;H); `ref` names
    the reference.

    >>> est = paired_mi([60.0, 62.0, 61.0, 63.0], [50.0, 51.0, 52.0, 50.0], dims=64)
    >>> round(est.bits, 2), est.n, round(est.bits_per_dim, 4)
    (10.75, 4, 0.168)
    """
    d = paired_difference(h_x_per_image, h_x_given_h_per_image)
    a = float(np.mean(np.asarray(h_x_per_image, dtype=np.float64)))
    b = float(np.mean(np.asarray(h_x_given_h_per_image, dtype=np.float64)))
    # [K, N]: K seeds of both fits on the same N images; the estimate is the mean over seeds
    return MIEstimate(bits=d.bits, ci_low=d.ci_low, ci_high=d.ci_high, n=d.n, h_x_bits=a, h_x_given_h_bits=b,
                      seeds=d.seeds, seed_sd=d.seed_sd,
                      bits_per_dim=d.bits / int(dims), i_yh_bits=None if probe is None else probe.bits,
                      h_y_bits=None if probe is None else probe.h_y_bits, h_x_ref=ref,
                      h_x_plain_bits=a if h_x_plain_bits is None and ref == "plain" else h_x_plain_bits)


__all__ = ["Difference", "MIEstimate", "paired_difference", "holm", "paired_mi", "estimate_mi"]

MIN_TEST, MIN_TRAIN = 2, 4  # images; fewer cannot give a paired CI or a decoder train/val split


def estimate_mi(images, codes, *, levels: int | None = None, labels=None, decoder=None, fit=None,
                test_fraction: float = 0.2, seed: int = 0, device: str = "auto", workdir=None,
                progress: bool = True, paired: bool = True, init_epochs: int | None = None,
                reference: str = "best", mixture_codes: int = 16, ignorance: str = "switch",
                code_lr: str = "trunk", label_reference: bool = True) -> MIEstimate | dict[str, MIEstimate]:
    """Estimate I(X;H) (bits per image) for codes H of images X, and I(Y;H) when labels are given.

    Args:
        images: integer [N, C, H, W] in [0, levels-1] (numpy or tensor); H, W multiples of 4.
        codes: one array [N, ...] or a dict name -> array. [N] is read as [N, 1]; [N, D] is a vector and
            [N, C', H', W'] a spatial map; other ranks are flattened to vectors [N, prod(...)].
        levels: intensity levels L (default 256).
        labels: int [N]; stratify the split and add the I(Y;H) probe.
        decoder: DecoderConfig or dict of overrides on `ibprobe.config.default_decoder_config`.
        fit: FitConfig (used as is) or dict of overrides on `default_fit_config` (whose device is `device`).
        test_fraction, seed: the one train/test split shared by all decoders (and the default fit seed).
        workdir: folder for resumable, idempotent decoder jobs (_unconditional/, one folder per code).
        paired: paired fitting (see ibprobe.config.Settings). Costs one extra unconditional fit.
        init_epochs: epochs of q0(x) when paired (default: the fit's epochs). A longer q0 is cheap (it is
            fitted once) and leaves less for each pair to learn, but the pairs continue its decayed learning rate,
            so their code paths then learn more slowly.
        reference: "best": Ĥ(X) from the best of the plain q(x), the label mixture (with labels) and each code's
            mixture (1/M) sum_j q(x|h_j), chosen on the decoders' validation images (see ibprobe.estimators.reference);
            "plain": q(x) alone.
        mixture_codes: M per code mixture (0: none); costs M forward passes per validation and test image.
        ignorance: "switch" (a code whose q(x|h) does not beat the reference on validation images reads the
            reference: Î = 0) or "none" (see ibprobe.estimators.reference.with_ignorance). `bits_raw` keeps the
            value of q(x|h) alone.
        code_lr: the code path of each paired fit: "trunk" (the trunk's continued schedule) or "fresh" (its own).
        label_reference: with labels, whether the label mixture is a reference candidate. False leaves the labels
            to the split and the probe, so that the same `workdir` gives the estimates without and then with the
            label reference from one set of fits (the known-answer suites do this).

    Returns:
        An MIEstimate, or a dict name -> MIEstimate when `codes` is a dict (q(x) is fitted once and shared).

    >>> rng = np.random.default_rng(0)
    >>> bit = rng.integers(0, 2, 300)                                   # X: a black or a white 4x4 image
    >>> images = np.repeat(bit, 16).reshape(300, 1, 4, 4).astype(np.uint8)
    >>> est = estimate_mi(images, bit.astype(np.float32), levels=2, device="cpu", progress=False,
    ...                   decoder={"nr_resnet": 1, "nr_filters": 8, "nr_mix": 1}, fit={"epochs": 8})
    >>> est.n, abs(est.bits - 1.0) < 0.25                               # H(X) = I(X;bit) = 1 bit
    (60, True)
    """
    levels = 256 if levels is None else int(levels)
    x = _as_numpy(images, "images")
    if x.ndim == 3:
        raise DataError(f"images must have shape [N, C, H, W], got rank 3 shape {tuple(x.shape)} "
                        f"(add a channel axis: images[:, None])")
    try:
        check_images(x, levels)
    except DecoderError as e:
        raise DataError(str(e)) from None
    n = x.shape[0]
    single = not isinstance(codes, Mapping)
    code_map = {"code": codes} if single else dict(codes)
    if not code_map:
        raise DataError("codes is an empty dict; pass at least one array of codes")
    code_map = {str(k): _check_codes(v, n, str(k)) for k, v in code_map.items()}
    y = None
    if labels is not None:
        y = _as_numpy(labels, "labels").reshape(-1)
        if len(y) != n:
            raise DataError(f"{len(y)} labels for {n} images; pass one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    tr, te = stratified_split(np.zeros(n, np.int64) if y is None else y, test_fraction, seed)
    if len(te) < MIN_TEST or len(tr) < MIN_TRAIN:
        raise DataError(f"{n} images are too few for a test_fraction={test_fraction} split: it leaves {len(tr)} "
                        f"train and {len(te)} test images; need at least {MIN_TRAIN} and {MIN_TEST}")

    settings = _settings(decoder, fit, x.shape[1:], levels, device, seed, paired, init_epochs, reference,
                         mixture_codes, ignorance, code_lr)
    runtime = Runtime(device=device, progress=progress)
    x_tr, x_te = x[tr], x[te]
    dims = int(np.prod(x.shape[1:]))
    wd = Path(workdir) if workdir is not None else None
    best = settings.reference != "plain"

    def one(role: str, sub: str, h, q0: Start | None, desc: str, mixture=None):
        codes_tr, codes_te = (None, None) if h is None else (h[tr], h[te])
        return fit_decoder(settings, runtime, role, FitData(x_tr, codes_tr, x_te, codes_te),
                           workdir=None if wd is None else wd / sub, q0=q0, mixture=mixture, desc=desc)

    q0 = None
    if settings.paired:  # stage 1: q0(x); then every other decoder continues from it with the same budget
        f0 = one("q0", "_unconditional_init", None, None, "q0(x)")
        q0 = Start(f0.model if f0.model is not None else wd / "_unconditional_init" / DECODER,
                   int(f0.info["best_epoch"]))
    plain = one("reference", "_unconditional", None, q0, "q(x)")
    fitted = {name: one("conditional", sanitize_name(name), h, q0, f"q(x|{name})",
                        settings.mixture_codes if best and settings.mixture_codes else None)
              for name, h in code_map.items()}
    candidates = {PLAIN: (plain.val_nll, plain.test_nll)}
    candidates.update({CODES + name: (f.mix_val_nll, f.mix_test_nll) for name, f in fitted.items()
                       if f.mix_val_nll is not None})
    labelled = y is not None and len(np.unique(y[tr])) > 1
    if best and labelled and label_reference:
        k = int(y.max()) + 1
        onehot = np.eye(k, dtype=np.float32)
        lab = one("labels", "_labels", onehot[y], q0, "q(x|y)", Mixture(onehot, labels=y[tr]))
        candidates[LABELS] = (lab.mix_val_nll, lab.mix_test_nll)
    ref = choose({name: val for name, (val, _) in candidates.items()}, settings.reference)
    out: dict[str, MIEstimate] = {}
    for name, f in fitted.items():
        probe = None
        if labelled:
            probe = probe_i_yh(code_map[name][tr], y[tr], code_map[name][te], y[te], num_classes=int(y.max()) + 1,
                               seed=seed)
        ref_val, ref_test = candidates[ref]
        used, own = with_ignorance(ref_val, ref_test, f.val_nll, f.test_nll, settings.ignorance)
        out[name] = dataclasses.replace(
            paired_mi(ref_test, used, dims=dims, probe=probe, ref=ref, h_x_plain_bits=float(np.mean(plain.test_nll))),
            bits_raw=float(np.mean(ref_test) - np.mean(f.test_nll)), from_decoder=own)
    return out["code"] if single else out


def _settings(decoder, fit, image_shape, levels: int, device: str, seed: int, paired: bool,
              init_epochs, reference: str, mixture_codes: int, ignorance: str, code_lr: str) -> Settings:
    """Settings from DecoderConfig/FitConfig objects (used as they are) or dicts of overrides on the defaults."""
    if decoder is not None and not isinstance(decoder, (DecoderConfig, Mapping)):
        raise ConfigError(f"decoder must be a DecoderConfig or a dict of its fields, got {type(decoder).__name__}")
    if fit is not None and not isinstance(fit, (FitConfig, Mapping)):
        raise ConfigError(f"fit must be a FitConfig or a dict of its fields, got {type(fit).__name__}")
    req = AnalysisConfig(decoder={} if not isinstance(decoder, Mapping) else dict(decoder),
                         fit={} if not isinstance(fit, Mapping) else dict(fit), device=device, seed=int(seed),
                         paired=bool(paired), init_epochs=init_epochs, reference=reference,
                         mixture_codes=mixture_codes, ignorance=ignorance, code_lr=code_lr)
    settings = req.settings(image_shape, levels, decoder_data="heldout")
    if isinstance(decoder, DecoderConfig):
        for k, want in (("image_shape", tuple(int(s) for s in image_shape)), ("levels", int(levels))):
            got = tuple(decoder.image_shape) if k == "image_shape" else decoder.levels
            if got != want:
                raise ConfigError(f"decoder config has {k}={getattr(decoder, k)} but the data has {k}={want}; "
                                  f"leave {k} to the data")
        settings = dataclasses.replace(settings, decoder=dataclasses.replace(decoder, code_shape=None))
    if isinstance(fit, FitConfig):
        settings = dataclasses.replace(settings, fit=fit)
    return settings


# ------------------------------------------------------------------------------------------------ inputs
def _as_numpy(a, what: str) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()
        return a.numpy()
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{what} must be an array or tensor, got {type(a).__name__}") from e


def _check_codes(codes, n: int, name: str) -> np.ndarray:
    h = _as_numpy(codes, f"codes {name!r}")
    if h.ndim == 0 or h.shape[0] != n:
        raise DataError(f"codes {name!r} have {h.shape[0] if h.ndim else 0} rows but there are {n} images; "
                        f"pass one code per image, in the same order")
    if h.dtype == np.bool_ or not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise DataError(f"codes {name!r} must be real numbers, got dtype {h.dtype}")
    if not np.issubdtype(h.dtype, np.floating):
        h = h.astype(np.float32)
    if h.ndim == 1:
        h = h[:, None]  # (N, 1)
    elif h.ndim not in (2, 4):
        h = rearrange(h, "n ... -> n (...)")  # other ranks are treated as flat vectors (N, D)
    for s in range(0, n, 4096):
        if not np.isfinite(h[s:s + 4096]).all():
            raise DataError(f"codes {name!r} contain NaN or inf (rows {s}..{min(n, s + 4096) - 1}); "
                            f"check the layer's activations or drop those images")
    return h
