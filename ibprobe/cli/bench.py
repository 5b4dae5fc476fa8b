"""`ibprobe bench decoder [flags]`: the decoder benchmark (`python -m decoders.tools.bench`) under the ibprobe command."""
from __future__ import annotations

import argparse

from decoders.tools import bench

TARGETS = ("decoder",)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark a component: `ibprobe bench decoder --help` lists its flags",
        description="Throughput (train/eval images/s, samples/s) and peak memory of one PixelCNN++ decoder config. "
        "Every flag after TARGET goes to `python -m decoders.tools.bench`; e.g. "
        "`ibprobe bench decoder --image-shape 1,8,8 --levels 17 --nr-resnet 1 --nr-filters 32 --device cpu`.")
    p.add_argument("target", choices=TARGETS, metavar="TARGET", help="what to benchmark: decoder")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...",
                   help="flags of python -m decoders.tools.bench (incl. --quiet)")
    p.set_defaults(handler=handler)


def handler(args) -> int:
    try:
        return bench.main(list(args.bench_args), prog=f"ibprobe bench {args.target}")
    except SystemExit as e:  # --help, or a flag argparse rejected (it has printed why)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
