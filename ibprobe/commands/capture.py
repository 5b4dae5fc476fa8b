"""`ibprobe capture`: fill a run's activation store, DIR/activations/epoch_XXXX/<layer>/<split>.npy (float16)."""
from __future__ import annotations

import argparse
import sys

from ibprobe.errors import ConfigError, LayerError
from ibprobe.utils import parse_epochs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "capture", help="store a run's layer activations at its checkpoints (float16 .npy)",
        description="For each chosen checkpoint, run the model on the train and test splits and stream the chosen "
        "layers to DIR/activations/epoch_XXXX/<layer>/<split>.npy, with a manifest.json per epoch. Already stored "
        "entries are kept.")
    p.add_argument("--run", required=True, metavar="DIR", help="training run folder")
    p.add_argument("--layers", required=True, metavar="A,B", help="comma-separated module paths (see `ibprobe layers`)")
    p.add_argument("--epochs", metavar="0,3", help="checkpoint epochs (default: all)")
    p.add_argument("--splits", default="train,test", metavar="train,test", help="which splits (default both)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--overwrite", action="store_true", help="recompute entries already stored")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=handler)
    return p


def handler(args) -> int:
    from pathlib import Path

    from ibprobe.taps import ActivationStore, capture_to_store, tappable_layers
    from ibprobe.train import list_checkpoints, load_run_config, load_run_dataset, load_run_model

    run = Path(args.run)
    config = load_run_config(run)
    layers = [l.strip() for l in args.layers.split(",") if l.strip()]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "test")]
    if bad or not splits:
        raise ConfigError(f"--splits must list train and/or test, got {args.splits!r}")
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise ConfigError(f"{run} has no checkpoints yet; run `ibprobe train --out {run}` first")
    wanted = parse_epochs(args.epochs)
    if wanted is not None:
        have = {e for e, _ in ckpts}
        missing = [e for e in wanted if e not in have]
        if missing:
            raise ConfigError(f"no checkpoint for epoch(s) {missing} in {run}; available: {sorted(have)}")
        ckpts = [(e, p) for e, p in ckpts if e in wanted]
    dataset = load_run_dataset(run)
    store = ActivationStore(run / "activations")
    normalize = config.get("normalize")
    quiet = args.quiet
    it = ckpts
    if not quiet:
        from tqdm import tqdm

        it = tqdm(ckpts, desc="capture", unit="ckpt")
    for epoch, path in it:
        model, _ = load_run_model(path, device=args.device)
        modules = dict(model.named_modules())
        unknown = [l for l in layers if l not in modules or not l]
        if unknown:
            raise LayerError(f"unknown layer(s) {', '.join(unknown)}; available: {', '.join(tappable_layers(model))}")
        for split in splits:
            images, _ = dataset.split(split)
            capture_to_store(model, images, layers, store, epoch=epoch, split=split, levels=dataset.levels,
                             normalize=normalize, batch_size=args.batch_size, device=args.device,
                             checkpoint=str(path), overwrite=args.overwrite)
    if not quiet:
        print(f"stored {len(layers)} layer(s) x {len(splits)} split(s) x {len(ckpts)} checkpoint(s) in "
              f"{store.root}", file=sys.stderr)
    return 0
