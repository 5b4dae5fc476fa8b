"""`ibprobe hessian`: how well conditioned the training loss is. --linear: Li et al.'s deep linear residual networks
at initialisation, exactly; --run DIR or --model/--checkpoints: the top-k eigenvalues at each checkpoint."""
from __future__ import annotations

import argparse
import time

from ibprobe.cli import flags
from ibprobe.errors import ConfigError
from ibprobe.lenses.run import hessian_lens, hessian_linear, linear_table_text
from ibprobe.report.lenses import draw_lens_tables

EXAMPLE = """examples:
  ibprobe hessian --linear --out runs/li          # shortcut depths 1,2,3; depths 1..8; zero and random init
  ibprobe hessian --run runs/digits --k 10 --batch 256
  ibprobe hessian --model resnet --model-arg widths=8,8,8 --checkpoints 'ckpts/*.pt' --dataset digits --out runs/h
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "hessian", help="condition of the loss Hessian: deep linear nets (Li et al.) or top-k per checkpoint",
        description="--linear: the exact Hessian of the squared loss of deep linear residual networks at zero or "
        "small random initialisation, on one fixed problem -> OUT/analysis/hessian_linear.csv and "
        "OUT/figures/hessian_linear.{png,pdf,csv}. Otherwise: the k largest-|eigenvalue| Hessian eigenvalues of the "
        "training loss on one fixed, seeded batch of training images at each checkpoint, by Hessian-vector products "
        "-> analysis/hessian.csv and figures/hessian.{png,pdf,csv}.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("deep linear residual networks")
    g.add_argument("--linear", action="store_true", help="Li et al.'s setting instead of checkpoints")
    g.add_argument("--shortcut-depths", default="1,2,3", metavar="K,..", help="layers per shortcut (default 1,2,3)")
    g.add_argument("--depths", default="1..8", metavar="A..B", help="residual units, A..B or A,B,.. (default 1..8)")
    g.add_argument("--init", default="zero,random", metavar="I,..", help="zero and/or random (default both)")
    g.add_argument("--width", type=flags.count(1), default=4, help="width of every layer (default 4)")
    g.add_argument("--problem", choices=("generic", "isotropic"), default="generic",
                   help="the data's residual moment E[x (x - y)^T]: generic, or a multiple of I (default generic)")
    flags.add_lens_source(p)
    p.add_argument("--k", type=flags.count(1), default=10, help="eigenvalues per checkpoint (default 10)")
    p.add_argument("--batch", type=flags.count(1), default=256, metavar="N",
                   help="training images in the batch (default 256)")
    p.add_argument("--method", choices=("lanczos", "power"), default="lanczos", help="eigensolver (default lanczos)")
    p.add_argument("--out", type=flags.out_dir, metavar="DIR", help="output folder (default: the --run folder)")
    flags.add_device(p)
    flags.add_seed(p, "seed of the batch, the linear problem and the eigensolver")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    t0 = time.time()
    if args.linear:
        if args.run or args.model or args.checkpoints:
            raise ConfigError("--linear builds its own networks: drop --run, --model and --checkpoints")
        if not args.out:
            raise ConfigError("--linear needs --out DIR, the folder for analysis/ and figures/")
        ks = flags.parse_ints(args.shortcut_depths, "--shortcut-depths")
        depths = flags.parse_ints(args.depths, "--depths")
        rows, written = hessian_linear(args.out, shortcut_depths=ks, depths=depths, inits=flags.parse_list(args.init),
                                       width=args.width, seed=args.seed, isotropic=args.problem == "isotropic")
        written += draw_lens_tables(args.out, ["hessian_linear"], title=f"Hessian at initialisation, deep linear "
                                    f"residual net, width {args.width}, {args.problem} residual moment")
        print(f"condition number of the loss Hessian at initialisation (max |eigenvalue| / min nonzero |eigenvalue|),"
              f" deep linear residual network of width {args.width}, {args.problem} residual moment; k = layers per "
              "shortcut; H = 0: zero Hessian")
        print(linear_table_text(rows))
    else:
        written = []
        for target, out in flags.lens_targets(args, other="--linear (Li et al.'s deep linear networks), "):
            rows, files = hessian_lens(target, out, k=args.k, n=args.batch, method=args.method, seed=args.seed,
                                       epochs=flags.parse_epochs(args.epochs), at_steps=flags.parse_steps(args.steps),
                                       device=args.device, progress=not args.quiet)
            written += files + draw_lens_tables(out, ["hessian"], title=target.title)
            print(f"{target.title}: top-{args.k} Hessian eigenvalues on {args.batch} training images")
            print(f"  {'step':>7} {'epoch':>6} {'loss':>9} {'lambda_max':>11} {'cond_estimate':>13}")
            for r in rows:
                print(f"  {r['step']:>7} {r['epoch']:>6.3g} {r['loss']:>9.4g} {r['lambda_max']:>11.4g} "
                      f"{r['cond_estimate']:>13.4g}")
    return flags.print_written(t0, written, [], "")
