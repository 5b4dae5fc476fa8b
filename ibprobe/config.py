"""Settings: what to train (TrainConfig), what to measure (AnalysisConfig, the request) and how the numbers are
made (Settings, the request resolved against the data and the device, pinned in DIR/analysis.json).

A request holds overrides ("nr_filters=32"); the defaults behind them depend on the image size and on the device
(a 2x64x5 decoder on a CPU, 5x160x10 on CUDA at 32x32). Settings hold the resolved values, so a folder started
on a CPU and resumed, or farmed out, on a GPU keeps one decoder architecture: a resume reads the pinned Settings
and never resolves defaults again. Fields that only change speed or logging (the device, progress, compile, ...)
are the Runtime of the process that runs a job, never pinned.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from decoders import DecoderConfig, DecoderError, FitConfig
from decoders.device import resolve_device as _resolve_device
from decoders.fitting import RUNTIME_FIELDS
from decoders.io import jsonable
from ibprobe.errors import ConfigError

from ibprobe.values import (SEED_MAX, annotation_text, check_int, check_seed, from_text,  # noqa: F401
                            parse_value, typed)



REGIMES = ("classify", "autoencode")
CHECKPOINT_KEYS = ("checkpoint_epochs", "checkpoint_steps", "checkpoint_schedule")  # TrainConfig: where checkpoints are
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")
AUGMENTS = ("none", "crop", "crop_flip")
REFERENCES = ("best", "plain")
CODE_LRS = ("trunk", "fresh")  # the code path of a paired fit: the trunk's continued schedule, or its own fresh one
IGNORANCE = ("switch", "none")  # optional ignorance: a row may read the reference when q(x|h) is not better


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; 'cpu', 'cuda' or 'cuda:N'. Anything else is a ConfigError."""
    try:
        return _resolve_device(device)
    except DecoderError as e:
        raise ConfigError(f"--device: {e}") from None


def apply_overrides(cfg, overrides: Mapping | None, what: str = "config"):
    """dataclasses.replace(cfg, **overrides), each value checked against its field's type first.

    This is where `K=V` options become typed settings: an int field takes an integer (1.5 is an error, never a
    silent 2; 2.0 is 2), a float field a finite number, a bool field true/false, a tuple field a value or a comma
    list; None only where the field allows it. Unknown keys are a ConfigError naming the valid fields; the ranges
    are the config's own `__post_init__` checks, run by the replace.
    """
    if not overrides:
        return cfg
    names = {f.name: f.type for f in fields(cfg)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {', '.join(unknown)}; valid fields: {', '.join(names)}")
    clean = {k: typed(f"{what} {k}", names[k], v) for k, v in overrides.items()}
    try:
        return dataclasses.replace(cfg, **clean)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what}: {e}") from None


