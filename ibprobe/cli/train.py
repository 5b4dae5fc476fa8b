"""`ibprobe train`: train a classifier or autoencoder with checkpoints on a schedule.

    ibprobe train --dataset digits --model resnet --model-arg widths=16,32,64 \
                  --train regime=classify epochs=8 checkpoint_schedule=log:8 --seed 0 --out runs/digits

Rerunning with only `--out DIR` resumes (or, if finished, leaves) the run recorded in DIR/config.json.
"""
from __future__ import annotations

import json
import sys

from ibprobe.cli import flags
from ibprobe.config import TrainConfig
from ibprobe.errors import ConfigError
from ibprobe.rundir.checkpoints import list_checkpoints
from ibprobe.rundir.paths import RunDir
from ibprobe.train import stored_config, train, train_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a ResNet (classify or autoencode) with checkpoints on a schedule",
        description="Train a network and write DIR/config.json, DIR/checkpoints/step_XXXXXXXX.pt (named by the "
        "optimizer step; step 0 = the initialisation; where: checkpoint_epochs, checkpoint_steps or "
        "checkpoint_schedule=log:N, N steps log-spaced over the run) and DIR/metrics.jsonl. Rerun with only --out "
        "DIR to resume after a kill. Training "
        f"settings (--train K=V): {', '.join(f.name for f in TrainConfig.__dataclass_fields__.values())}.")
    p.add_argument("--out", required=True, type=flags.out_dir, metavar="DIR", help="run folder")
    flags.add_data_source(p)
    flags.add_model(p)
    flags.add_train(p)
    flags.add_seed(p, "seed for init, data order and split", default=None)
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    if args.dataset or args.images or args.labels or args.images_key or args.labels_key:  # the data flags must
        flags.data_spec(args)  # agree; the paths stay as given
    given = flags.parse_kv(args.train, "--train")
    named = {"dataset": args.dataset, "data_root": args.data_root, "images_path": args.images,
             "labels_path": args.labels, "levels": args.levels, "model": args.model, "seed": args.seed,
             "images_key": args.images_key, "labels_key": args.labels_key}
    both = sorted(k for k, v in named.items() if v is not None and k in given)
    if both:
        raise ConfigError(f"{', '.join(both)} given twice (as a flag and in --train); give each once")
    given.update({k: v for k, v in named.items() if v is not None})
    if args.model_arg:  # typed for the model they go to: the one asked for, else the run's, else the default
        spec = given.get("model") or (stored_config(args.out) or {}).get("model") or TrainConfig.model
        given["model_args"] = flags.model_args(args, spec)
    if args.download:
        given["download"] = True
    if args.images:
        given["dataset"] = "npy"
    out = train(train_config(args.out, given), args.out, device=args.device, progress=not args.quiet)
    if not args.quiet:
        lines = RunDir(out).metrics.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("train_loss", "test_loss", "test_acc") if k in last)
        print(f"epoch {last.get('epoch')}: {shown}", file=sys.stderr)
        print(f"wrote {len(list_checkpoints(out))} checkpoints to {out / 'checkpoints'}, metrics in "
              f"{out / 'metrics.jsonl'}", file=sys.stderr)
    return 0
