"""The pipeline: train -> capture -> fit -> measure -> report, and nothing else.

    train     (ibprobe.train)    -> DIR/checkpoints/, metrics.jsonl
    capture   (ibprobe.capture)  -> DIR/activations/   every tapped layer at every checkpoint
    fit       (ibprobe.fit)      -> DIR/decoders/      q0(x), q(x), one q(x|h) per (checkpoint, layer)
    measure   (ibprobe.measure)  -> DIR/analysis/      Î(X;H) with 95% CIs, Î(Y;H), mi.csv; binning and KDE
                                                       baselines (ibprobe.baselines) on the same test images
    report    (ibprobe.report)   -> DIR/figures/       information plane, MI against epoch, gallery

Every stage skips what is already on disk, so rerunning a command resumes it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ibprobe.backends import Backend, LocalBackend
from ibprobe.baselines import write_baselines
from ibprobe.capture import ActivationStore, check_layers, fill_store
from ibprobe.config import AnalysisConfig, Settings, TrainConfig, apply_overrides, resolve_device
from ibprobe.data import load_dataset
from ibprobe.errors import ConfigError, UserError
from ibprobe.fit import plan_jobs, reference_jobs, resolve_jobs, write_job_index
from ibprobe.folder import claim, source_inputs
from ibprobe.fsutil import atomic_write_json
from ibprobe.kid import KidConfig
from ibprobe.measure import measure_jobs, write_changes_csv, write_mi_csv
from ibprobe.models import build_model
from ibprobe.presets import Preset, get_preset
from ibprobe.report import draw_figures
from ibprobe.source import ModelSource, dataset, decoder_split, default_chain, resolve_side, source_from_run
from ibprobe.train import train


def run_analysis(out_dir: str | os.PathLike, source: ModelSource, dataset_spec: dict, cfg: AnalysisConfig,
                 settings: Settings | None = None, backend: Backend | None = None) -> list[dict]:
    """Capture, fit and measure every (checkpoint, layer) of `source`; write DIR/analysis/mi.csv, changes.csv,
    baselines.csv and binning_sensitivity.csv, return the mi.csv rows.

    `settings` default to `cfg` resolved against the data; `backend` (ibprobe.backends) runs the decoder jobs,
    default `cfg.jobs` processes on this machine. Resumable and idempotent: finished jobs are kept, killed ones
    resume; a folder that holds results keeps the settings and inputs pinned in its analysis.json (checkpoint
    contents included), refusing others before any work, and is held by this process until it returns.
    """
    run_dir = Path(out_dir)
    if not source.checkpoints:
        raise UserError("no checkpoints to analyse")
    if not cfg.layers:
        raise UserError("no layers to analyse; list some with --layers (see `ibprobe layers`)")
    ds = dataset(dataset_spec)
    settings = settings or cfg.settings(ds.image_shape, ds.levels, resolve_side(ds, cfg.decoder_data))
    fit_idx, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs = source_inputs(source, run_dir)
    with claim(run_dir, settings, dataset_spec, cfg.layers, inputs) as layers:
        return _analyse(run_dir, source, ds, cfg, settings, layers, inputs["checkpoints"], fit_idx, test_idx,
                        backend)


def _analyse(run_dir: Path, source: ModelSource, ds, cfg: AnalysisConfig, settings: Settings, layers: list[str],
             digests: dict, fit_idx, test_idx, backend: Backend | None) -> list[dict]:
    atomic_write_json(run_dir / "source.json", source.to_dict(run_dir))
    device = resolve_device(cfg.device)
    fill_store(ActivationStore(run_dir / "activations"), source, {"fit": ds.images[fit_idx],
                                                                  "test": ds.images[test_idx]},
               cfg.layers, levels=ds.levels, device=device, progress=cfg.progress, digests=digests)

    refs = reference_jobs(settings, labelled=len(np.unique(ds.labels[fit_idx])) > 1)
    specs = plan_jobs(source, cfg.layers)
    write_job_index(run_dir, [j.again(r) for r in range(cfg.repeats) for j in refs + plan_jobs(source, layers)])
    todo = [j.again(r) for r in range(cfg.repeats) for j in refs + specs]
    runtime = cfg.runtime()
    backend = backend or LocalBackend(workers=resolve_jobs(cfg.jobs, device))
    starts = [j for j in todo if j.init]  # every other job of a repeat starts from its q0(x)
    results = backend.run(run_dir, starts, runtime, retry_failed=cfg.retry_failed, desc="q0(x)")
    if all(r and r.get("status") == "ok" for r in results.values()):
        results.update(backend.run(run_dir, [j for j in todo if not j.init], runtime, retry_failed=cfg.retry_failed))
    rows, change_rows = measure_jobs(run_dir, specs, settings, repeats=cfg.repeats, results=results,
                                     chain=list(cfg.chain) or default_chain(source, cfg.layers))
    write_mi_csv(run_dir / "analysis" / "mi.csv", rows)
    write_changes_csv(run_dir / "analysis" / "changes.csv", change_rows)
    write_baselines(run_dir, specs, settings, bins=cfg.bins, noise_var=cfg.kde_noise_var, progress=cfg.progress)
    return rows


# ------------------------------------------------------------------------------------------------ presets
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


def preset_configs(preset: str | Preset, regime: str, *, data_root: str | None = None, download: bool = False,
                   seed: int = 0, train_overrides: dict | None = None, layers=None, decoder: dict | None = None,
                   fit: dict | None = None, device: str = "auto", jobs: int = 0, progress: bool = True,
                   probe: bool = True, retry_failed: bool = False, keep_fit_state: bool = False,
                   decoder_data: str = "auto", reference: str = "best", mixture_codes: int = 16,
                   repeats: int = 1, bins: int = 30, kde_noise_var: float = 0.1) -> tuple[TrainConfig, AnalysisConfig]:
    """The TrainConfig and AnalysisConfig of one regime of a preset, with the user's overrides."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    tkw = dict(p.train, regime=regime, seed=seed)
    if regime == "autoencode":
        tkw["model"] = p.autoencoder
    if data_root is not None:
        tkw["data_root"] = str(data_root)
    if download:
        tkw["download"] = True
    tcfg = apply_overrides(TrainConfig(**tkw), train_overrides, "--train")
    acfg = AnalysisConfig(layers=tuple(layers or p.layers[regime]), decoder={**p.decoder, **(decoder or {})},
                          fit={**p.fit, **(fit or {})}, init_epochs=p.init_epochs, device=device, jobs=jobs,
                          seed=seed, probe=probe, retry_failed=retry_failed, progress=progress,
                          keep_fit_state=keep_fit_state, decoder_data=decoder_data, reference=reference,
                          mixture_codes=mixture_codes, repeats=repeats, bins=bins, kde_noise_var=kde_noise_var)
    return tcfg, acfg


