"""Two more lenses on a network's checkpoints, beside the information plane (-> DIR/analysis/; ibprobe.report.lenses
draws them into DIR/figures/).

  hessian_lens      the top-k eigenvalues of the training loss's Hessian on one fixed, seeded batch, per
                    checkpoint (ibprobe.lenses.hessian) -> analysis/hessian.csv
  complexity_lens   per-layer operator norms and the margin bounds' complexity terms, per checkpoint
                    (ibprobe.lenses.complexity) -> analysis/complexity_layers.csv, analysis/complexity.csv
  hessian_linear    Li et al.'s deep linear residual networks at initialisation, exactly (no checkpoints)
                    -> analysis/hessian_linear.csv

What a lens looks at is a LensTarget: the checkpoints (a ModelSource) and the training images they are measured
on, checked up front so that a mistake costs one line: `target_from_run` for one of our training runs (the images
it trained on, its regime, its metrics.jsonl), `target_from_spec` for a model spec and your checkpoints (the
data set's train split). Every checkpoint sees the same seeded images. Rows name their checkpoint by `step` and
give its fractional `epoch` (ibprobe.rundir.tables).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from decoders.progress import progress as progress_report
from ibprobe.config import config_from_dict, resolve_device
from ibprobe.data import to_model_input
from ibprobe.errors import CheckpointError, ConfigError
from ibprobe.lenses.complexity import complexity_rows
from ibprobe.lenses.hessian import LINEAR_INITS, fixed_batch, hessian_rows, linear_resnet_table, synthetic_problem
from ibprobe.rundir.checkpoints import list_checkpoints, load_run_config
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.sources import (ModelSource, dataset, model_failed, relative_to_run, source_from_run, spec_data,
                                    spec_source)
from ibprobe.rundir.tables import COMPLEXITY, COMPLEXITY_LAYERS, HESSIAN, HESSIAN_LINEAR, write_table


@dataclass(frozen=True)
class LensTarget:
    """Checkpoints to look at and the training images to look at them on."""

    source: ModelSource
    regime: str  # classify | autoencode: the loss whose Hessian is taken; margins only when classifying
    images: np.ndarray  # uint8 (N, C, H, W): the training images
    labels: np.ndarray  # (N,)
    levels: int
    metrics_path: Path | None  # a training run's metrics.jsonl (train and test accuracy per epoch), else None
    label: str  # the run folder's name or the model spec: a legend entry
    title: str

    def batch(self, n: int, seed: int, regime: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, target) of a seeded subset of n training images (n <= 0: all of them)."""
        n = len(self.images) if n <= 0 else n
        return fixed_batch(self.images, self.labels, self.levels, regime or self.regime, n=n, seed=seed,
                           normalize=self.source.normalize)

    def checkpoints(self, epochs: Iterable[float] | None = None,
                    steps: Iterable[int] | None = None) -> list[tuple[int, str]]:
        """[(step, path)] of the checkpoints asked for by epoch and/or step, exactly (None: all); a ConfigError
        names what there is (ModelSource.select)."""
        return self.source.select(steps=None if steps is None else list(steps),
                                  epochs=None if epochs is None else list(epochs))

    def keyed(self, row: dict) -> dict:
        """`row` (a lens row with its checkpoint's `step`) with the checkpoint's fractional `epoch` after the step."""
        step = row["step"]
        return {"step": step, "epoch": self.source.epoch_of(step), **{k: v for k, v in row.items() if k != "step"}}


def target_from_run(run_dir: str | os.PathLike) -> LensTarget:
    """The LensTarget of one of our training runs: its checkpoints, the images it trained on, its regime."""
    run_dir = Path(run_dir)
    conf = load_run_config(run_dir)
    if not list_checkpoints(run_dir):
        raise CheckpointError(f"{run_dir} has no checkpoints yet; finish it with `ibprobe train --out {run_dir}`")
    source, spec = source_from_run(run_dir)
    cfg = config_from_dict(conf)
    ds = dataset(spec)
    x, y = ds.split("train")  # the images it trained on (a max_train run: its subset)
    metrics = RunDir(run_dir).metrics
    return LensTarget(source=source, regime=cfg.regime, images=x, labels=y, levels=ds.levels,
                      metrics_path=metrics if metrics.is_file() else None, label=run_dir.resolve().name,
                      title=f"{run_dir.resolve().name}: {cfg.dataset}, {cfg.model}, {cfg.regime}")


