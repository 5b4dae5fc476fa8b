"""`ibprobe train`: train a classifier or autoencoder with checkpoints on a schedule.

    ibprobe train --dataset digits --model resnet --model-arg widths=16,32,64 --regime classify \
                  --epochs 8 --checkpoint-epochs 0,1,2,4,8 --seed 0 --out runs/digits

Rerunning with only `--out DIR` resumes (or, if finished, leaves) the run recorded in DIR/config.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ibprobe.errors import ConfigError
from ibprobe.utils import parse_epochs, parse_kv, read_json

# flag dest -> TrainConfig field
_FIELDS = {
    "dataset": "dataset", "data_root": "data_root", "images": "images_path", "labels": "labels_path",
    "levels": "levels", "test_fraction": "test_fraction", "model": "model", "regime": "regime", "epochs": "epochs",
    "checkpoint_epochs": "checkpoint_epochs", "seed": "seed", "optimizer": "optimizer", "lr": "lr",
    "momentum": "momentum", "weight_decay": "weight_decay", "schedule": "schedule", "batch_size": "batch_size",
    "augment": "augment", "max_train": "max_train",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ibprobe.data import DATASET_NAMES
    from ibprobe.train import AUGMENTS, OPTIMIZERS, REGIMES, SCHEDULES, TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a ResNet (classify or autoencode) with checkpoints on a schedule",
        description="Train a network and write DIR/config.json, DIR/checkpoints/epoch_XXXX.pt (epoch 0 = the "
        "initialisation) and DIR/metrics.jsonl. Rerun with only --out DIR to resume after a kill.")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--dataset", choices=DATASET_NAMES, help=f"data set (default {d.dataset})")
    p.add_argument("--data-root", metavar="DIR", help="where torchvision/ImageFolder data lives (default ./data)")
    p.add_argument("--download", action="store_true", help="download torchvision data sets if missing")
    p.add_argument("--images", metavar="X.npy", help="dataset npy: uint8 images [N,C,H,W] (or [N,H,W,C], [N,H,W])")
    p.add_argument("--labels", metavar="Y.npy", help="dataset npy: int labels [N] (optional)")
    p.add_argument("--levels", type=int, help="dataset npy: intensity levels L (values < L); others: re-quantise")
    p.add_argument("--test-fraction", type=float, help=f"held-out share for seeded splits (default {d.test_fraction})")
    p.add_argument("--model", metavar="NAME", help=f"resnet or resnet_ae (default {d.model})")
    p.add_argument("--model-arg", action="append", metavar="K=V",
                   help="model option, repeatable: widths=16,32,64 blocks=1 shortcut_depth=2 init=zero ...")
    p.add_argument("--regime", choices=REGIMES, help=f"training objective (default {d.regime})")
    p.add_argument("--epochs", type=int, help=f"epochs (default {d.epochs})")
    p.add_argument("--checkpoint-epochs", metavar="0,1,3,10", help="epochs to checkpoint (default 0,1,2,4,..,last)")
    p.add_argument("--seed", type=int, help=f"seed for init, data order and split (default {d.seed})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--augment", choices=AUGMENTS, help=f"training augmentation (default {d.augment})")
    p.add_argument("--max-train", type=int, help="train on a seeded subset of this many images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)
    return p


def config_from_args(args) -> "TrainConfig":
    """The run's TrainConfig: the one stored in --out (flags must agree with it), else one built from flags."""
    from ibprobe.train import TrainConfig, config_from_dict

    given = {f: getattr(args, dest) for dest, f in _FIELDS.items() if getattr(args, dest, None) is not None}
    if "checkpoint_epochs" in given:
        given["checkpoint_epochs"] = tuple(parse_epochs(given["checkpoint_epochs"]))
    if args.model_arg:
        given["model_args"] = parse_kv(args.model_arg, "--model-arg")
    if args.download:
        given["download"] = True
    stored_path = Path(args.out) / "config.json"
    if not stored_path.is_file():
        try:
            return TrainConfig(**given)
        except TypeError as e:
            raise ConfigError(str(e)) from None
    stored = config_from_dict(read_json(stored_path))
    want = dataclasses.replace(stored, **given)
    diff = [k for k in given if k != "download" and _norm(getattr(want, k)) != _norm(getattr(stored, k))]
    if diff:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in diff)
        raise ConfigError(f"{args.out} already holds a run with different {flags}; rerun with only --out {args.out} "
                          f"to resume it, or choose another --out")
    return want


def _norm(v):
    return json.loads(json.dumps(v, default=list))


def handler(args) -> int:
    from ibprobe.train import list_checkpoints, train

    cfg = config_from_args(args)
    out = train(cfg, args.out, device=args.device, progress=not args.quiet)
    if not args.quiet:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("train_loss", "test_loss", "test_acc") if k in last)
        print(f"epoch {last.get('epoch')}: {shown}", file=sys.stderr)
        print(f"wrote {len(list_checkpoints(out))} checkpoints to {out / 'checkpoints'}, metrics in "
              f"{out / 'metrics.jsonl'}", file=sys.stderr)
    return 0
