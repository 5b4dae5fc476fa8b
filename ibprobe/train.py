"""Train a classifier or autoencoder and keep its history on disk.

Run folder:
    out_dir/config.json                  everything to rebuild the run (TrainConfig + dataset spec + shapes, and the
                                         resolved schedule: steps_per_epoch, schedule_steps)
    out_dir/checkpoints/step_XXXXXXXX.pt at the scheduled optimizer steps (step 0 = the initialisation)
    out_dir/checkpoints/last.pt          rolling resume point, written at the end of every epoch
    out_dir/metrics.jsonl                one line per epoch: step, train/test loss (+ accuracy for classify), seconds

A checkpoint is named by the optimizer step at which it was taken, because the first stage of training (fitting)
is early and short: a log-spaced schedule (`checkpoint_schedule=log:N`) puts several checkpoints inside the first
epoch, where an epoch schedule has none. The step orders checkpoints whatever the schedule; the checkpoint also holds
its fractional epoch, step / steps per epoch.

Checkpoints hold {model, optimizer, epoch, step, steps_per_epoch, config, rng, metrics}: tensors and primitives only,
so `torch.load(weights_only=True)` reads them. A checkpoint inside an epoch holds the test loss (and accuracy) at
that step. Data order and augmentation draw from explicit torch.Generators whose states are checkpointed, so on CPU
a killed-and-resumed run ends with the same weights as an uninterrupted one, and the same seed gives the same
weights. Only last.pt, at an epoch's end, is a resume point: a run killed inside an epoch replays that epoch from its
start (on a CPU, to the same weights), and a checkpoint the killed process had already written is kept, not
written again.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from decoders.progress import progress as progress_report
from ibprobe.config import TrainConfig, apply_overrides, config_from_dict, resolve_device
from ibprobe.data import load_dataset, to_model_input
from ibprobe.errors import CheckpointError, ConfigError
from ibprobe.models import build_model
from ibprobe.rundir.checkpoints import list_checkpoints, load_run_checkpoint, load_run_config
from ibprobe.rundir.files import (atomic_torch_save, atomic_write_json, atomic_write_text, cpu_state,
                                  remove_stale_temps, try_lock)
from ibprobe.rundir.paths import RunDir

RUN_FORMAT = "ibprobe-run/1"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU generator seeded the same for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def train_config(out_dir: str | os.PathLike, given: dict | None = None) -> TrainConfig:
    """The TrainConfig of run folder `out_dir`: the one its checkpoints were trained with (config.json), which the
    `given` settings must agree with (a rerun with no settings resumes it), else one built from `given`."""
    given = dict(given or {})
    stored_conf = stored_config(out_dir)
    if stored_conf is None:
        return apply_overrides(TrainConfig(), given, "training setting")
    stored = config_from_dict(stored_conf)
    want = apply_overrides(stored, given, "training setting")
    diff = [k for k in given if k != "download" and _comparable(asdict(want))[k] != _comparable(asdict(stored))[k]]
    if diff:
        raise ConfigError(f"{out_dir} already holds a run with different {', '.join(diff)}; rerun with only "
                          f"--out {out_dir} to resume it, or choose another --out")
    return want


def stored_config(out_dir: str | os.PathLike) -> dict | None:
    """The config a run folder is bound to, or None while it holds no checkpoint: a config.json left by a first
    `train` that failed before its first checkpoint binds nothing, so the corrected command is not refused."""
    if not RunDir(out_dir).last_checkpoint.exists() and not list_checkpoints(out_dir):
        return None
    return load_run_config(out_dir)


def _run_config(cfg: TrainConfig, ds, steps_per_epoch: int) -> dict:
    d = asdict(cfg)
    d.update(format=RUN_FORMAT, dataset_spec=cfg.dataset_spec(), levels=int(ds.levels),
             in_shape=list(ds.image_shape), num_classes=int(ds.num_classes), classes=list(ds.classes),
             steps_per_epoch=int(steps_per_epoch), schedule_steps=list(cfg.schedule_steps(steps_per_epoch)))
    if cfg.schedule_epochs():  # an epoch schedule, resolved (the default's epochs written out)
        d["checkpoint_epochs"] = list(cfg.schedule_epochs())
    return json.loads(json.dumps(d, default=list))  # plain lists/dicts/primitives only


def _comparable(d: dict) -> dict:
    return json.loads(json.dumps({f.name: d.get(f.name) for f in fields(TrainConfig) if f.name != "download"},
                                 default=list))


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    if cfg.schedule == "step":
        frac = step / max(total, 1)
        return cfg.lr * (0.1 if frac >= 0.5 else 1.0) * (0.1 if frac >= 0.75 else 1.0)
    return cfg.lr


def _augment(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding H//8 (and flips); x (B, C, H, W) float on CPU. Draws only from g."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]  # (C, H, W)
        out[i] = crop.flip(-1) if (mode == "crop_flip" and flip[i]) else crop
    return out


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, regime: str):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        out = model(x)
    out = out.float()
    if regime == "classify":
        loss = F.cross_entropy(out, y)
        correct = (out.argmax(1) == y).sum().item()
    else:
        loss = F.mse_loss(out, target)
        correct = 0
    return loss, correct


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, levels: int,
             device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode; accuracy is nan for autoencode."""
    was = model.training
    model.eval()
    tot, correct, n = 0.0, 0, len(images)
    for i in range(0, n, batch_size):
        raw = to_model_input(images[i:i + batch_size], levels).to(device)  # (B, C, H, W) in [0, 1]
        x = to_model_input(images[i:i + batch_size], levels, cfg.normalize).to(device)
        y = torch.as_tensor(labels[i:i + batch_size], device=device)
        loss, c = _loss(model, x, y, raw, cfg.regime)
        tot += loss.item() * len(y)
        correct += c
    model.train(was)
    return tot / max(n, 1), (correct / max(n, 1) if cfg.regime == "classify" else float("nan"))


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, device: str = "auto", progress: bool = True,
          _after_epoch: Callable[[int], None] | None = None,
          _after_checkpoint: Callable[[int], None] | None = None) -> Path:
    """Train per `cfg` into out_dir (see the module docstring); resume if a run is there. Returns out_dir.

    A finished run is left as it is. A different config for an existing run folder is a ConfigError. Everything
    is checked (data, model, optimizer, the checkpoint schedule) before config.json is written, and a folder without
    checkpoints takes a new config, so a first run that failed never binds the folder. One process trains a folder
    at a time: another waits for it, then resumes or finds the run finished. `_after_epoch(epoch)` and
    `_after_checkpoint(step)` are called after each epoch and each checkpoint written (the tests kill a run there).
    """
    out = Path(out_dir)
    dev = resolve_device(device)
    ds = load_dataset(download=cfg.download, **cfg.dataset_spec())
    if cfg.regime == "classify" and ds.num_classes < 2:
        data = f"--images {cfg.images_path} with {'labels of' if cfg.labels_path else 'no --labels, so'} one class" \
            if cfg.dataset == "npy" else f"dataset {cfg.dataset!r} has one class"
        raise ConfigError(f"{data}: a classifier needs two or more; give labels of several classes, or train an "
                          f"autoencoder with --model resnet_ae --train regime=autoencode")
    g_data = seed_everything(cfg.seed)
    model = build_model(cfg.model, in_shape=ds.image_shape, num_classes=ds.num_classes, **cfg.model_args)
    run = RunDir(out)
    with try_lock(out / ".train.lock", wait=True):
        remove_stale_temps(run.checkpoints)  # left by a kill; no other process writes there now
        remove_stale_temps(out, (run.config.name, run.metrics.name))
        return _train(cfg, out, ds, model, g_data, dev, progress, _after_epoch, _after_checkpoint)


