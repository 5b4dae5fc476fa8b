"""The pipeline: train -> capture -> fit -> measure -> report, and nothing else.

    train     (ibprobe.train)    -> DIR/checkpoints/, metrics.jsonl
    capture   (ibprobe.capture)  -> DIR/activations/   every tapped layer at every checkpoint
    fit       (ibprobe.jobs)     -> DIR/decoders/      q0(x), q(x), one q(x|h) per (checkpoint, layer)
    measure   (ibprobe.measure)  -> DIR/analysis/      Î(X;H) with 95% CIs, Î(Y;H), mi.csv; changes.csv and
                                                       phases.csv (the stages around each layer's peak); binning
                                                       and KDE baselines on the same test images; the KID of the
                                                       samples
    report    (ibprobe.report)   -> DIR/figures/       information plane, MI against epoch, gallery (and, for a
                                                       preset of two regimes, both side by side)

Every stage skips what is already on disk, so rerunning a command resumes it. The settings travel as objects: a
TrainConfig and an AnalysisConfig (the user's request, whose decoder and fit overrides go over a preset's).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from ibprobe.backends import Backend, LocalBackend
from ibprobe.capture import ActivationStore, check_layers, fill_store
from ibprobe.config import CHECKPOINT_KEYS, AnalysisConfig, Settings, TrainConfig, apply_overrides, resolve_device
from ibprobe.data import load_dataset
from ibprobe.errors import ConfigError, UserError
from ibprobe.estimators.kid import KidConfig
from ibprobe.jobs import plan_jobs, reference_jobs, resolve_jobs, write_job_index
from ibprobe.measure.baselines import write_baselines
from ibprobe.measure.kid import measure_kid
from ibprobe.measure.mi import measure_jobs, reference_candidates
from ibprobe.measure.phases import measure_phases
from ibprobe.models import build_model
from ibprobe.presets import Preset, get_preset
from ibprobe.report import plot_run, save_gallery
from ibprobe.report.plots import plot_regimes
from ibprobe.rundir.files import atomic_write_json
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.pinning import claim, pin_reference_candidates, source_inputs
from ibprobe.rundir.sources import (ModelSource, dataset, decoder_split, default_chain, open_source, resolve_side,
                                    source_from_run)
from ibprobe.rundir.tables import CHANGES, MI, PHASES, write_table
from ibprobe.sample import GalleryData, find_decoders, kid_captions, sample_gallery, stack_galleries
from ibprobe.train import train


def run_analysis(out_dir: str | os.PathLike, source: ModelSource, dataset_spec: dict, cfg: AnalysisConfig,
                 settings: Settings | None = None, backend: Backend | None = None) -> list[dict]:
    """Capture, fit and measure every (checkpoint, layer) of `source`; write DIR/analysis/mi.csv, changes.csv,
    phases.csv, baselines.csv and binning_sensitivity.csv, return the mi.csv rows.

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
    run = RunDir(run_dir)
    atomic_write_json(run.source, source.to_dict(run_dir))
    device = resolve_device(cfg.device)
    fill_store(ActivationStore(run.activations), source, {"fit": ds.images[fit_idx], "test": ds.images[test_idx]},
               cfg.layers, levels=ds.levels, device=device, progress=cfg.progress, digests=digests)

    refs = reference_jobs(settings, labelled=len(np.unique(ds.labels[fit_idx])) > 1)
    specs = plan_jobs(source, cfg.layers)
    write_job_index(run_dir, [j.again(r) for r in range(cfg.repeats) for j in refs + plan_jobs(source, layers)])
    todo = [j.again(r) for r in range(cfg.repeats) for j in refs + specs]
    runtime = cfg.runtime()
    backend = backend or LocalBackend(workers=resolve_jobs(cfg.jobs, device))
    starts = [j for j in todo if j.role.value == "q0"]  # every other job of a repeat starts from its q0(x)
    results = backend.run(run_dir, starts, runtime, retry_failed=cfg.retry_failed, desc="q0(x)")
    if all(r and r.get("status") == "ok" for r in results.values()):
        results.update(backend.run(run_dir, [j for j in todo if j not in starts], runtime,
                                   retry_failed=cfg.retry_failed))
    labelled = len(np.unique(ds.labels[fit_idx])) > 1
    candidates = pin_reference_candidates(run_dir, reference_candidates(settings, specs, labelled))
    rows, change_rows = measure_jobs(run_dir, specs, settings, repeats=cfg.repeats, results=results,
                                     chain=list(cfg.chain) or default_chain(source, cfg.layers), candidates=candidates)
    write_table(run.table(MI.name), rows, MI)
    write_table(run.table(CHANGES.name), change_rows, CHANGES)
    write_table(run.table(PHASES.name), measure_phases(run_dir, rows, change_rows), PHASES)
    write_baselines(run_dir, specs, settings, bins=cfg.bins, noise_var=cfg.kde_noise_var, progress=cfg.progress)
    return rows