def run_preset(preset: str | Preset, out_dir: str | os.PathLike, *, regimes=None, figures: bool = True,
               backend: Backend | None = None, kid: KidConfig | bool = True, **overrides) -> dict[str, list[dict]]:
    """Train + analyse (+ draw) each regime of `preset`; returns {regime: mi.csv rows}.

    `kid`: the KID of decoder samples, computed with the figures: True (the defaults, seeded by `seed`), a KidConfig,
    or False.

    `overrides`: the keywords of `preset_configs`; `backend`: who runs the decoder jobs (see run_analysis). Every
    setting is resolved before any training starts.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    dirs = regime_dirs(out_dir, p, regimes)
    kid = KidConfig(seed=overrides.get("seed", 0)) if kid is True else kid or None
    plans = {}
    for regime, run_dir in dirs.items():
        tcfg, acfg = preset_configs(p, regime, **overrides)
        ds = load_dataset(**tcfg.dataset_spec(), download=True) if tcfg.download else dataset(tcfg.dataset_spec())
        check_layers(build_model(tcfg.model, in_shape=ds.image_shape, num_classes=ds.num_classes, **tcfg.model_args),
                     acfg.layers)  # the model and the layers, before any training
        plans[regime] = (run_dir, tcfg, acfg, acfg.settings(ds.image_shape, ds.levels,
                                                            resolve_side(ds, acfg.decoder_data)))
    results = {}
    for regime, (run_dir, tcfg, acfg, settings) in plans.items():
        if acfg.progress:
            print(f"[{regime}] training {tcfg.model} on {tcfg.dataset} -> {run_dir}", file=sys.stderr)
        train(tcfg, run_dir, device=acfg.device, progress=acfg.progress)
        source, data_spec = source_from_run(run_dir)
        if acfg.progress:
            print(f"[{regime}] measuring {len(acfg.layers)} layers x {len(source.checkpoints)} checkpoints "
                  f"-> {run_dir}/analysis/mi.csv", file=sys.stderr)
        results[regime] = run_analysis(run_dir, source, data_spec, acfg, settings, backend)
        if figures:
            draw_figures(run_dir, progress=acfg.progress, gallery_layers=p.gallery_layers,
                         gallery_epochs=p.gallery_epochs, device=acfg.device, kid=kid)
    return results
