"""`ibprobe layers`: the tappable layers of a run's model or of a named model, one module path per line."""
from __future__ import annotations

import argparse

from ibprobe.errors import ConfigError
from ibprobe.utils import parse_kv


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "layers", help="list the tappable layers (module paths) of a model",
        description="Print one module path per line: the names --layers accepts in capture, run and analyze.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="a training run folder (reads DIR/config.json)")
    src.add_argument("--model", metavar="NAME", help="resnet, resnet_ae, torchvision:NAME or pkg.module:callable")
    p.add_argument("--model-arg", action="append", metavar="K=V", help="model option (repeatable)")
    p.add_argument("--dataset", default="digits", help="gives the input shape and classes (default digits)")
    p.add_argument("--in-shape", metavar="C,H,W", help="input shape, instead of --dataset")
    p.add_argument("--num-classes", type=int, help="number of classes, instead of --dataset")
    p.add_argument("--all", action="store_true", help="every named module, not only those that fire once per forward")
    p.set_defaults(func=handler)
    return p


def handler(args) -> int:
    from ibprobe.taps import tappable_layers

    if args.run:
        from ibprobe.train import build_run_model, load_run_config

        if args.model_arg:
            raise ConfigError("--model-arg goes with --model, not --run (a run records its own model)")
        model = build_run_model(load_run_config(args.run))
    else:
        from ibprobe.data import known_shape
        from ibprobe.models import build_model

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
                            **parse_kv(args.model_arg, "--model-arg"))
    if args.all:
        names = [n for n, _ in model.named_modules() if n]
    else:
        import torch

        shape = getattr(model, "ibprobe_build", {}).get("in_shape")
        example = torch.zeros(2, *shape) if shape else None
        names = tappable_layers(model, example)
    try:
        print("\n".join(names), flush=True)
    except BrokenPipeError:  # e.g. `ibprobe layers ... | head`
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