def target_from_spec(*, model: str, checkpoints, dataset_spec: dict, model_args: dict | None = None,
                     normalize: str | tuple | None = None, download: bool = False) -> LensTarget:
    """The LensTarget of a model spec and your checkpoints, on the data set's train split; checks that the data
    load, every checkpoint loads safely and fits the model, and the model takes two images and gives outputs
    that fit its regime (autoencode for resnet_ae, classify otherwise)."""
    ds, norm = spec_data(dataset_spec, normalize, download)
    source, net = spec_source(model, checkpoints, ds, model_args=model_args, normalize=norm)
    regime = "autoencode" if model == "resnet_ae" else "classify"
    _check_outputs(net.eval(), to_model_input(ds.images[ds.train_idx[:2]], ds.levels, norm), regime,
                   source.num_classes, int(ds.labels.max()))
    x, y = ds.split("train")
    return LensTarget(source=source, regime=regime, images=x, labels=y, levels=ds.levels, metrics_path=None,
                      label=str(model), title=f"{model} on {ds.name}, {len(source.checkpoints)} checkpoint(s)")


def _check_outputs(net, x: torch.Tensor, regime: str, num_classes: int, max_label: int) -> None:
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as e:  # noqa: BLE001 - the user's model cannot take these images: say so in one line
        raise model_failed(e, x.shape[1:]) from None
    if regime == "autoencode" and tuple(out.shape) != tuple(x.shape):
        raise ConfigError(f"an autoencoder must return images of its input's shape {tuple(x.shape)}, got "
                          f"{tuple(out.shape)}")
    if regime == "classify" and (out.ndim != 2 or out.shape[1] != num_classes or max_label >= num_classes):
        raise ConfigError(f"the model returns {tuple(out.shape)} for {len(x)} images, but the loss needs logits "
                          f"(N, classes) covering labels 0..{max_label}; check --model-arg num_classes")


# ------------------------------------------------------------------------------------------------ lenses
def hessian_lens(target: LensTarget, out_dir: str | os.PathLike, *, k: int = 10, n: int = 256,
                 method: str = "lanczos", steps: int | None = None, iters: int = 200, seed: int = 0,
                 epochs: Iterable[float] | None = None, at_steps: Iterable[int] | None = None,
                 device: str = "auto", progress: bool = True) -> tuple[list[dict], list[Path]]:
    """Top-k Hessian eigenvalues (by |value|) of the training loss on one seeded batch of n training images, per
    checkpoint, BatchNorm in eval mode (ibprobe.lenses.hessian.top_hessian_eigenvalues). Returns (rows, tables written).

    Rows (analysis/hessian.csv): step, epoch, loss (nats: per example for classify, per pixel for autoencode),
    lambda_max, cond_estimate (|eig_1| / |eig_k|, a lower bound on the condition number), method, k,
    eig_1..eig_k, n_images, checkpoint. Lanczos keeps steps x (number of weights) float64 numbers in memory.
    Checkpoints are chosen by epoch and/or by step (`at_steps`), exactly (None: all).
    """
    if k < 1 or n < 1:
        raise ConfigError(f"k and n must be at least 1, got k={k}, n={n}")
    out, dev = Path(out_dir), resolve_device(device)
    ckpts = target.checkpoints(epochs, at_steps)
    x, t = (v.to(dev) for v in target.batch(n, seed))
    rows = []
    for step, path in progress_report(ckpts, enabled=progress, desc="hessian", unit="checkpoint"):
        model = target.source.load_model(path, device=str(dev))
        row = hessian_rows([(step, model)], x, t, target.regime, k=k, method=method, steps=steps,
                           iters=iters, seed=seed)[0]
        rows.append({**target.keyed(row), "n_images": len(x), "checkpoint": relative_to_run(path, out)})
    return rows, [write_table(RunDir(out).table(HESSIAN.name), rows, HESSIAN)]


