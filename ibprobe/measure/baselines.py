"""The baselines of a run folder -> DIR/analysis/baselines.csv and binning_sensitivity.csv: binning
(ibprobe.estimators.binning) and KDE (ibprobe.estimators.kde) on the decoders'
test images, the activation store's "test" split, with their labels -> analysis/baselines.csv (binning at `bins`,
KDE at `noise_var`) and analysis/binning_sensitivity.csv (binning over SENSITIVITY_BINS).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np

from decoders.progress import progress as progress_report
from ibprobe.capture import ActivationStore, codes_key
from ibprobe.config import Settings
from ibprobe.errors import UserError
from ibprobe.estimators.binning import SENSITIVITY_BINS, activation_range, binning_mi
from ibprobe.estimators.kde import kde_mi
from ibprobe.jobs import JobSpec
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.pinning import read_inputs
from ibprobe.rundir.sources import decoder_split, open_source
from ibprobe.rundir.tables import BASELINES, SENSITIVITY, write_table


def baseline_rows(acts: Mapping[tuple[int, str], np.ndarray], labels: np.ndarray | None = None, *,
                  bins: Sequence[int] = (30,), noise_vars: Sequence[float] = (0.1,),
                  epochs: Mapping[int, float] | None = None) -> list[dict]:
    """Rows of analysis/baselines.csv: one per (checkpoint, layer) x estimator setting.

    Args:
        acts: {(step, layer): activations [N, ...]} on the same N held-out images.
        labels: [N] labels, or None (then i_yh_bits is None).
        bins: bin counts for the binning estimator; noise_vars: σ² values for the KDE one.
        epochs: {step: fractional epoch} of the checkpoints (a step not in it: its own number).
    Returns:
        Rows with step, epoch, layer, estimator ("binning" | "kde"), bins, noise_var, i_xh_bits, i_yh_bits, n, dims,
        act_min, act_max (binning only: the range the bins span), status ("ok") and error ("").
    """
    rows = []
    for (step, layer), a in acts.items():
        where = {"step": int(step), "epoch": float(dict(epochs or {}).get(int(step), step)), "layer": str(layer)}
        rows += [{**where, **r} for r in _layer_rows(a, labels, bins, noise_vars)[0]]
    return rows


def _layer_rows(a: np.ndarray, labels: np.ndarray | None, bins: Sequence[int], noise_vars: Sequence[float],
                sweep: Sequence[int] = ()) -> tuple[list[dict], list[dict]]:
    """(baselines.csv rows less step, epoch and layer, binning_sensitivity rows over `sweep`) of one layer's codes; each
    bin count is estimated once, over the codes' observed range."""
    bins, sweep = [int(b) for b in bins], [int(b) for b in sweep]
    lo, hi = activation_range(a)
    est = {b: binning_mi(a, labels, bins=b, value_range=(lo, hi)) for b in dict.fromkeys(bins + sweep)}
    rows = []
    for b in bins:
        e = est[b]
        rows.append({"estimator": "binning", "bins": b, "noise_var": None, "i_xh_bits": e.bits,
                     "i_yh_bits": e.i_yh_bits, "n": e.n, "dims": e.dims, "act_min": lo, "act_max": hi,
                     "status": "ok", "error": ""})
    for v in noise_vars:
        e = kde_mi(a, labels, noise_var=float(v))
        rows.append({"estimator": "kde", "bins": None, "noise_var": float(v), "i_xh_bits": e.bits,
                     "i_yh_bits": e.i_yh_bits, "n": e.n, "dims": e.dims, "act_min": None, "act_max": None,
                     "status": "ok", "error": ""})
    sens = [{"bins": b, "i_xh_bits": est[b].bits, "i_yh_bits": est[b].i_yh_bits, "n": est[b].n,
             "dims": est[b].dims, "ceiling_bits": math.log2(est[b].n)} for b in sweep]
    return rows, sens


def measure_baselines(run_dir: str | os.PathLike, specs: Sequence[JobSpec], settings: Settings, *, bins: int = 30,
                      noise_var: float = 0.1, sweep: Sequence[int] = SENSITIVITY_BINS,
                      progress: bool = False) -> tuple[list[dict], list[dict]]:
    """(baselines.csv rows, binning_sensitivity.csv rows) of each (checkpoint, layer) of `specs`, on the decoders'
    test images (the store's "test" split, the images the decoder estimate is scored on) and their labels.

    A (checkpoint, layer) whose activations cannot be read or hold NaN gives failed rows saying why.
    """
    run_dir = Path(run_dir)
    source, ds = open_source(run_dir)
    _, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    digests = read_inputs(run_dir)["checkpoints"]  # the store keys codes by checkpoint content
    labels = ds.labels[test_idx] if len(np.unique(ds.labels[test_idx])) > 1 else None
    store = ActivationStore(RunDir(run_dir).activations)
    counts = sorted({int(b) for b in sweep} | {int(bins)})
    rows, sens, keys = [], [], {}
    for s in progress_report(list(specs), enabled=progress, desc="baselines", unit="layer"):
        where = {"step": int(s.step), "epoch": source.epoch_of(s.step), "layer": str(s.layer)}
        try:
            if s.step not in keys:  # one digest of the test images per checkpoint, not per layer
                keys[s.step] = codes_key(ds.images[test_idx], source, digests.get(str(s.step), ""))
            a = store.read(s.step, s.layer, "test", keys[s.step])
            base, sens_rows = _layer_rows(a, labels, (bins,), (noise_var,), counts)
            rows += [{**where, **r} for r in base]
            sens += [{**where, **r} for r in sens_rows]
        except UserError as e:
            rows += [{**where, "estimator": est, "bins": b, "noise_var": v,
                      "status": "failed", "error": str(e).replace("\n", " ")[:500]}
                     for est, b, v in (("binning", int(bins), None), ("kde", None, float(noise_var)))]
    return rows, sens


def write_baselines(run_dir: str | os.PathLike, specs: Sequence[JobSpec], settings: Settings, *, bins: int = 30,
                    noise_var: float = 0.1, progress: bool = False) -> list[Path]:
    """Write analysis/baselines.csv and analysis/binning_sensitivity.csv (`measure_baselines`); return the paths."""
    rows, sens = measure_baselines(run_dir, specs, settings, bins=bins, noise_var=noise_var, progress=progress)
    run = RunDir(run_dir)
    return [write_table(run.table(BASELINES.name), rows, BASELINES),
            write_table(run.table(SENSITIVITY.name), sens, SENSITIVITY)]