# ------------------------------------------------------------------------------------------------ figures
def draw_figures(run_dir: str | os.PathLike, *, progress: bool = True, gallery: bool = True, gallery_layers=None,
                 gallery_epochs=None, device: str = "auto", kid: KidConfig | None = KidConfig()) -> list[Path]:
    """KID (analysis/kid.csv; `kid` None skips it, a KID the folder cannot give is said and skipped), the plots and
    the gallery of a finished run folder; returns the files written.

    `gallery_layers` / `gallery_epochs` (a preset's choice) apply where the folder has decoders for them. When the
    run's checkpoints or layers were overridden, missing preset layers are dropped (all layers if none is left) and
    missing preset epochs give way to the folder's first and last checkpoints.
    """
    written: list[Path] = []
    try:
        if kid is not None and measure_kid(run_dir, kid, device=device, progress=progress):
            written.append(RunDir(run_dir).table("kid"))
    except UserError as e:  # e.g. a network whose penultimate layer cannot be told: the figures still matter
        print(f"KID skipped: {e}", file=sys.stderr)
    written += plot_run(run_dir)
    if gallery:
        data = preset_gallery(run_dir, gallery_layers, gallery_epochs, device=device, progress=progress)
        written.append(save_gallery(data, RunDir(run_dir).figures))
    return written


def preset_gallery(run_dir: str | os.PathLike, gallery_layers=None, gallery_epochs=None, *, device: str = "auto",
                   progress: bool = True) -> GalleryData:
    """The gallery of a preset's choice of layers and epochs (see draw_figures), sampled, with KID captions."""
    have = [k for k in find_decoders(run_dir) if k[0] is not None]
    layers = [l for l in gallery_layers or () if l in {l for l, _ in have}] or None
    epochs = list(gallery_epochs) if gallery_epochs is not None else None
    steps = None
    have_steps = sorted({s for _, s in have})
    if epochs is not None and have_steps:
        source, _ = open_source(run_dir)
        if not {float(e) for e in epochs} <= {source.epoch_of(s) for s in have_steps}:
            epochs, steps = None, sorted({have_steps[0], have_steps[-1]})
    return gallery_data(run_dir, layers=layers, steps=steps, epochs=epochs, device=device, progress=progress)


def gallery_data(run_dir: str | os.PathLike, *, n_images: int = 4, n_samples: int = 4,
                 layers: list[str] | None = None, steps: list[int] | None = None, epochs: list[float] | None = None,
                 seed: int = 0, device: str = "auto", progress: bool = True) -> GalleryData:
    """Samples of the gallery (ibprobe.sample.sample_gallery: checkpoints chosen by step and/or epoch, exactly),
    each row captioned with its KID from analysis/kid.csv."""
    data = sample_gallery(run_dir, n_images=n_images, n_samples=n_samples, layers=layers, steps=steps,
                          epochs=epochs, seed=seed, device=device, progress=progress)
    notes = kid_captions(run_dir)
    for row in data.rows:
        row.note = notes.get((row.layer, row.step), "")
    return data


def make_gallery(run_dir: str | os.PathLike, *, n_images: int = 4, n_samples: int = 4,
                 layers: list[str] | None = None, steps: list[int] | None = None, epochs: list[float] | None = None,
                 seed: int = 0, device: str = "auto", progress: bool = True) -> Path:
    """Sample (ibprobe.sample) and draw (ibprobe.report.gallery) the gallery into run_dir/figures/: gallery.png
    (returned), gallery.pdf, and gallery.npz (the drawn pixels). Rows get their KID from analysis/kid.csv."""
    data = gallery_data(run_dir, n_images=n_images, n_samples=n_samples, layers=layers, steps=steps, epochs=epochs,
                        seed=seed, device=device, progress=progress)
    return save_gallery(data, RunDir(run_dir).figures)


def draw_regimes(out_dir: str | os.PathLike, run_dirs: dict[str, Path],
                 galleries: dict[str, GalleryData] | None = None) -> list[Path]:
    """The regimes of a preset side by side, into out_dir/figures/: info_plane_regimes (their information planes on
    shared axes, report.plots.plot_regimes) and gallery_regimes (their gallery rows stacked, each caption starting
    with its regime; from `galleries`, the GalleryData each regime's gallery was drawn from). Returns the files
    written; a part that cannot be drawn is said on stderr and skipped."""
    written = plot_regimes(out_dir, run_dirs)
    if galleries and len(galleries) > 1:
        try:
            written.append(save_gallery(stack_galleries(galleries), RunDir(out_dir).figures, stem="gallery_regimes",
                                        title="samples from q(x | h(x)) for held-out images, per training regime"))
        except UserError as e:
            print(f"gallery of the regimes skipped: {e}", file=sys.stderr)
    return written


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