def complexity_lens(target: LensTarget, out_dir: str | os.PathLike, *, n: int = 1000, margin_quantile: float = 0.1,
                    iters: int = 1000, seed: int = 0, epochs: Iterable[float] | None = None,
                    at_steps: Iterable[int] | None = None, device: str = "auto",
                    progress: bool = True) -> tuple[list[dict], list[Path]]:
    """Operator norms of every weight layer and the complexity terms of ibprobe.lenses.complexity, per checkpoint; when
    classifying, the margins on a seeded subset of n training images (n <= 0: all). Returns (summary rows, tables).

    analysis/complexity_layers.csv: one row per (checkpoint, layer) (ibprobe.lenses.complexity.layer_norms columns).
    analysis/complexity.csv: one row per checkpoint (complexity_summary keys, margin terms, and train_acc_eval: the
    accuracy on those images in eval mode, so runs can be compared at equal training accuracy).
    """
    if not 0.0 < margin_quantile < 1.0 or n < 0:
        raise ConfigError(f"the margin quantile must be in (0, 1) and n >= 0 (0: all images), got {margin_quantile} "
                          f"and {n}")
    out, dev = Path(out_dir), resolve_device(device)
    ckpts = target.checkpoints(epochs, at_steps)
    x = y = None
    if target.regime == "classify":
        x, y = (v.to(dev) for v in target.batch(n, seed, "classify"))
    models = ((step, target.source.load_model(path, device=str(dev)))
              for step, path in progress_report(ckpts, enabled=progress, desc="complexity", unit="checkpoint"))
    layers, summaries = complexity_rows(models, x, y, in_shape=target.source.in_shape,
                                        margin_quantile=margin_quantile, iters=iters, seed=seed)
    layers, summaries = [target.keyed(r) for r in layers], [target.keyed(r) for r in summaries]
    run = RunDir(out)
    return summaries, [write_table(run.table(COMPLEXITY_LAYERS.name), layers, COMPLEXITY_LAYERS),
                       write_table(run.table(COMPLEXITY.name), summaries, COMPLEXITY)]


def hessian_linear(out_dir: str | os.PathLike, *, shortcut_depths: Sequence[int] = (1, 2, 3),
                   depths: Sequence[int] = tuple(range(1, 9)), inits: Sequence[str] = LINEAR_INITS, width: int = 4,
                   scale: float = 0.05, seed: int = 0, isotropic: bool = False) -> tuple[list[dict], list[Path]]:
    """Li et al.'s table (ibprobe.lenses.hessian.linear_resnet_table, one fixed problem of the given width) written as
    analysis/hessian_linear.csv; returns (rows, tables written).

    The problem is ibprobe.lenses.hessian.synthetic_problem(width, seed): a generic residual moment M = E[x (x - y)^T]
    by default, where 1-layer shortcuts' condition number trends up with depth without growing at every step;
    `isotropic` makes M = m I, where it grows strictly (as 9n - 1 for the default spread)."""
    bad = [v for v in (*shortcut_depths, *depths, width) if int(v) < 1]
    if bad or not shortcut_depths or not depths:
        raise ConfigError("shortcut depths, depths and the width must be non-empty lists of positive integers")
    unknown = [i for i in inits if i not in LINEAR_INITS]
    if unknown or not inits:
        raise ConfigError(f"--init takes {', '.join(LINEAR_INITS)}, got {', '.join(unknown) or 'nothing'}")
    if max(depths) * max(shortcut_depths) * width ** 2 > 4096:
        raise ConfigError("the exact Hessian has (depth x shortcut depth x width^2)^2 entries: keep that product "
                          "<= 4096 weights (e.g. width 4, depth <= 16 with 3-layer shortcuts)")
    problem = synthetic_problem(width, seed, isotropic_residual=isotropic)
    rows = linear_resnet_table(shortcut_depths, depths, inits, width=width, scale=scale, seed=seed, problem=problem)
    return rows, [write_table(RunDir(out_dir).table(HESSIAN_LINEAR.name), rows, HESSIAN_LINEAR)]


def linear_table_text(rows: Sequence[dict]) -> str:
    """The condition number per depth (rows) and (shortcut depth, init) (columns); 'H = 0' marks a zero Hessian."""
    cols = list(dict.fromkeys((int(r["shortcut_depth"]), r["init"]) for r in rows))
    by = {(int(r["shortcut_depth"]), r["init"], int(r["depth"])): r["condition_number"] for r in rows}
    head = ["depth"] + [f"k={k} {init}" for k, init in cols]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for d in sorted({int(r["depth"]) for r in rows}):
        cells = [by.get((k, init, d)) for k, init in cols]
        lines.append("  ".join([f"{d:>12}"] + [f"{'' if c is None else 'H = 0' if np.isnan(c) else f'{c:.6g}':>12}"
                                             for c in cells]))
    return "\n".join(lines)
