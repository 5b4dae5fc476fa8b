"""KID of every decoder's samples on a run folder (ibprobe.estimators.kid) -> DIR/analysis/kid.csv.

It samples as the gallery does, with the same sampler (ibprobe.sample): for
`KidConfig.samples` of the decoders' test images x_i (chosen by the seed), one sample of q(x | h(x_i)) from each
(layer, checkpoint) decoder, and as many samples of q(x). The features are, by default, the analysed network's
penultimate layer at its last checkpoint (no download), or a user's network with local weights. plot_run draws
figures/kid.{png,pdf,csv} from the table and the gallery puts each row's KID in its caption.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from decoders.device import one_cpu_thread
from ibprobe.config import resolve_device
from ibprobe.errors import DataError
from ibprobe.estimators.kid import (FeatureNet, KidConfig, default_input_size, feature_net, input_channels, kid_rows,
                                    load_feature_model)
from ibprobe.rundir.paths import RunDir, step_dirname
from ibprobe.rundir.pinning import read_pinned
from ibprobe.rundir.sources import NORMALIZE_PRESETS, ModelSource, decoder_split, open_source
from ibprobe.rundir.tables import KID, write_table
from ibprobe.sample import choose_images, find_decoders, sample_decoders


def run_features(source: ModelSource, image_shape, cfg: KidConfig) -> FeatureNet:
    """The feature network of `cfg`: "run" -> `source`'s network at its last checkpoint, named "run@step_XXXXXXXX";
    else `cfg.features` with `cfg.weights`, resized to its input size and given ImageNet's normalisation when it
    takes 3 channels (what torchvision's ImageNet weights expect; Inception v3 also with its transform_input)."""
    if cfg.features == "run":
        step, path = max(source.checkpoints, key=lambda c: int(c[0]))
        return feature_net(source.load_model(path, device="cpu"), image_shape, normalize=source.normalize,
                           name=f"run@{step_dirname(int(step))}")
    inception = {"transform_input": True, "init_weights": False} if cfg.features == "torchvision:inception_v3" else None
    model = load_feature_model(cfg.features, cfg.weights, model_args=inception)
    norm = NORMALIZE_PRESETS["imagenet"] if input_channels(model) == 3 else None
    return feature_net(model, image_shape, normalize=norm, input_size=default_input_size(cfg.features),
                       name=cfg.features)


def measure_kid(run_dir: str | os.PathLike, cfg: KidConfig = KidConfig(), *, device: str = "auto",
                progress: bool = True) -> list[dict]:
    """Write DIR/analysis/kid.csv (ibprobe.rundir.tables.KID) and return its rows: every finished conditional decoder
    against the held-out images, q(x) and the split-half floor on the same splits. [] (nothing written) when the
    folder has no finished conditional decoder."""
    run_dir = Path(run_dir)
    found = find_decoders(run_dir)
    pairs = [k for k in found if k[0] is not None]
    if not pairs:
        return []
    source, ds = open_source(run_dir)
    settings, _, _ = read_pinned(run_dir)
    _, test_idx = decoder_split(ds, settings.decoder_data, settings.seed)
    n = min(int(cfg.samples), len(test_idx))
    if n < 4:
        raise DataError(f"KID needs at least 4 test images; the decoders' test split holds {len(test_idx)}")
    images = np.asarray(ds.images[choose_images(test_idx, n, cfg.seed)])  # (N, C, H, W)
    net = run_features(source, ds.image_shape, cfg)  # before the sampling: a bad feature network fails fast
    dev = resolve_device(device)
    with one_cpu_thread(dev):
        rows = sample_decoders(run_dir, found, pairs, images, source=source, levels=int(ds.levels), n_samples=1,
                               seed=cfg.seed, device=device, progress=progress, desc="KID: sampling")
    feats = {(r.step, r.layer): net.features(r.samples[:, 0], levels=int(ds.levels), device=dev) for r in rows}
    unconditional = feats.pop((None, None), None)
    table = kid_rows(net.features(images, levels=int(ds.levels), device=dev), feats, unconditional=unconditional,
                     cfg=cfg, features=net.name, epochs=dict(source.epochs))
    write_table(RunDir(run_dir).table(KID.name), table, KID)
    return table


__all__ = ["measure_kid", "run_features"]
