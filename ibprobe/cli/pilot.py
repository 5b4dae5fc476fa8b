"""`ibprobe pilot [--smoke] --out DIR`: the paper decoder on known-answer 3x32x32 images, fitted to convergence, and
the speeds for `ibprobe plan --bench DIR/bench.json` (ibprobe.tools.pilot; bench/paper_pilot.sh runs both)."""
from __future__ import annotations

import sys

from ibprobe.cli import flags
from ibprobe.tools.pilot import format_report, run_pilot


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pilot", help="fit the paper decoder on known-answer 3x32x32 images and time it, for a plan of the full run",
        description="Fit the cinic10-paper decoder (with its fit settings) to convergence on synthetic 3x32x32 images "
        "whose I(X;H) is known exactly, print truth | estimate | 95%% CI | ok and each decoder's epochs and time, "
        "and write DIR/bench.json with the speeds of the preset's decoders on this machine, for `ibprobe plan "
        "--preset cinic10-paper --bench DIR/bench.json`. Exits 1 if a case misses its tolerance or a decoder did "
        "not converge. --smoke runs the same path on the CPU in seconds (tiny decoder, digits-quick's speeds).")
    p.add_argument("--out", required=True, type=flags.out_dir, metavar="DIR",
                   help="folder for the fits (resumable) and bench.json")
    p.add_argument("--smoke", action="store_true", help="a seconds-long CPU run of the same path; checks that it runs")
    flags.add_device(p)
    flags.add_seed(p, "seed for the images, split and decoders")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    report = run_pilot(args.out, smoke=args.smoke, device=args.device, seed=args.seed or 0,
                       progress=not args.quiet, log=log)
    print(format_report(report))
    return 0 if report.ok else 1
