"""`ibprobe capture`: fill a run's activation store, DIR/activations/step_XXXXXXXX/<layer>/<split>.npy (float16)."""
from __future__ import annotations

import sys
from pathlib import Path

from ibprobe.capture import SPLITS, ActivationStore, check_layers, fill_store
from ibprobe.cli import flags
from ibprobe.config import resolve_device
from ibprobe.errors import ConfigError
from ibprobe.rundir.checkpoints import build_run_model, load_run_config
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.pinning import hold
from ibprobe.rundir.sources import dataset, decoder_split, parse_layers, resolve_side, source_from_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "capture", help="store a run's layer activations at its checkpoints (float16 .npy)",
        description="For each chosen checkpoint, run the model on the analysis images (the decoders' fit and test "
        "images, from one side of the network's training split, as `ibprobe run` chooses them) and stream the "
        "chosen layers to DIR/activations/step_XXXXXXXX/<layer>/<split>.npy, with a manifest.json per checkpoint. "
        "Entries "
        "already stored from the same images are kept.")
    p.add_argument("--run", required=True, type=flags.folder, metavar="DIR", help="training run folder")
    flags.add_layers(p, required=True)
    flags.add_checkpoint_choice(p)
    p.add_argument("--splits", default="fit,test", metavar="fit,test", help="which image sets (default both)")
    p.add_argument("--decoder-data", default="auto", choices=["auto", "heldout", "train"],
                   help="the side of the network's training split the images come from (default auto)")
    flags.add_seed(p, "seed of the split into fit and test images")
    p.add_argument("--batch-size", type=flags.count(1), default=256, help="images per forward pass (default 256)")
    p.add_argument("--overwrite", action="store_true", help="recompute entries already stored")
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    run = Path(args.run)
    layers = parse_layers(args.layers)
    splits = flags.parse_list(args.splits)
    if not splits or any(s not in SPLITS for s in splits):
        raise ConfigError(f"--splits must list fit and/or test, got {args.splits!r}")
    source, spec = source_from_run(run)
    if not source.checkpoints:
        raise ConfigError(f"{run} has no checkpoints yet; run `ibprobe train --out {run}` first")
    chosen = source.select(steps=flags.parse_steps(args.steps), epochs=flags.parse_epochs(args.epochs))
    check_layers(build_run_model(load_run_config(run)), layers)
    ds = dataset(spec)
    sets = dict(zip(SPLITS, decoder_split(ds, resolve_side(ds, args.decoder_data), args.seed)))
    store = ActivationStore(RunDir(run).activations)
    with hold(run):  # an analysis starting now leaves this process's temp files alone
        fill_store(store, source, {s: ds.images[sets[s]] for s in splits}, layers, levels=ds.levels,
                   steps=[s for s, _ in chosen],
                   device=resolve_device(args.device), batch_size=args.batch_size, overwrite=args.overwrite,
                   progress=not args.quiet)
    if not args.quiet:
        print(f"stored {len(layers)} layer(s) x {len(splits)} split(s) in {store.root}", file=sys.stderr)
    return 0
