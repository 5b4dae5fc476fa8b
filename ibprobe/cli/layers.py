"""`ibprobe layers`: the tappable layers of a run's model or of a named model, one module path per line."""
from __future__ import annotations

import os
import sys

from ibprobe.capture import list_layers
from ibprobe.cli import flags
from ibprobe.data import known_shape
from ibprobe.errors import ConfigError
from ibprobe.models import build_model
from ibprobe.rundir.checkpoints import build_run_model, load_run_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "layers", help="list the tappable layers (module paths) of a model",
        description="Print one module path per line: the names --layers accepts in capture, run and analyze.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=flags.folder, metavar="DIR", help="a training run folder (reads DIR/config.json)")
    src.add_argument("--model", metavar="SPEC", help="resnet, resnet_ae, rir, torchvision:NAME or pkg.module:callable")
    p.add_argument("--model-arg", action="extend", nargs="+", metavar="K=V", help="model option (repeatable)")
    p.add_argument("--dataset", default="digits", help="gives the input shape and classes (default digits)")
    p.add_argument("--in-shape", metavar="C,H,W", help="input shape, instead of --dataset")
    p.add_argument("--num-classes", type=flags.count(1), help="number of classes, instead of --dataset")
    p.add_argument("--all", action="store_true", help="every named module, not only those that fire once per forward")
    p.set_defaults(handler=handler)


def handler(args) -> int:
    if args.run:
        if args.model_arg:
            raise ConfigError("--model-arg goes with --model, not --run (a run records its own model)")
        model = build_run_model(load_run_config(args.run))
    else:
        in_shape, num_classes = None, None
        if args.in_shape is None or args.num_classes is None:
            in_shape, num_classes, _ = known_shape(args.dataset)
        if args.in_shape is not None:
            try:
                in_shape = tuple(int(v) for v in args.in_shape.split(","))
            except ValueError:
                raise ConfigError(f"--in-shape {args.in_shape!r} must be C,H,W") from None
        if args.num_classes is not None:
            num_classes = args.num_classes
        model = build_model(args.model, in_shape=in_shape, num_classes=num_classes,
                            **flags.model_args(args, args.model))
    try:
        print("\n".join(list_layers(model, every=args.all)), flush=True)
    except BrokenPipeError:  # e.g. `ibprobe layers ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
