"""`ibprobe plot DIR`: draw the information plane, MI against epoch, training curves and the estimator comparisons of
a run folder."""
from __future__ import annotations

from pathlib import Path

from ibprobe.cli import flags
from ibprobe.report import plot_run
from ibprobe.report.estimators import ESTIMATORS, LAYOUTS, check_estimators


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw the information plane, MI against epoch and training curves of a run",
        description="Draw DIR/figures/{info_plane,mi_vs_epoch,training_curves}.{png,pdf} from DIR/analysis/mi.csv "
        "and DIR/metrics.jsonl, and estimators, binning_sensitivity and kid from DIR/analysis/{baselines,"
        "binning_sensitivity,kid}.csv, each beside the CSV it was drawn from.")
    p.add_argument("dir", type=flags.folder, metavar="DIR",
                   help="run folder written by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("--estimators", metavar="A,B", help=f"estimators to draw on the planes of figures/estimators: "
                   f"{', '.join(ESTIMATORS)} (default: every one the folder has)")
    p.add_argument("--layout", default="panels", choices=LAYOUTS,
                   help="panels: one plane per estimator (default; their scales differ); overlay: one plane")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    estimators = check_estimators(flags.parse_list(args.estimators), args.layout)  # before any drawing
    written = plot_run(Path(args.dir), estimators=estimators, layout=args.layout)
    if not args.quiet:
        print(f"wrote {len(written)} files to {Path(args.dir) / 'figures'}:")
        for path in written:
            print(f"  {path}")
    return 0
