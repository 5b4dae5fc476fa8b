"""Î(X;H) = Ĥ(X) − Ĥ(X|H) from two PixelCNN++ decoders, with a paired 95% CI, plus Î(Y;H) from a probe.

Ĥ(X) is the held-out cross-entropy of an unconditional decoder q(x), Ĥ(X|H) that of a conditional decoder
q(x|h) with the same architecture and budget; both are scored on the SAME test images, so the estimate and its
interval come from per-image paired differences. Both are upper bounds of their entropies, so Î is an
estimate, not a bound: it is reported as is, negative values included. Units: bits per image unless named
`bits_per_dim` (bits per sub-pixel, D = C·H·W).

Paired fitting (q(x) and each q(x|h) both continued from a shared q0(x)) is on by default; see
`WARM_START_DEFAULT` for the measurements behind that choice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ibprobe.errors import ConfigError, DataError, JobFailed
from ibprobe.probe import probe_i_yh
from ibprobe.utils import apply_overrides, atomic_np_save, atomic_write_json, read_json, resolve_device, sanitize_name

__all__ = ["MIEstimate", "estimate_mi", "make_split", "paired_mi", "probe_i_yh", "default_decoder_config",
           "default_fit_config", "fit_decoder", "decoder_id", "continued_fit_config", "WARM_START_DEFAULT"]

MIN_TEST, MIN_TRAIN = 2, 4  # images; fewer cannot give a paired CI or a decoder train/val split
# Measured on the known-answer family flat4 (now under `ibprobe validate --hard`; N=400, 1x32x4 decoders;
# truths 0 / 1 / 2 / 2 / 130 bits for noise / id mod 2 / id / id map / image): independent fits (12 epochs,
# batch 50, lr 1e-2) gave
# -4.29 / 1.03 / 7.05 / 2.80 / 126.6; paired fitting (8 + 8 epochs, batch 16, lr 3e-3) gave
# -0.61 / 1.27 / 4.05 / 10.25 / 141.8. Sharing q0 cuts the error on the null code ~7x (the pair differs only by
# its code path), at the cost of one extra unconditional fit; neither fixes informative codes when q(x) itself
# is under-trained. Plain warm start (q(x|h) from q(x), Ĥ(X) from that same q(x)) is not offered: the conditional
# decoder would get extra training and the estimate an upward bias.
WARM_START_DEFAULT = True
_RUNTIME_FIT_FIELDS = ("device", "progress", "checkpoint_every", "eval_batch_size", "compile")


@dataclass(frozen=True)
class MIEstimate:
    """One I(X;H) estimate. Bits per image unless stated; `bits_per_dim` = bits / D."""

    bits: float                       # Î(X;H) = mean over test images of Ĥ(x) − Ĥ(x|h)
    ci_low: float                     # 95% t-interval of the paired differences
    ci_high: float
    h_x_bits: float                   # held-out mean −log2 q(x)
    h_x_given_h_bits: float           # held-out mean −log2 q(x|h)
    bits_per_dim: float
    n_test: int
    i_yh_bits: float | None = None    # H(Y) − CE(probe), when labels are given
    h_y_bits: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ split and CI
def _n_test(n: int, test_fraction: float) -> int:
    return int(math.floor(n * test_fraction + 0.5))


def make_split(n: int, labels=None, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of range(n) -> (train_idx, test_idx), sorted int64.

    With labels, stratified: each class gives its share of the round(n·test_fraction) test images
    (largest remainder), so class proportions match in both parts.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = _n_test(n, test_fraction)
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise DataError(f"{len(labels)} labels for {n} images; pass one label per image")
    classes, inv = np.unique(labels, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    quota = counts * n_test / max(n, 1)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")  # largest remainders get the leftovers
    take[order[: n_test - int(take.sum())]] += 1
    test = []
    for k in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inv == k))
        test.append(members[: take[k]])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64) if test else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(n), test_idx).astype(np.int64)
    return train_idx, test_idx


def paired_mi(h_x_per_image, h_x_given_h_per_image, *, dims: int) -> dict:
    """Î = mean of per-image differences −log2 q(x) + log2 q(x|h) on the same test images, bits per image.

    The 95% CI is a Student-t interval on the paired differences (mean ± t_{0.975,n−1}·sd/√n); it is
    symmetric around, hence always contains, the estimate. Returns keys bits, ci_low, ci_high, h_x_bits,
    h_x_given_h_bits, bits_per_dim, n_test (and se_bits, the standard error).
    """
    from scipy.stats import t as student_t

    a = np.asarray(h_x_per_image, dtype=np.float64).reshape(-1)
    b = np.asarray(h_x_given_h_per_image, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise DataError(f"paired_mi needs NLLs of the same test images: got {a.size} and {b.size} values")
    if a.size < 2:
        raise DataError(f"paired_mi needs at least 2 test images for a CI, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("paired_mi: per-image NLLs contain NaN or inf")
    d = a - b  # (N,) bits
    n = d.size
    bits = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.975, n - 1)) * se
    return {"bits": bits, "ci_low": bits - half, "ci_high": bits + half, "h_x_bits": float(a.mean()),
            "h_x_given_h_bits": float(b.mean()), "bits_per_dim": bits / int(dims), "n_test": int(n),
            "se_bits": se}


# ------------------------------------------------------------------------------------------------ configs
def default_decoder_config(image_shape, levels: int, code_shape=None, device: str = "cpu"):
    """A DecoderConfig sized to the image and device.

    ≤ 8×8: tiny (1 resnet block, 32 filters, 5 mixtures, no dropout): seconds per epoch on a CPU.
    32×32 and larger on CUDA: the paper decoder (5, 160, 10, dropout 0.5). Otherwise in between
    (2, 64, 5 on CPU or for ≤ 16×16 images; 3, 96, 10 on CUDA at 16×16).
    """
    from decoders import DecoderConfig

    c, h, w = (int(s) for s in image_shape)
    cuda = str(device).startswith("cuda")
    side = max(h, w)
    if side <= 8:
        size = dict(nr_resnet=1, nr_filters=32, nr_mix=5, dropout=0.0)
    elif cuda and side >= 32:
        size = dict(nr_resnet=5, nr_filters=160, nr_mix=10, dropout=0.5)
    elif cuda:
        size = dict(nr_resnet=3, nr_filters=96, nr_mix=10, dropout=0.3)
    else:
        size = dict(nr_resnet=2, nr_filters=64, nr_mix=5, dropout=0.1)
    return DecoderConfig(image_shape=(c, h, w), levels=int(levels),
                         code_shape=None if code_shape is None else tuple(int(s) for s in code_shape), **size)


def default_fit_config(image_shape, device: str = "cpu", seed: int = 0):
    """A FitConfig sized to the image: short, fast-decaying schedules for 8×8, longer for 32×32."""
    from decoders import FitConfig

    side = max(int(s) for s in tuple(image_shape)[1:])
    dev = str(device)
    if side <= 8:
        return FitConfig(epochs=40, batch_size=64, lr=5e-3, lr_decay=0.95, patience=6, seed=seed, device=dev)
    if side <= 16:
        return FitConfig(epochs=60, batch_size=64, lr=2e-3, lr_decay=0.97, patience=8, seed=seed, device=dev)
    return FitConfig(epochs=100, batch_size=64, lr=1e-3, lr_decay=0.98, patience=10, seed=seed, device=dev)


def decoder_id(decoder_cfg, fit_cfg) -> str:
    """Short stable id of a decoder recipe, e.g. 'pcnn-1x32x5-3f2a9c'.

    Hashes the decoder config (except code_shape, so every layer of one analysis shares the id) and the fit
    config (except runtime-only fields: device, progress, checkpointing, eval batch, compile).
    """
    d = {k: v for k, v in asdict(decoder_cfg).items() if k != "code_shape"}
    f = {k: v for k, v in asdict(fit_cfg).items() if k not in _RUNTIME_FIT_FIELDS}
    blob = json.dumps({"decoder": d, "fit": f}, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple)
                      else str(o))
    digest = hashlib.sha1(blob.encode()).hexdigest()[:6]
    return f"pcnn-{decoder_cfg.nr_resnet}x{decoder_cfg.nr_filters}x{decoder_cfg.nr_mix}-{digest}"


def continued_fit_config(fit_cfg, epochs_done: int):
    """The stage-2 FitConfig of paired fitting: same budget, lr continuing the decayed schedule of stage 1."""
    return dataclasses.replace(fit_cfg, lr=fit_cfg.lr * fit_cfg.lr_decay ** int(epochs_done))


def _resolve_decoder(decoder, image_shape, levels, device: str):
    """Base (unconditional) DecoderConfig from a DecoderConfig / dict of overrides / None; data fields win."""
    from decoders import DecoderConfig

    data = {"image_shape": tuple(image_shape), "levels": int(levels)}
    if decoder is None:
        return default_decoder_config(image_shape, levels, None, device)
    if isinstance(decoder, DecoderConfig):
        given = {"image_shape": tuple(decoder.image_shape), "levels": int(decoder.levels)}
        for k, v in data.items():
            if given[k] != v:
                raise ConfigError(f"decoder config has {k}={given[k]} but the data has {k}={v}; "
                                  f"leave {k} to the data")
        return decoder
    if isinstance(decoder, Mapping):
        over = dict(decoder)
        for k, v in data.items():
            if k in over and (tuple(over[k]) if k == "image_shape" else int(over[k])) != v:
                raise ConfigError(f"decoder override {k}={over[k]} contradicts the data ({k}={v}); drop it")
            over.pop(k, None)
        over.pop("code_shape", None)  # always taken from the codes
        return apply_overrides(default_decoder_config(image_shape, levels, None, device), over, "decoder")
    raise ConfigError(f"decoder must be a DecoderConfig or a dict of its fields, got {type(decoder).__name__}")


def _resolve_fit(fit, image_shape, device: str, seed: int, progress: bool):
    from decoders import FitConfig

    if fit is None or isinstance(fit, Mapping):
        cfg = apply_overrides(default_fit_config(image_shape, device, seed), dict(fit or {}), "fit")
    elif isinstance(fit, FitConfig):
        cfg = fit
    else:
        raise ConfigError(f"fit must be a FitConfig or a dict of its fields, got {type(fit).__name__}")
    return cfg if progress else dataclasses.replace(cfg, progress=False)


def _with_code(cfg, code_shape):
    if cfg.code_shape is not None and code_shape is not None and tuple(cfg.code_shape) != tuple(code_shape):
        raise ConfigError(f"decoder config has code_shape={tuple(cfg.code_shape)} but the codes have shape "
                          f"{tuple(code_shape)}; leave code_shape to the data")
    return dataclasses.replace(cfg, code_shape=None if code_shape is None else tuple(int(s) for s in code_shape))


# ------------------------------------------------------------------------------------------------ one decoder
def _init_weights(model: torch.nn.Module, init_from) -> None:
    """Copy matching weights from a decoder.pt path, a module or a state dict (strict=False, shapes must match)."""
    from decoders import load_decoder

    if isinstance(init_from, (str, os.PathLike)):
        state = load_decoder(init_from).state_dict()
    elif isinstance(init_from, torch.nn.Module):
        state = init_from.state_dict()
    else:
        state = dict(init_from)
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith("code_")}
    model.load_state_dict(keep, strict=False)


def _fit_one(images_train, codes_train, images_test, codes_test, decoder_cfg, fit_cfg, *, workdir=None,
             init_from=None, desc=""):
    """Fit one decoder -> (test NLL bits [N_test], info, model)."""
    from decoders import PixelCNNPP, fit, save_decoder

    torch.manual_seed(fit_cfg.seed)  # weight init
    model = PixelCNNPP(decoder_cfg)
    if init_from is not None:
        _init_weights(model, init_from)
    try:
        res = fit(model, images_train, codes_train, fit_cfg, eval_images=images_test, eval_codes=codes_test,
                  workdir=workdir, desc=desc)
    except FloatingPointError:
        raise
    except ValueError as e:  # the decoders package reports bad inputs and foreign workdirs this way
        raise DataError(f"{desc or 'decoder'}: {e}") from e
    info = {"curve": res.curve, "best_epoch": int(res.best_epoch), "epochs_run": int(res.epochs_run),
            "stopped_early": bool(res.stopped_early), "decoder": decoder_id(decoder_cfg, fit_cfg)}
    nll = np.asarray(res.eval_nll_bits, dtype=np.float64)
    if workdir is not None:
        wd = Path(workdir)
        save_decoder(model, wd / "decoder.pt", extra={"decoder_id": info["decoder"], "desc": desc})
        atomic_write_json(wd / "fit_log.json", {**info, "decoder_config": asdict(decoder_cfg),
                                                "fit_config": asdict(fit_cfg)})
        atomic_np_save(wd / "test_nll_bits.npy", nll)
        atomic_write_json(wd / "result.json", {**info, "n_test": int(nll.size),
                                               "h_bits": float(nll.mean()) if nll.size else None})
    return nll, info, model


def fit_decoder(images_train, codes_train, images_test, codes_test, decoder_cfg, fit_cfg, *, workdir=None,
                init_from=None, desc: str = "") -> tuple[np.ndarray, dict]:
    """Fit one PixelCNN++ on the train images; return its per-image test NLL (bits, float64 [N_test]) and info.

    info: {"curve", "best_epoch", "epochs_run", "stopped_early", "decoder": decoder_id(...)}.
    With `workdir` the fit is resumable (fit_state.pt), and writes decoder.pt, fit_log.json,
    test_nll_bits.npy and, last, result.json; when result.json exists it is returned without fitting.
    `init_from`: a decoder.pt path (or module / state dict) whose matching weights initialise this decoder.
    """
    if workdir is not None:
        wd = Path(workdir)
        if (wd / "result.json").exists() and (wd / "test_nll_bits.npy").exists():
            info = read_json(wd / "result.json")
            info.pop("n_test", None), info.pop("h_bits", None)
            return np.load(wd / "test_nll_bits.npy").astype(np.float64), info
    nll, info, _ = _fit_one(images_train, codes_train, images_test, codes_test, decoder_cfg, fit_cfg,
                            workdir=workdir, init_from=init_from, desc=desc)
    return nll, info


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


def _check_images(images, levels: int) -> np.ndarray:
    x = _as_numpy(images, "images")
    if x.ndim != 4:
        hint = " (add a channel axis: images[:, None])" if x.ndim == 3 else ""
        raise DataError(f"images must have shape [N, C, H, W], got rank {x.ndim} shape {tuple(x.shape)}{hint}")
    if not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"images must be integers in [0, levels-1] (uint8 or int64), got dtype {x.dtype}; "
                        f"quantise them first, e.g. np.round(x * (levels - 1)).astype(np.uint8)")
    if x.shape[2] % 4 or x.shape[3] % 4:
        raise DataError(f"image height and width must be multiples of 4, got {x.shape[2]}x{x.shape[3]}; pad or crop")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= levels:
        raise DataError(f"image values lie in [{lo}, {hi}] but levels={levels} allows [0, {levels - 1}]; "
                        f"pass the right levels= (e.g. 17 for digits, 256 for 8-bit data)")
    return x


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
        h = h.reshape(n, -1)  # (N, D): other ranks are treated as flat vectors
    for s in range(0, n, 4096):
        if not np.isfinite(h[s:s + 4096]).all():
            raise DataError(f"codes {name!r} contain NaN or inf (rows {s}..{min(n, s + 4096) - 1}); "
                            f"check the layer's activations or drop those images")
    return h


def _needed(test_fraction: float) -> int:
    for n in range(2, 10**7):
        t = _n_test(n, test_fraction)
        if t >= MIN_TEST and n - t >= MIN_TRAIN:
            return n
    return 10**7


# ------------------------------------------------------------------------------------------------ estimate_mi
def estimate_mi(images, codes, *, levels: int | None = None, labels=None, decoder=None, fit=None,
                test_fraction: float = 0.2, seed: int = 0, device: str = "auto", workdir=None,
                progress: bool = True, warm_start: bool = WARM_START_DEFAULT,
                init_epochs: int | None = None) -> MIEstimate | dict[str, MIEstimate]:
    """Estimate I(X;H) (bits per image) for codes H of images X, and I(Y;H) when labels are given.

    Args:
        images: integer [N, C, H, W] in [0, levels-1] (numpy or tensor); H, W multiples of 4.
        codes: one array [N, ...] or a dict name -> array. [N] is read as [N, 1]; [N, D] is a vector and
            [N, C', H', W'] a spatial map; other ranks are flattened to vectors [N, prod(...)].
        levels: intensity levels L (default 256).
        labels: int [N]; stratify the split and add the I(Y;H) probe.
        decoder: DecoderConfig or dict of overrides on `default_decoder_config`.
        fit: FitConfig (used as is) or dict of overrides on `default_fit_config` (whose device is `device`).
        test_fraction, seed: the one train/test split shared by all decoders (and the default fit seed).
        workdir: folder for resumable, idempotent decoder jobs (_unconditional/, one folder per code).
        warm_start: paired fitting. A first q0(x) is fitted; then the reference q(x) AND every q(x|h) are
            fitted again from q0's weights with the same budget, seed and batch order (lr continuing q0's decayed
            schedule), so each pair shares its whole history except the (zero-initialised) code path. Costs one
            extra unconditional fit.
        init_epochs: epochs of q0(x) when warm_start (default: the fit's epochs). A longer q0 is cheap (it is
            fitted once) and leaves less for each pair to learn, but the pairs continue its decayed learning rate,
            so their code paths then learn more slowly.

    Returns:
        An MIEstimate, or a dict name -> MIEstimate when `codes` is a dict (q(x) is fitted once and shared).
    """
    levels = 256 if levels is None else int(levels)
    x = _check_images(images, levels)
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
    n_test = _n_test(n, test_fraction)
    if n_test < MIN_TEST or n - n_test < MIN_TRAIN:
        raise DataError(f"{n} images are too few for a test_fraction={test_fraction} split: need at least "
                        f"{_needed(test_fraction)} ({MIN_TEST} test, {MIN_TRAIN} train)")

    dev = resolve_device(device).type
    base = _resolve_decoder(decoder, x.shape[1:], levels, dev)
    fcfg = _resolve_fit(fit, x.shape[1:], dev, seed, progress)
    tr, te = make_split(n, y, test_fraction, seed)
    x_tr, x_te = x[tr], x[te]
    dims = int(np.prod(x.shape[1:]))
    wd = Path(workdir) if workdir is not None else None

    def run(code_tr, code_te, cfg, sub: str, init, desc: str, fit_cfg):
        sub_dir = wd / sub if wd is not None else None
        try:
            if sub_dir is not None and (sub_dir / "result.json").exists():
                nll, info = fit_decoder(x_tr, code_tr, x_te, code_te, cfg, fit_cfg, workdir=sub_dir, desc=desc)
                return nll, None, info
            nll, info, model = _fit_one(x_tr, code_tr, x_te, code_te, cfg, fit_cfg, workdir=sub_dir,
                                        init_from=init, desc=desc)
            return nll, model, info
        except FloatingPointError as e:
            raise JobFailed(f"{desc}: {e}; try a lower fit lr or grad_clip") from e

    ubase = _with_code(base, None)
    if init_epochs is not None and (isinstance(init_epochs, bool) or not isinstance(init_epochs, numbers.Integral)
                                    or init_epochs < 1):
        raise ConfigError(f"init_epochs must be a positive integer or None, got {init_epochs!r}")
    if warm_start:  # stage 1: q0(x); then q(x) and every q(x|h) continue from it with the same budget
        fcfg0 = fcfg if init_epochs is None else dataclasses.replace(fcfg, epochs=int(init_epochs))
        _, q_x, info0 = run(None, None, ubase, "_unconditional_init", None, "q0(x)", fcfg0)
        if q_x is None:  # finished earlier in workdir: warm-start from its file
            q_x = wd / "_unconditional_init" / "decoder.pt"
        fcfg = continued_fit_config(fcfg, info0["epochs_run"])
        h_x, _, _ = run(None, None, ubase, "_unconditional", q_x, "q(x)", fcfg)
    else:
        h_x, q_x, _ = run(None, None, ubase, "_unconditional", None, "q(x)", fcfg)
    out: dict[str, MIEstimate] = {}
    for name, h in code_map.items():
        cfg = _with_code(base, h.shape[1:])
        h_xh, _, _ = run(h[tr], h[te], cfg, sanitize_name(name), q_x if warm_start else None, f"q(x|{name})",
                         fcfg)
        mi = paired_mi(h_x, h_xh, dims=dims)
        extra: dict[str, Any] = {}
        if y is not None and len(np.unique(y[tr])) > 1:
            pr = probe_i_yh(h[tr], y[tr], h[te], y[te], num_classes=int(y.max()) + 1, seed=seed)
            extra = {"i_yh_bits": pr["i_yh_bits"], "h_y_bits": pr["h_y_bits"]}
        out[name] = MIEstimate(bits=mi["bits"], ci_low=mi["ci_low"], ci_high=mi["ci_high"],
                               h_x_bits=mi["h_x_bits"], h_x_given_h_bits=mi["h_x_given_h_bits"],
                               bits_per_dim=mi["bits_per_dim"], n_test=mi["n_test"], **extra)
    return out["code"] if single else out