def preset_configs(preset: str | Preset, regime: str, request: AnalysisConfig = AnalysisConfig(), *,
                   train_overrides: dict | None = None, data_root: str | None = None,
                   download: bool = False) -> tuple[TrainConfig, AnalysisConfig]:
    """The TrainConfig and AnalysisConfig of one regime of a preset under the user's `request`: its layers (when
    given), decoder and fit overrides win over the preset's; `train_overrides` over the preset's training (for the
    autoencode regime, the preset's `autoencoder_train` over its `train`; where the overrides place checkpoints, by
    epochs, steps or a schedule, they replace the preset's placement as a whole)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    tkw = dict(p.train, regime=regime, seed=request.seed)
    if set(train_overrides or ()) & set(CHECKPOINT_KEYS):  # the user's checkpoints replace the preset's
        tkw = {k: v for k, v in tkw.items() if k not in CHECKPOINT_KEYS}
    if regime == "autoencode":
        args = {**dict(p.train.get("model_args", {})), **dict(p.autoencoder_train.get("model_args", {}))}
        tkw.update(p.autoencoder_train, model=p.autoencoder, model_args=args)
    if data_root is not None:
        tkw["data_root"] = str(data_root)
    if download:
        tkw["download"] = True
    tcfg = apply_overrides(TrainConfig(**tkw), train_overrides, "--train")
    acfg = dataclasses.replace(
        request, layers=tuple(request.layers or p.layers[regime]), decoder={**p.decoder, **request.decoder},
        fit={**p.fit, **request.fit}, init_epochs=p.init_epochs if request.init_epochs is None else request.init_epochs,
        code_lr=request.code_lr or p.code_lr)
    return tcfg, acfg


def run_preset(preset: str | Preset, out_dir: str | os.PathLike, request: AnalysisConfig = AnalysisConfig(), *,
               regimes=None, figures: bool = True, backend: Backend | None = None, kid: KidConfig | bool = True,
               train_overrides: dict | None = None, data_root: str | None = None,
               download: bool = False) -> dict[str, list[dict]]:
    """Train + analyse (+ draw) each regime of `preset` under the user's `request`; returns {regime: mi.csv rows}.

    `kid`: the KID of decoder samples, computed with the figures: True (the preset's KID defaults, `Preset.kid`,
    seeded by the request's seed), a KidConfig, or False. `backend`: who runs the decoder jobs (see run_analysis).
    Every setting is resolved before any training starts. With figures, a preset of several regimes also gets them
    side by side in DIR/figures (`draw_regimes`).

    >>> import tempfile
    >>> tiny = Preset(name="tiny", description="a doctest", layers={"classify": ("layer1",)},
    ...               train=dict(dataset="digits", model_args={"widths": (4, 8, 8), "blocks": (1, 1, 1)}, epochs=1,
    ...                          checkpoint_epochs=(0, 1), max_train=300),
    ...               decoder=dict(nr_resnet=1, nr_filters=4, nr_mix=1, dropout=0.0), fit=dict(epochs=1))
    >>> rows = run_preset(tiny, tempfile.mkdtemp(), AnalysisConfig(device="cpu", jobs=1, progress=False),
    ...                   figures=False)["classify"]
    >>> [(r["layer"], r["step"], r["epoch"], r["status"]) for r in rows]
    [('layer1', 0, 0.0, 'ok'), ('layer1', 5, 1.0, 'ok')]
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    dirs = regime_dirs(out_dir, p, regimes)
    kid = KidConfig(**{**p.kid, "seed": request.seed}) if kid is True else kid or None
    plans = {}
    for regime, run_dir in dirs.items():
        tcfg, acfg = preset_configs(p, regime, request, train_overrides=train_overrides, data_root=data_root,
                                    download=download)
        ds = load_dataset(**tcfg.dataset_spec(), download=True) if tcfg.download else dataset(tcfg.dataset_spec())
        check_layers(build_model(tcfg.model, in_shape=ds.image_shape, num_classes=ds.num_classes, **tcfg.model_args),
                     acfg.layers)  # the model and the layers, before any training
        plans[regime] = (run_dir, tcfg, acfg, acfg.settings(ds.image_shape, ds.levels,
                                                            resolve_side(ds, acfg.decoder_data)))
    results, galleries = {}, {}
    for regime, (run_dir, tcfg, acfg, settings) in plans.items():
        if acfg.progress:
            print(f"[{regime}] training {tcfg.model} on {tcfg.dataset} -> {run_dir}", file=sys.stderr)
        train(tcfg, run_dir, device=acfg.device, progress=acfg.progress)
        source, data_spec = source_from_run(run_dir)
        if acfg.progress:
            print(f"[{regime}] measuring {len(acfg.layers)} layers x {len(source.checkpoints)} checkpoints "
                  f"-> {RunDir(run_dir).table(MI.name)}", file=sys.stderr)
        results[regime] = run_analysis(run_dir, source, data_spec, acfg, settings, backend)
        if figures:
            draw_figures(run_dir, progress=acfg.progress, gallery=False, device=acfg.device, kid=kid)
            galleries[regime] = preset_gallery(run_dir, p.gallery_layers, p.gallery_epochs, device=acfg.device,
                                               progress=acfg.progress)
            save_gallery(galleries[regime], RunDir(run_dir).figures)
    if figures and len(p.regimes) > 1:
        draw_regimes(out_dir, regime_dirs(out_dir, p), galleries)
    return results
