"""`ibprobe complexity`: the norms that norm-based generalization bounds are built from, per checkpoint, beside the
generalization gap; several runs (e.g. true against random labels) also side by side."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ibprobe.cli import flags
from ibprobe.errors import ConfigError
from ibprobe.lenses.run import complexity_lens
from ibprobe.report.lenses import compare_complexity, draw_lens_tables
from ibprobe.rundir.tables import read_metrics

EXAMPLE = """examples:
  ibprobe complexity --run runs/digits
  ibprobe complexity --run runs/true runs/random --out runs/true_vs_random
  ibprobe complexity --model resnet --model-arg widths=8,8,8 --checkpoints 'ckpts/*.pt' --dataset digits --out runs/c
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "complexity", help="spectral, Frobenius and (2,1) norms and the bounds' complexity terms per checkpoint",
        description="Per checkpoint: every weight layer's operator norms (spectral norm of the convolution as an "
        "operator, BatchNorm folded in) and the spectral complexities of Bartlett et al. and of residual units (He, "
        "Liu & Tao), divided by the training margin when classifying -> analysis/complexity_layers.csv, "
        "analysis/complexity.csv and figures/complexity.{png,pdf,csv} beside the generalization gap from "
        "metrics.jsonl. With several --run folders, also OUT/figures/complexity.{png,pdf,csv} with all of them.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_lens_source(p, several_runs=True)
    p.add_argument("--batch", type=flags.count(0), default=1000, metavar="N",
                   help="training images the margins are taken on (default 1000; 0: all)")
    p.add_argument("--margin-quantile", type=float, default=0.1, metavar="Q",
                   help="the margin is this quantile of the training margins (default 0.1)")
    p.add_argument("--out", type=flags.out_dir, metavar="DIR",
                   help="output folder (default: the --run folder; with several runs, the "
                   "folder of the figure that compares them)")
    flags.add_device(p)
    flags.add_seed(p, "seed of the images and of the power iterations")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    t0 = time.time()
    several = isinstance(args.run, list) and len(args.run) > 1
    if several and not args.out:
        raise ConfigError("several --run folders need --out DIR, the folder of the figure that compares them")
    written, compared = [], {}
    for target, out in flags.lens_targets(args):
        rows, files = complexity_lens(target, out, n=args.batch, margin_quantile=args.margin_quantile,
                                      seed=args.seed, epochs=flags.parse_epochs(args.epochs),
                                      at_steps=flags.parse_steps(args.steps), device=args.device,
                                      progress=not args.quiet)
        metrics = read_metrics(target.metrics_path) if target.metrics_path else []
        written += files + draw_lens_tables(out, ["complexity"], title=target.title, metrics=metrics, label=target.label)
        compared[target.label if target.label not in compared else str(out)] = out
        print(f"{target.title}: complexity per checkpoint")
        print(f"  {'step':>7} {'epoch':>6} {'train_acc':>9} {'lipschitz':>10} {'residual_R':>10} {'bartlett_R':>10} "
              f"{'margin':>8} {'R_res/margin':>12}")
        for r in rows:
            acc, m, rm = (r.get(k, float("nan")) for k in ("train_acc_eval", "margin", "residual_margin"))
            print(f"  {r['step']:>7} {r['epoch']:>6.3g} {acc:>9.3f} {r['lipschitz_residual']:>10.4g} "
                  f"{r['residual_complexity']:>10.4g} "
                  f"{r['bartlett']:>10.4g} {m:>8.3g} {rm:>12.4g}")
    if several:
        written += compare_complexity(compared, Path(args.out))
    return flags.print_written(t0, written, [], "")
