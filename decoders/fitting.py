"""Fitting a (conditional) PixelCNN++ decoder by maximum likelihood.

`fit` splits the images into train/validation (seeded), trains with Adam and a per-epoch multiplicative
learning-rate decay, stops early on validation bits/dim (an improvement counts when it exceeds `min_delta` bits per
image), restores the best weights and returns per-image NLLs (bits) on the images it is asked to evaluate. With
`start_candidate` the weights the fit starts from are a candidate too (epoch 0), so a warm-started fit never ends
worse on validation than where it began. The code path of a conditional decoder can have its own learning-rate
schedule (`code_lr`, `code_lr_decay`, `code_warmup`) or be trained alone (`freeze_trunk`). With a `workdir` it checkpoints itself
(`fit_state.pt`, atomic) and resumes after a kill; on CPU a resumed fit is bit-identical to an
uninterrupted one, because every RNG state travels in the checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from decoders.device import (DeviceSetup, autocast, cuda_rng_states, eval_mode, set_cuda_rng_states, setup_device,
                             to_channels_last)
from decoders.errors import DecoderConfigError, DecoderInputError, FitStateError
from decoders.inputs import check_codes, check_model_images, take_rows
from decoders.io import atomic_torch_save, cpu_state, jsonable
from decoders.progress import progress

STATE_FILE = "fit_state.pt"
STATE_VERSION = 2  # 2: log-scales capped; a fit_state.pt of version 1 is not resumed
# FitConfig fields that change speed or logging only; a workdir may be resumed with other values for them.
RUNTIME_FIELDS = ("device", "compile", "checkpoint_every", "eval_batch_size", "progress")


class NonFiniteLossError(FloatingPointError):
    """The training loss (or gradient norm, or validation NLL) became NaN or infinite."""


@dataclass(frozen=True)
class FitConfig:
    """How to fit one decoder. Epochs count passes over the training split; bits/dim are per sub-pixel."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    lr_decay: float = 0.95              # multiplicative, per epoch: lr_e = lr * lr_decay**e
    val_fraction: float = 0.1           # of the images given to fit; at least one image
    patience: int = 5                   # epochs without val improvement before stopping; 0 disables
    min_delta: float = 0.0              # bits PER IMAGE a val improvement must exceed to count
    start_candidate: bool = False       # the starting weights are epoch 0's candidate for the best weights
    # the code path (PixelCNNPP.code_path_names: conditioning net and block projections) as its own Adam group:
    code_lr: float | None = None        # its lr at epoch 0 of this fit (None: the same as the trunk's)
    code_lr_decay: float | None = None  # its per-epoch decay from this fit's start (None: lr_decay)
    code_warmup: float = 0.0            # epochs of linear warm-up of the code path's lr, per step
    freeze_trunk: bool = False          # train the code path only (the trunk keeps its starting weights)
    seed: int = 0
    device: str = "auto"
    bf16: bool = True                   # bf16 autocast in training (CUDA only)
    channels_last: bool = True          # (CUDA only)
    compile: bool = False               # torch.compile the training loss
    checkpoint_every: int = 1           # epochs between fit_state.pt writes (needs workdir)
    eval_batch_size: int = 256
    grad_clip: float | None = 100.0     # max global grad norm; None disables
    betas: tuple[float, float] = (0.95, 0.9995)
    eval_bf16: bool = False             # evaluate under bf16 autocast too (default: float32 evals)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise DecoderConfigError(f"FitConfig.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise DecoderConfigError("FitConfig.batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0 or not self.lr_decay > 0:
            raise DecoderConfigError("FitConfig.lr and lr_decay must be > 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise DecoderConfigError(f"FitConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.patience < 0 or self.checkpoint_every < 1:
            raise DecoderConfigError("FitConfig.patience must be >= 0 and checkpoint_every >= 1")
        if self.min_delta < 0 or self.code_warmup < 0:
            raise DecoderConfigError("FitConfig.min_delta and code_warmup must be >= 0")
        if (self.code_lr is not None and not self.code_lr > 0) or \
                (self.code_lr_decay is not None and not self.code_lr_decay > 0):
            raise DecoderConfigError("FitConfig.code_lr and code_lr_decay must be > 0 (or None)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise DecoderConfigError("FitConfig.grad_clip must be > 0 or None")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


@dataclass
class FitResult:
    """Outcome of `fit`. Epochs are 1-based (epoch e = after e passes over the training split)."""

    eval_nll_bits: np.ndarray | None      # float64 [N_eval], bits per image
    curve: list[dict]                     # {"epoch", "train_bits_per_dim", "val_bits_per_dim", "lr", "seconds"}
    best_epoch: int                       # 0: the starting weights (cfg.start_candidate), never beaten
    best_val_bits_per_dim: float
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int | None = None   # epochs already done in workdir when this call started
    n_train: int = 0
    n_val: int = 0
    extra: dict = field(default_factory=dict)
    val_nll_bits: np.ndarray | None = None  # float64 [n_val], bits per image, with the best weights
    val_idx: np.ndarray | None = None       # which of the given images were the validation split (sorted)


# ----------------------------------------------------------------------------------------------- inputs
def _num(arr) -> int:
    return int(arr.shape[0])


def _batch(images, codes, idx: np.ndarray, setup: DeviceSetup) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = take_rows(images, idx).to(setup.device, non_blocking=True).long()  # (B, C, H, W)
    x = to_channels_last(x, setup)
    c = None
    if codes is not None:
        c = take_rows(codes, idx).to(setup.device, dtype=torch.float32, non_blocking=True)  # (B, ...)
        c = to_channels_last(c, setup)
    return x, c


def _sample_hash(arr, n: int) -> str:
    """A cheap fingerprint of an array: shape, dtype and up to 512 evenly spaced rows."""
    rows = np.unique(np.linspace(0, n - 1, num=min(n, 512)).astype(np.int64))
    sample = take_rows(arr, rows).float().numpy() if arr is not None else np.zeros(0)
    h = hashlib.blake2b(np.ascontiguousarray(sample).tobytes(), digest_size=12)
    return f"{tuple(arr.shape) if arr is not None else None}:{h.hexdigest()}"


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_nll_bits(model: torch.nn.Module, images, codes=None, *, batch_size: int = 256,
                      device: str | torch.device | DeviceSetup | None = None, bf16: bool = False) -> np.ndarray:
    """Per-image NLL in bits (float64 [N]) of `images` (given `codes`) under `model`, in eval mode.

    Float32 unless `bf16` (then bf16 autocast on CUDA). `device` defaults to where the model's parameters are.
    """
    mcfg = model.cfg
    images = check_model_images(images, mcfg, "images")
    codes = check_codes(codes, mcfg, _num(images), "codes")
    if isinstance(device, DeviceSetup):
        setup = device
    else:
        dev = device if device is not None else next(model.parameters()).device
        setup = setup_device(dev, bf16=bf16, channels_last=False)
        model.to(setup.device)
    return _eval_nll(model, images, codes, np.arange(_num(images)), setup, batch_size, bf16)


def _eval_nll(model, images, codes, idx: np.ndarray, setup: DeviceSetup, batch_size: int,
              bf16: bool) -> np.ndarray:
    out = []
    with eval_mode(model):
        for start in range(0, len(idx), batch_size):
            x, c = _batch(images, codes, idx[start:start + batch_size], setup)
            with autocast(setup, enabled=bf16):
                nll = model.nll_bits(x, c)  # (B,) bits
            out.append(nll.detach().double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# ----------------------------------------------------------------------------------------------- training
def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, setup: DeviceSetup,
                    grad_clip: float | None, bits_per_image_to_loss: float) -> Callable:
    """One optimisation step: step(x, c) -> (loss value in bits/dim, grad norm or None). Shared with the benchmark.

    Does not check finiteness; the caller raises NonFiniteLossError with its own epoch/step context.
    """
    loss_fn = torch.compile(model.nll_bits) if setup.compile else model.nll_bits
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        with autocast(setup):
            nll = loss_fn(x, c)  # (B,) bits
        loss = nll.float().mean() * bits_per_image_to_loss  # bits/dim
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return loss.detach(), None
        loss.backward()
        norm = None
        if grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if not torch.isfinite(norm):
                return loss.detach(), norm
        optimizer.step()
        return loss.detach(), norm

    return step


def split_code_path(model: torch.nn.Module) -> tuple[list, list]:
    """(trunk, code path): the trainable parameters of `model`, the code path being the conditioning pathway
    (`code_path_names`: the conditioning net and every block's projection of the code; its standardisation buffers
    are not parameters). A model without `code_path_names` is all trunk."""
    names = set(model.code_path_names()) if hasattr(model, "code_path_names") else set()
    trunk, code = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (code if name in names else trunk).append(p)
    return trunk, code


def group_lr(cfg: FitConfig, group: str, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of a parameter group ("trunk" or "code") at a step of a 0-based epoch.

    The trunk: lr * lr_decay**epoch. The code path: its own schedule from this fit's start, code_lr *
    code_lr_decay**epoch (each None: the trunk's), times a linear warm-up over the first `code_warmup` epochs."""
    if group != "code" or (cfg.code_lr is None and cfg.code_lr_decay is None and not cfg.code_warmup):
        return cfg.lr * cfg.lr_decay ** epoch
    lr = (cfg.lr if cfg.code_lr is None else cfg.code_lr) * \
        (cfg.lr_decay if cfg.code_lr_decay is None else cfg.code_lr_decay) ** epoch
    if cfg.code_warmup:
        lr *= min(1.0, (epoch + (step + 1) / steps_per_epoch) / cfg.code_warmup)
    return lr


def _fingerprint(cfg: FitConfig, model, images, codes, n_val: int) -> dict:
    fcfg = {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS}
    return jsonable({
        "version": STATE_VERSION,
        "fit": fcfg,
        "decoder": asdict(model.cfg) if dataclasses.is_dataclass(model.cfg) else str(model.cfg),
        "n_images": _num(images),
        "n_val": n_val,
        "images": _sample_hash(images, _num(images)),
        "codes": None if codes is None else _sample_hash(codes, _num(codes)),
    })


def _load_state(path: Path, fingerprint: dict) -> dict:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FitStateError(f"{path} cannot be read ({type(e).__name__}: {e}); delete it to start the fit "
                            f"over") from None
    if not isinstance(st, dict) or st.get("fingerprint") != fingerprint:
        old = st.get("fingerprint", {}) if isinstance(st, dict) else {}
        diff = []
        for k in sorted(set(old) | set(fingerprint)):
            a, b = old.get(k), fingerprint.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                diff += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
            elif a != b:
                diff.append(k)
        raise FitStateError(f"{path.parent} holds a fit with a different configuration (differs in: "
                         f"{', '.join(diff) or 'format'}); use another workdir or delete {path.name} to start over")
    return st


# ----------------------------------------------------------------------------------------------- fit
def fit(model: torch.nn.Module, images, codes=None, cfg: FitConfig = FitConfig(), *, eval_images=None,
        eval_codes=None, workdir: str | os.PathLike | None = None, desc: str = "",
        _after_epoch: Callable[[int], None] | None = None) -> FitResult:
    """Train `model` (a PixelCNNPP or anything with its `cfg`/`nll_bits`/`set_code_stats` surface) on `images`.

    Args:
        images: integer [N, C, H, W] in [0, L-1] (numpy, memmap or tensor); split into train/val by `cfg.seed`.
        codes: raw codes [N, *code_shape] (float16/float32, memmaps read batch by batch) or None.
        cfg: the FitConfig.
        eval_images, eval_codes: held-out images (and codes) to score with the best weights.
        workdir: folder for fit_state.pt; resumed from when present.
        desc: label for the progress bar and error messages.
        _after_epoch: test hook, called with the finished 1-based epoch after its checkpoint is written.

    Returns:
        FitResult with eval_nll_bits (bits per image, float64) when eval_images is given. `model` ends in eval
        mode holding the best (lowest val bits/dim) weights and the code standardisation of the training codes.

    Raises:
        DecoderInputError for bad inputs, FitStateError for a workdir holding a different fit (both
        DecoderError, a ValueError); NonFiniteLossError on NaN/inf loss.
    """
    mcfg = model.cfg
    images = check_model_images(images, mcfg, "images")
    n = _num(images)
    codes = check_codes(codes, mcfg, n, "codes")
    if eval_images is not None:
        eval_images = check_model_images(eval_images, mcfg, "eval_images")
        eval_codes = check_codes(eval_codes, mcfg, _num(eval_images), "eval_codes")
    elif eval_codes is not None:
        raise DecoderInputError("eval_codes were given without eval_images")
    n_val = max(1, int(round(n * cfg.val_fraction)))
    if n - n_val < 1:
        raise DecoderInputError(f"{n} image(s) are too few to split into train and validation (need at least 2)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    n_train = len(train_idx)
    label = desc or "fit"

    setup = setup_device(cfg.device, bf16=cfg.bf16, channels_last=cfg.channels_last, compile=cfg.compile)
    fingerprint = _fingerprint(cfg, model, images, codes, n_val)
    state_path = Path(workdir) / STATE_FILE if workdir is not None else None
    state = _load_state(state_path, fingerprint) if state_path is not None and state_path.exists() else None

    if state is None and codes is not None:
        model.set_code_stats(take_rows(codes, train_idx))  # standardisation from training codes only
    model.to(setup.device)
    to_channels_last(model, setup)
    trunk, code_path = split_code_path(model)
    if cfg.freeze_trunk:
        frozen = [p for p in trunk if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        trunk = []
    groups = [{"params": trunk, "name": "trunk"}, {"params": code_path, "name": "code"}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=True) if groups else None
    gen = torch.Generator()  # data order
    dims = int(np.prod(mcfg.image_shape))

    best_val_nll = None  # per-image validation NLL (bits) of best_state, when this call computed it
    if state is None:
        torch.manual_seed(cfg.seed)  # dropout draws from the global generator
        gen.manual_seed(cfg.seed + 1)
        start_epoch, curve, bad_epochs, stopped = 0, [], 0, optimizer is None
        best_state, best_epoch, best_val = None, 0, math.inf
        resumed_from = None
        if cfg.start_candidate or optimizer is None:  # epoch 0: the weights the fit starts from
            val_nll = _eval_nll(model, images, codes, val_idx, setup, cfg.eval_batch_size, cfg.eval_bf16)
            best_val, best_state, best_val_nll = float(val_nll.mean()) / dims, cpu_state(model.state_dict()), val_nll
    else:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, curve = int(state["epoch"]), [dict(r) for r in state["curve"]]
        bad_epochs, stopped = int(state["bad_epochs"]), bool(state["stopped_early"])
        best_state, best_epoch, best_val = state["best_state"], int(state["best_epoch"]), float(state["best_val"])
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["data"])
        set_cuda_rng_states(list(state["rng"]["cuda"]))
        resumed_from = start_epoch

    def save_state(epoch: int) -> None:
        atomic_torch_save(state_path, {
            "fingerprint": fingerprint, "epoch": epoch, "curve": curve, "model": cpu_state(model.state_dict()),
            "optimizer": None if optimizer is None else optimizer.state_dict(), "best_state": best_state, "best_epoch": best_epoch,
            "best_val": best_val, "bad_epochs": bad_epochs, "stopped_early": stopped,
            "rng": {"torch": torch.get_rng_state(), "data": gen.get_state(), "cuda": cuda_rng_states()},
        })

    step_fn = make_train_step(model, optimizer, setup, cfg.grad_clip, 1.0 / dims) if optimizer is not None else None
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    min_delta = cfg.min_delta / dims  # bits per image -> bits/dim, the unit of the curve
    epoch = start_epoch
    with progress(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc=label,
                  unit="step", enabled=cfg.progress) as bar:
        if resumed_from is not None and resumed_from > 0:
            bar.write(f"{label}: resuming from {state_path} after epoch {resumed_from}")
        while epoch < cfg.epochs and not stopped:
            t0 = time.perf_counter()
            lr = cfg.lr * cfg.lr_decay ** epoch
            model.train()
            order = torch.randperm(n_train, generator=gen).numpy()
            total = 0.0
            for step, start in enumerate(range(0, n_train, cfg.batch_size)):
                for group in optimizer.param_groups:
                    group["lr"] = group_lr(cfg, group["name"], epoch, step, steps_per_epoch)
                idx = train_idx[order[start:start + cfg.batch_size]]
                x, c = _batch(images, codes, idx, setup)
                loss, norm = step_fn(x, c)
                value = float(loss)
                if not math.isfinite(value):
                    raise NonFiniteLossError(f"{label}: training loss is {value} bits/dim at epoch {epoch + 1} "
                                             f"step {step + 1}")
                if norm is not None and not math.isfinite(float(norm)):
                    raise NonFiniteLossError(f"{label}: gradient norm is {float(norm)} at epoch {epoch + 1} "
                                             f"step {step + 1}")
                total += value * len(idx)
                bar.update(1)
                bar.set_postfix_str(f"ep {epoch + 1} train {value:.3f} b/d"
                                    + (f" val {curve[-1]['val_bits_per_dim']:.3f}" if curve else ""), refresh=False)
            val_nll = _eval_nll(model, images, codes, val_idx, setup, cfg.eval_batch_size, cfg.eval_bf16)
            val = float(val_nll.mean()) / dims
            if not math.isfinite(val):
                raise NonFiniteLossError(f"{label}: validation NLL is {val} bits/dim at epoch {epoch + 1}")
            epoch += 1
            curve.append({"epoch": epoch, "train_bits_per_dim": total / n_train, "val_bits_per_dim": val,
                          "lr": lr, "seconds": time.perf_counter() - t0,
                          **({"code_lr": group_lr(cfg, "code", epoch - 1, steps_per_epoch - 1, steps_per_epoch)}
                             if code_path else {})})
            if val < best_val - min_delta:
                best_val, best_epoch, bad_epochs = val, epoch, 0
                best_state, best_val_nll = cpu_state(model.state_dict()), val_nll
            else:
                bad_epochs += 1
                stopped = cfg.patience > 0 and bad_epochs >= cfg.patience
            if state_path is not None and (epoch % cfg.checkpoint_every == 0 or stopped or epoch == cfg.epochs):
                save_state(epoch)
            if _after_epoch is not None:
                _after_epoch(epoch)

    model.load_state_dict(best_state)
    if cfg.freeze_trunk:
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    eval_nll = None
    if eval_images is not None:
        eval_nll = _eval_nll(model, eval_images, eval_codes, np.arange(_num(eval_images)), setup,
                             cfg.eval_batch_size, cfg.eval_bf16)
    val_nll = best_val_nll
    if val_nll is None:  # the best weights came with a resumed state
        val_nll = _eval_nll(model, images, codes, val_idx, setup, cfg.eval_batch_size, cfg.eval_bf16)
    return FitResult(eval_nll_bits=eval_nll, curve=curve, best_epoch=best_epoch, best_val_bits_per_dim=best_val,
                     epochs_run=epoch, stopped_early=stopped, resumed_from_epoch=resumed_from, n_train=n_train,
                     n_val=n_val, extra={"device": str(setup.device), "bf16": setup.bf16,
                                         "channels_last": setup.channels_last},
                     val_nll_bits=val_nll, val_idx=val_idx)
