"""`ibprobe validate`: recover known mutual informations on synthetic images (see ibprobe/validate.py)."""
from __future__ import annotations

import sys

from ibprobe.cli import flags
from ibprobe.tools.validate import format_table, run_validation


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate", help="check the estimator on synthetic images whose I(X;H) is known exactly",
        description="Fit decoders on synthetic template-plus-noise images and compare estimated I(X;H) with the "
        "exact answer. Prints case | truth | estimate | 95% CI | ok and exits 1 if a case misses its tolerance "
        "max(0.5 bits, 5% of truth) or the estimates do not order as the truth.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="small suite (about 2.5 minutes on one CPU core)")
    which.add_argument("--hard", action="store_true",
                       help="only the families that are hard for a small convolutional decoder (expected to miss; "
                       "see ibprobe/validate.py)")
    p.add_argument("--reference", default="best", choices=["best", "plain"],
                   help="the reference for H(X): the best valid density on validation images (default) or plain q(x)")
    flags.add_device(p)
    flags.add_seed(p, "seed for the data, split and decoders")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    report = run_validation(quick=args.quick, hard=args.hard, device=args.device, seed=args.seed,
                            progress=not args.quiet, log=log, reference=args.reference)
    print(format_table(report))
    return 0 if report.ok else 1