def _train(cfg: TrainConfig, out: Path, ds, model: nn.Module, g_data: torch.Generator, dev: torch.device,
           progress: bool, _after_epoch: Callable[[int], None] | None,
           _after_checkpoint: Callable[[int], None] | None) -> Path:
    run = RunDir(out)
    spe = cfg.steps_per_epoch(len(ds.train_idx))  # with max_train, the seeded subset load_dataset keeps
    run_cfg = _run_config(cfg, ds, spe)  # a schedule step beyond the run is refused here, before config.json
    old = stored_config(out)
    if old is not None and _comparable(old) != _comparable(run_cfg):
        diff = sorted(k for k, v in _comparable(run_cfg).items() if _comparable(old).get(k) != v)
        raise ConfigError(f"{out} already holds a run with a different config ({', '.join(diff)}); "
                          f"use another --out, or rerun with only --out {out} to resume it")
    g_aug = torch.Generator().manual_seed(cfg.seed + 1)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if old is None:
        atomic_write_json(run.config, run_cfg)

    x_train, y_train = ds.split("train")  # with max_train, the seeded subset load_dataset keeps
    x_test, y_test = ds.split("test")
    n = len(x_train)
    total_steps = spe * cfg.epochs
    schedule = set(run_cfg["schedule_steps"])

    epoch, step, history = 0, 0, []
    last = run.last_checkpoint
    if last.exists():
        try:
            ck = load_run_checkpoint(last)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; it is the run's resume point: delete it and rerun to train the run again "
                                  f"from epoch 0 (on a CPU, to the same weights)") from None
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(ck["history"])
        g_data.set_state(ck["rng"]["data"])
        g_aug.set_state(ck["rng"]["aug"])
        torch.set_rng_state(ck["rng"]["torch"])
        _write_metrics(out, history)
        if epoch >= cfg.epochs:
            return out

    def save(path: Path, metrics: dict, resume_point: bool) -> None:
        """A checkpoint at this step (its fractional epoch), or the resume point last.pt (whole epochs, history)."""
        ck = {"model": cpu_state(model.state_dict()), "optimizer": cpu_state(opt.state_dict()),
              "epoch": epoch if resume_point else step / spe, "step": step, "steps_per_epoch": spe,
              "config": run_cfg, "metrics": metrics,
              "rng": {"data": g_data.get_state(), "aug": g_aug.get_state(), "torch": torch.get_rng_state()}}
        if resume_point:
            ck["history"] = history
        atomic_torch_save(path, ck)

    def checkpoint(metrics: Callable[[], dict]) -> None:
        """The scheduled checkpoint of this step, unless a killed process wrote it already (on a CPU, the same)."""
        path = run.checkpoint(step)
        if step in schedule and not path.exists():
            save(path, metrics(), False)
            if _after_checkpoint is not None:
                _after_checkpoint(step)

    def test_metrics(lr: float) -> dict:
        te_loss, te_acc = evaluate(model, x_test, y_test, cfg, ds.levels, dev)  # eval mode: no state or RNG moves
        m = {"step": step, "epoch": step / spe, "test_loss": float(te_loss), "lr": float(lr)}
        return m if cfg.regime != "classify" else {**m, "test_acc": float(te_acc)}

    if epoch == 0 and not last.exists():
        t0 = time.time()
        tr_loss, tr_acc = evaluate(model, x_train, y_train, cfg, ds.levels, dev)
        te_loss, te_acc = evaluate(model, x_test, y_test, cfg, ds.levels, dev)
        history.append(_metrics(0, 0, tr_loss, tr_acc, te_loss, te_acc, 0.0, time.time() - t0, cfg.regime))
        checkpoint(lambda: history[-1])
        save(last, history[-1], True)
        _write_metrics(out, history)

    bar = progress_report(total=cfg.epochs, initial=epoch, desc=f"train {out.name}", unit="epoch", enabled=progress)
    try:
        while epoch < cfg.epochs:
            t0 = time.time()
            model.train()
            perm = torch.randperm(n, generator=g_data)
            tot, correct = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size].numpy()
                raw = to_model_input(x_train[idx], ds.levels)  # (B, C, H, W) in [0, 1]
                if cfg.augment != "none":
                    raw = _augment(raw, cfg.augment, g_aug)
                x = raw if cfg.normalize is None else to_model_input(
                    raw * (ds.levels - 1), ds.levels, cfg.normalize)
                y = torch.as_tensor(y_train[idx])
                lr = _lr_at(cfg, step, total_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, c = _loss(model, x.to(dev), y.to(dev), raw.to(dev), cfg.regime)
                if not torch.isfinite(loss):
                    raise ConfigError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                                      f"lower --lr (now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                tot += loss.item() * len(idx)
                correct += c
                if step % spe:  # inside the epoch; its last step is saved with the epoch's metrics
                    checkpoint(lambda: test_metrics(lr))
            epoch += 1
            te_loss, te_acc = evaluate(model, x_test, y_test, cfg, ds.levels, dev)
            tr_acc = correct / n if cfg.regime == "classify" else float("nan")
            history.append(_metrics(epoch, step, tot / n, tr_acc, te_loss, te_acc, lr, time.time() - t0, cfg.regime))
            checkpoint(lambda: history[-1])
            save(last, history[-1], True)
            _write_metrics(out, history)
            bar.set_postfix_str(", ".join(f"{k} {v:.4g}" for k, v in history[-1].items()
                                          if k in ("train_loss", "test_loss", "test_acc")))
            bar.update(1)
            if _after_epoch is not None:
                _after_epoch(epoch)
    finally:
        bar.close()
    return out


def _metrics(epoch, step, tr_loss, tr_acc, te_loss, te_acc, lr, seconds, regime) -> dict:
    m = {"epoch": int(epoch), "step": int(step), "train_loss": float(tr_loss), "test_loss": float(te_loss),
         "lr": float(lr), "seconds": round(float(seconds), 3)}
    if regime == "classify":
        m.update(train_acc=float(tr_acc), test_acc=float(te_acc))
    return m


def _write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text(RunDir(out).metrics, "".join(json.dumps(m, sort_keys=True) + "\n" for m in history))


__all__ = ["train", "train_config", "evaluate", "seed_everything", "RUN_FORMAT"]