# ------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainConfig:
    """One training run. Losses are per example in nats (cross-entropy) or per pixel (MSE on [0, 1] pixels)."""

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    images_path: str | None = None  # dataset "npy"
    labels_path: str | None = None
    levels: int | None = None
    test_fraction: float = 0.2
    images_key: str | None = None  # the array of an .npz images_path / labels_path
    labels_key: str | None = None
    model: str = "resnet"
    model_args: dict = field(default_factory=dict)
    regime: str = "classify"
    epochs: int = 8
    checkpoint_epochs: tuple[int, ...] | None = None  # None -> default_checkpoint_epochs(epochs)
    checkpoint_steps: tuple[int, ...] | None = None  # explicit optimizer steps (with checkpoint_epochs: both sets)
    checkpoint_schedule: str | None = None  # "log:N" (N log-spaced steps), "epochs" or None (checkpoint_epochs)
    seed: int = 0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    batch_size: int = 64
    augment: str = "none"  # none | crop (random crop, padding H//8) | crop_flip (+ flips); True = crop_flip
    normalize: tuple | None = None  # ((mean per channel), (std per channel)) on the [0, 1] scale
    max_train: int | None = None  # use a seeded subset of this many training images (quick runs)

    def __post_init__(self):
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "crop_flip" if self.augment else "none")
        if self.regime not in REGIMES:
            raise ConfigError(f"regime must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        if self.regime == "autoencode" and self.model in ("resnet", "rir"):
            raise ConfigError("the autoencode regime needs an autoencoder: use --model resnet_ae")
        if self.regime == "classify" and self.model == "resnet_ae":
            raise ConfigError("resnet_ae is an autoencoder: train it with --train regime=autoencode, or classify "
                              "with --model resnet")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        for name, lo, hi in (("epochs", 0, None), ("batch_size", 1, None), ("seed", 0, SEED_MAX)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo, hi))
        for name, lo in (("max_train", 1), ("levels", 2)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), lo))
        for name, ok, want in (("lr", lambda v: v > 0, "> 0"), ("momentum", lambda v: 0 <= v <= 1, "in [0, 1]"),
                               ("weight_decay", lambda v: v >= 0, ">= 0"),
                               ("test_fraction", lambda v: 0 < v < 1, "in (0, 1)")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not ok(v):
                raise ConfigError(f"{name} must be a finite number {want}, got {v!r}")
        if self.checkpoint_epochs is not None:
            given = self.checkpoint_epochs
            eps = tuple(sorted(set(check_int("checkpoint_epochs", e) for e in
                                   (given if isinstance(given, (tuple, list)) else (given,)))))
            bad = [e for e in eps if e < 0 or e > self.epochs]
            if bad:
                raise ConfigError(f"checkpoint epochs {bad} are outside 0..{self.epochs}")
            object.__setattr__(self, "checkpoint_epochs", eps)
        if self.checkpoint_steps is not None:
            given = self.checkpoint_steps
            steps = tuple(sorted(set(check_int("checkpoint_steps", s, 0) for s in
                                     (given if isinstance(given, (tuple, list)) else (given,)))))
            object.__setattr__(self, "checkpoint_steps", steps)
        self._check_schedule()
        if self.normalize is not None:
            try:
                norm = tuple(tuple(float(v) for v in np.atleast_1d(p)) for p in self.normalize)
            except (TypeError, ValueError):
                norm = ()
            if len(norm) != 2 or len(norm[0]) != len(norm[1]) or min(norm[1], default=0) <= 0:
                raise ConfigError(f"normalize must be (means, stds) with one positive std per mean, e.g. "
                                  f"normalize=0.5,0.25 for one channel; got {self.normalize!r}")
            object.__setattr__(self, "normalize", norm)
        object.__setattr__(self, "model_args", {k: _tupled(v) for k, v in dict(self.model_args).items()})

    def _check_schedule(self) -> None:
        sched = self.checkpoint_schedule
        if sched is None or sched == "epochs":
            if sched == "epochs" and self.checkpoint_steps is not None:
                raise ConfigError("checkpoint_schedule=epochs takes checkpoints at checkpoint_epochs only; drop "
                                  "checkpoint_steps, or the schedule to have both")
            return
        n = log_count(sched)
        if self.checkpoint_epochs is not None or self.checkpoint_steps is not None:
            raise ConfigError(f"checkpoint_schedule={sched} places every checkpoint itself; drop checkpoint_epochs "
                              f"and checkpoint_steps, or the schedule")
        object.__setattr__(self, "checkpoint_schedule", f"log:{n}")

    def schedule_epochs(self) -> tuple[int, ...]:
        """The epochs an epoch schedule takes checkpoints at (checkpoint_epochs, else 0, 1, 2, 4, ... and the last);
        () for a log schedule or explicit steps alone."""
        if self.checkpoint_schedule not in (None, "epochs") or (
                self.checkpoint_steps is not None and self.checkpoint_epochs is None):
            return ()
        return self.checkpoint_epochs if self.checkpoint_epochs is not None else default_checkpoint_epochs(self.epochs)

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimizer steps of one epoch over `n_train` images (the last batch may be smaller)."""
        return max(1, math.ceil(int(n_train) / self.batch_size))

    def schedule_steps(self, steps_per_epoch: int) -> tuple[int, ...]:
        """The optimizer steps this run takes checkpoints at, when an epoch is `steps_per_epoch` steps: "log:N" gives
        `log_steps(N, last step)`; otherwise checkpoint_steps and the steps that end the schedule's epochs. A step
        beyond the last one is a ConfigError."""
        last = self.epochs * int(steps_per_epoch)
        if self.checkpoint_schedule not in (None, "epochs"):
            return log_steps(log_count(self.checkpoint_schedule), last)
        steps = set(self.checkpoint_steps or ()) | {e * int(steps_per_epoch) for e in self.schedule_epochs()}
        beyond = sorted(s for s in steps if s > last)
        if beyond:
            raise ConfigError(f"checkpoint_steps {beyond} are beyond the run's last step {last} ({self.epochs} epochs "
                              f"of {steps_per_epoch} steps); give steps in 0..{last}")
        return tuple(sorted(steps))

    def dataset_spec(self) -> dict:
        """Keyword arguments of ibprobe.data.load_dataset for this run's data (download never re-triggered)."""
        spec = {"name": self.dataset, "data_root": self.data_root, "seed": self.seed,
                "test_fraction": self.test_fraction, "images_path": self.images_path,
                "labels_path": self.labels_path, "levels": self.levels}
        spec.update({k: v for k, v in (("images_key", self.images_key), ("labels_key", self.labels_key)) if v})
        return spec if self.max_train is None else {**spec, "max_train": int(self.max_train)}


def _tupled(v: Any) -> Any:
    return tuple(_tupled(x) for x in v) if isinstance(v, (list, tuple)) else v


def log_count(schedule: str) -> int:
    """N of a checkpoint schedule "log:N" (an integer >= 2: the initialisation and the last step at least)."""
    kind, _, n = str(schedule).partition(":")
    try:
        count = int(n)
    except ValueError:
        count = 0
    if kind.strip() != "log" or count < 2:
        raise ConfigError(f"checkpoint_schedule must be epochs or log:N with N >= 2 checkpoints, got {schedule!r}")
    return count


def log_steps(n: int, last: int) -> tuple[int, ...]:
    """`n` distinct optimizer steps from 0 (the initialisation) to `last`, both included, log-spaced in between.

    The n - 1 steps after 0 start at step 1 and grow geometrically to `last`; each next step is placed log-evenly
    between the one before and `last`, at least one step later, so rounding at the start (1, 2, 3, ... where the
    spacing is below one step) never merges two checkpoints and the spacing stays geometric afterwards. A run of
    fewer than n distinct steps (last + 1 < n) takes a checkpoint at every step.

    >>> log_steps(8, 690)    # digits: 30 epochs of 23 steps
    (0, 1, 3, 9, 27, 80, 235, 690)
    >>> log_steps(5, 3)
    (0, 1, 2, 3)
    """
    n, last = int(n), int(last)
    if last + 1 <= n:
        return tuple(range(last + 1))
    if n < 2:
        return (0,) if n == 1 else ()
    out = [0, 1] if n > 2 else [0]
    for left in range(n - len(out), 0, -1):  # steps still to place, the last of them `last`
        prev = out[-1]
        nxt = round(prev * (last / prev) ** (1.0 / left)) if prev > 0 else last
        out.append(min(max(prev + 1, nxt), last - (left - 1)))
    return tuple(out)


def default_checkpoint_epochs(epochs: int) -> tuple[int, ...]:
    """0, 1, 2, 4, 8, ... and the last epoch."""
    out = {0, int(epochs)}
    e = 1
    while e < epochs:
        out.add(e)
        e *= 2
    return tuple(sorted(out))


def config_from_dict(d: dict) -> TrainConfig:
    """TrainConfig from a config.json / checkpoint config (extra keys ignored)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------ analysis
def _pinned_decoder(d: dict) -> dict:
    """A decoder config as pinned and hashed: without code_shape (every layer shares it), and without vector_cond
    at its default "linear", the only form before the field existed, so that folders and decoder ids made before
    it stay valid."""
    return {k: v for k, v in d.items() if k != "code_shape" and not (k == "vector_cond" and v == "linear")}


def default_decoder_config(image_shape, levels: int, device: str = "cpu") -> DecoderConfig:
    """An unconditional DecoderConfig sized to the image and device.

    <= 8x8: tiny (1 resnet block, 32 filters, 5 mixtures, no dropout): seconds per epoch on a CPU.
    32x32 and larger on CUDA: the paper decoder (5, 160, 10, dropout 0.5). Otherwise in between
    (2, 64, 5 on CPU or for <= 16x16 images; 3, 96, 10 on CUDA at 16x16).
    """
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
    return DecoderConfig(image_shape=(c, h, w), levels=int(levels), **size)


def default_fit_config(image_shape, device: str = "cpu", seed: int = 0) -> FitConfig:
    """A FitConfig sized to the image: `epochs` is a cap; a fit stops on a validation plateau (`patience` epochs
    without an improvement of `min_delta` bits per image). Short, fast-decaying schedules for 8x8, longer for 32x32.

    8x8 (measured on known-answer families of 1x8x8 images, N = 2000, 1x32x5 decoders): patience 3 with
    min_delta 0.05 bits per image gave the same or smaller errors than patience 6 (0.16 against 0.17-0.19 bits
    mean |error| over 18 cases) with 35-50% fewer epochs per paired fit; patience 1 missed 4-5 of 18 cases, and
    min_delta 0.5 doubled the errors. A decoder given the image itself gains ~0.001 bit per epoch for tens of
    epochs: min_delta is what stops it.
    """
    side = max(int(s) for s in tuple(image_shape)[1:])
    dev = str(device)
    if side <= 8:
        return FitConfig(epochs=40, batch_size=64, lr=5e-3, lr_decay=0.95, patience=3, min_delta=0.05, seed=seed,
                         device=dev)
    if side <= 16:
        return FitConfig(epochs=60, batch_size=64, lr=2e-3, lr_decay=0.97, patience=5, min_delta=0.05, seed=seed,
                         device=dev)
    return FitConfig(epochs=100, batch_size=64, lr=1e-3, lr_decay=0.98, patience=8, min_delta=0.05, seed=seed,
                     device=dev)


@dataclass(frozen=True)
class Runtime:
    """How this process runs decoder jobs. Never pinned: on a CPU none of it changes a number."""

    device: str = "auto"
    progress: bool = True
    keep_fit_state: bool = False  # keep each finished job's fit_state.pt (optimizer moments; ~3x the decoder)
    fit: tuple = ()  # runtime FitConfig fields given as overrides, ((name, value), ...), e.g. compile

    def fit_config(self, pinned: FitConfig) -> FitConfig:
        """`pinned` with this process's device, progress and runtime overrides."""
        return dataclasses.replace(pinned, device=str(resolve_device(self.device)), progress=bool(self.progress),
                                   **dict(self.fit))


@dataclass(frozen=True)
class Settings:
    """The resolved settings that make the numbers, pinned in DIR/analysis.json. Bits are per image.

    decoder: the unconditional DecoderConfig; a job for a layer adds that layer's code shape.
    fit: the FitConfig of one decoder (its runtime fields are filled in per process, see Runtime).
    paired: paired fitting. A first q0(x) is fitted (for `init_epochs`, default the fit's epochs); then the
        reference q(x) and every q(x|h) continue from q0's weights (its best epoch's) with the same budget, seed and
        batch order, the learning rate continuing q0's decayed schedule from that epoch, so each pair differs only
        in its (zero-started) code path.
    decoder_data: the side of the network's training split ("heldout" or "train") whose images the decoders and
        the probe are fitted and tested on.
    reference: "best" (of the plain q(x), the label mixture and the code mixtures, chosen on validation images)
        or "plain" (q(x) alone, as in the paper).
    mixture_codes: M, the codes of each code mixture (1/M) sum_j q(x|h_j); 0: no code mixtures.
    code_lr: the code path of every paired fit after q0: "trunk" (the trunk's continued schedule) or "fresh" (its own
        Adam group, from the fit's lr with its own decay from the fit's start).
    ignorance: optional ignorance (V-information's conditional family contains the predictor that ignores h):
        "switch" (a row whose q(x|h) is not better than the reference on the validation images reads the
        reference, Î = 0) or "none" (each row from its own q(x|h)).
    """

    decoder: DecoderConfig
    fit: FitConfig
    seed: int = 0
    probe: bool = True
    paired: bool = True
    init_epochs: int | None = None
    decoder_data: str = "heldout"
    reference: str = "best"
    mixture_codes: int = 16
    code_lr: str = "trunk"
    ignorance: str = "switch"

    def __post_init__(self):
        for name, allowed in (("code_lr", CODE_LRS), ("ignorance", IGNORANCE)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.decoder.code_shape is not None:
            raise ConfigError("the pinned decoder config is the unconditional one; leave code_shape to the codes")
        if self.init_epochs is not None:
            check_int("init_epochs", self.init_epochs, 1)
        if self.decoder_data not in ("heldout", "train"):
            raise ConfigError(f"decoder_data must be heldout or train, got {self.decoder_data!r}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        check_int("--mixture-codes", self.mixture_codes, 0)

    def decoder_for(self, code_shape=None) -> DecoderConfig:
        """The DecoderConfig of one job: the pinned one with the code's shape (None: unconditional)."""
        shape = None if code_shape is None else tuple(int(s) for s in code_shape)
        return dataclasses.replace(self.decoder, code_shape=shape)

    def stage_fit(self, stage: str, q0_best_epoch: int | None = None, repeat: int = 0) -> FitConfig:
        """The FitConfig of a stage: "q0" (paired fitting's start) or "q" (the references and every q(x|h)).

        With paired fitting, "q" continues q0's schedule from the epoch whose weights it starts from. Repeat r > 0
        (--repeats) fits with seed + 1000 r: another initialisation, batch order and train/validation split of the
        same decoder-training images.
        """
        fit = self.fit if not repeat else dataclasses.replace(self.fit, seed=self.fit.seed + 1000 * int(repeat))
        if stage == "q0":
            return fit if self.init_epochs is None else dataclasses.replace(fit, epochs=int(self.init_epochs))
        if not self.paired:
            return fit
        if q0_best_epoch is None:
            raise ValueError("paired fitting continues q0's schedule: give q0's best epoch")
        code = {"code_lr": fit.lr, "code_lr_decay": fit.lr_decay} if self.code_lr == "fresh" else {}
        return dataclasses.replace(fit, lr=fit.lr * fit.lr_decay ** int(q0_best_epoch), **code)

    @property
    def decoder_id(self) -> str:
        """Short stable id of the decoder recipe, e.g. 'pcnn-1x24x3-173727-paired'.

        Hashes the decoder config (without code_shape, so every layer shares it) and the fit config without its
        runtime fields; '-paired' marks paired fitting.
        """
        d = _pinned_decoder(asdict(self.decoder))
        f = {k: v for k, v in asdict(self.fit).items() if k not in RUNTIME_FIELDS}
        blob = json.dumps({"decoder": d, "fit": f}, sort_keys=True,
                          default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        digest = hashlib.sha1(blob.encode()).hexdigest()[:6]
        d = self.decoder
        return f"pcnn-{d.nr_resnet}x{d.nr_filters}x{d.nr_mix}-{digest}" + ("-paired" if self.paired else "")

    def to_dict(self) -> dict:
        """JSON-ready; runtime fit fields are left out."""
        return jsonable({"decoder": _pinned_decoder(self.decoder.to_dict()),
                         "fit": {k: v for k, v in asdict(self.fit).items() if k not in RUNTIME_FIELDS},
                         "seed": int(self.seed), "probe": bool(self.probe), "paired": bool(self.paired),
                         "init_epochs": self.init_epochs, "decoder_data": self.decoder_data,
                         "reference": self.reference, "mixture_codes": int(self.mixture_codes),
                         "code_lr": self.code_lr, "ignorance": self.ignorance})

    @classmethod
    def from_dict(cls, d: Mapping) -> "Settings":
        try:
            fit = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d["fit"]).items()}
            return cls(decoder=DecoderConfig(**d["decoder"]), fit=FitConfig(**fit), seed=int(d["seed"]),
                       probe=bool(d["probe"]), paired=bool(d["paired"]), init_epochs=d.get("init_epochs"),
                       decoder_data=d["decoder_data"], reference=d["reference"],
                       mixture_codes=int(d["mixture_codes"]), code_lr=d["code_lr"], ignorance=d["ignorance"])
        except (KeyError, TypeError, ValueError, DecoderError) as e:
            raise ConfigError(f"pinned settings are incomplete or invalid ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class AnalysisConfig:
    """What to measure and how hard: layers, and overrides of the default decoder and fit configs."""

    layers: tuple = ()
    decoder: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    device: str = "auto"
    jobs: int = 1  # decoder jobs at once; 0 = one per CPU core (CPU) or 1 (CUDA)
    seed: int = 0
    probe: bool = True
    paired: bool = True
    init_epochs: int | None = None  # epochs of q0(x) in paired fitting (None: the fit's epochs)
    retry_failed: bool = False
    progress: bool = True
    keep_fit_state: bool = False
    decoder_data: str = "auto"  # heldout | train | auto (held out where it holds enough images)
    reference: str = "best"  # best | plain
    mixture_codes: int = 16  # M of the code-mixture references (0: none)
    code_lr: str | None = None  # trunk | fresh: the code path's schedule in paired fits (see Settings); None: the
    # preset's, else trunk
    ignorance: str = "switch"  # switch | none: optional ignorance (see Settings)
    repeats: int = 1  # every decoder fitted with this many seeds; the spread between them is reported
    chain: tuple = ()  # layers of which each is a function of the one before (default: our models' tap order)
    bins: int = 30  # the binning baseline's bins over each layer's observed range
    kde_noise_var: float = 0.1  # the KDE baseline's noise variance, in the activations' units squared

    def __post_init__(self):
        for name, lo, hi in (("jobs", 0, None), ("seed", 0, SEED_MAX), ("repeats", 1, None),
                             ("mixture_codes", 0, None), ("bins", 1, None)):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), lo, hi)
        if self.decoder_data not in ("auto", "heldout", "train"):
            raise ConfigError(f"--decoder-data must be auto, heldout or train, got {self.decoder_data!r}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if not float(self.kde_noise_var) > 0:
            raise ConfigError(f"--kde-noise-var must be > 0, got {self.kde_noise_var!r}")

    def runtime(self) -> Runtime:
        fit_runtime = tuple(sorted((k, v) for k, v in self.fit.items() if k in RUNTIME_FIELDS))
        return Runtime(device=self.device, progress=self.progress, keep_fit_state=self.keep_fit_state,
                       fit=fit_runtime)

    def settings(self, image_shape, levels: int, decoder_data: str = "heldout") -> Settings:
        """Resolve the overrides against the data and this process's device (the data side resolved by the
        caller, see ibprobe.rundir.sources.resolve_side); every invalid value fails here."""
        dev = resolve_device(self.device).type
        data = {"image_shape": tuple(int(s) for s in image_shape), "levels": int(levels)}
        over = dict(self.decoder)
        for k, v in data.items():
            if k in over and (tuple(over[k]) if k == "image_shape" else int(over[k])) != v:
                raise ConfigError(f"--decoder {k}={over[k]} contradicts the data ({k}={v}); drop it")
            over.pop(k, None)
        if "code_shape" in over:
            raise ConfigError("--decoder code_shape is taken from each layer's codes; drop it")
        decoder = apply_overrides(default_decoder_config(image_shape, levels, dev), over, "--decoder")
        fit = apply_overrides(default_fit_config(image_shape, dev, int(self.seed)),
                              {k: v for k, v in self.fit.items() if k not in RUNTIME_FIELDS}, "--fit")
        apply_overrides(fit, {k: v for k, v in self.fit.items() if k in RUNTIME_FIELDS}, "--fit")  # validate them
        check_seed(fit.seed, "--fit seed")
        return Settings(decoder=decoder, fit=fit, seed=int(self.seed), probe=bool(self.probe),
                        paired=bool(self.paired), init_epochs=self.init_epochs, decoder_data=decoder_data,
                        reference=self.reference, mixture_codes=self.mixture_codes, code_lr=self.code_lr or "trunk",
                        ignorance=self.ignorance)
