"""`ibprobe run`: train (or reuse) a network, then measure every tapped layer at every checkpoint.

The Python API behind the command; drawing the figures is left to the caller (plots/gallery), so this module
never imports matplotlib.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from ibprobe.errors import ConfigError
from ibprobe.pipeline import AnalysisConfig, ModelSource, run_analysis
from ibprobe.presets import Preset, get_preset
from ibprobe.utils import read_json


def regime_dirs(out_dir: str | os.PathLike, preset: Preset, regimes=None) -> dict[str, Path]:
    """One run folder per regime: DIR itself for a one-regime preset, DIR/<regime> otherwise."""
    regimes = tuple(regimes or preset.regimes)
    bad = [r for r in regimes if r not in preset.regimes]
    if bad:
        raise ConfigError(f"preset {preset.name} has regimes {', '.join(preset.regimes)}; not {', '.join(bad)}")
    out = Path(out_dir)
    if len(preset.regimes) == 1:
        return {regimes[0]: out}
    return {r: out / r for r in regimes}


def run_preset(
    preset: str | Preset,
    out_dir: str | os.PathLike,
    *,
    regimes=None,
    data_root: str | None = None,
    download: bool = False,
    device: str = "auto",
    jobs: int = 0,
    seed: int = 0,
    layers=None,
    decoder: dict | None = None,
    fit: dict | None = None,
    train_overrides: dict | None = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Train + analyse for each regime of `preset`. Returns {regime: mi.csv rows}; results land in the run folders."""
    from ibprobe.train import TrainConfig, list_checkpoints, train

    p = get_preset(preset) if isinstance(preset, str) else preset
    results = {}
    for regime, run_dir in regime_dirs(out_dir, p, regimes).items():
        tkw = dict(p.train, regime=regime, seed=seed)
        if regime == "autoencode":
            tkw["model"] = p.autoencoder
        if data_root is not None:
            tkw["data_root"] = str(data_root)
        if download:
            tkw["download"] = True
        tkw.update(train_overrides or {})
        valid = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(tkw) - valid)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        tcfg = TrainConfig(**tkw)
        if progress:
            print(f"[{regime}] training {tcfg.model} on {tcfg.dataset} -> {run_dir}", file=sys.stderr)
        train(tcfg, run_dir, device=device, progress=progress)

        conf = read_json(Path(run_dir) / "config.json")
        source = ModelSource(
            kind="run",
            model=conf.get("model", tcfg.model),
            model_args=dict(conf.get("model_args", tcfg.model_args) or {}),
            in_shape=tuple(conf.get("in_shape", ())),
            num_classes=int(conf.get("num_classes", 10)),
            checkpoints=tuple((e, str(path)) for e, path in list_checkpoints(run_dir)),
            normalize=conf.get("normalize"),
        )
        dataset_spec = conf.get("dataset_spec") or {"name": tcfg.dataset}
        acfg = AnalysisConfig(
            layers=tuple(layers or p.layers[regime]),
            decoder={**p.decoder, **(decoder or {})},
            fit={**p.fit, **(fit or {})},
            init_epochs=p.init_epochs,
            device=device,
            jobs=jobs,
            seed=seed,
            probe=True,
            progress=progress,
        )
        if progress:
            print(f"[{regime}] measuring {len(acfg.layers)} layers x {len(source.checkpoints)} checkpoints "
                  f"-> {run_dir}/analysis/mi.csv", file=sys.stderr)
        results[regime] = run_analysis(run_dir, source, dataset_spec, acfg)
    return results
