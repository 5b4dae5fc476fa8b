"""`ibprobe plot DIR`: draw the information plane, MI against epoch and training curves of a run folder."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help="draw the information plane, MI against epoch and training curves of a run",
        description="Draw DIR/figures/{info_plane,mi_vs_epoch,training_curves}.{png,pdf} from DIR/analysis/mi.csv "
        "and DIR/metrics.jsonl, each beside the CSV it was drawn from.",
    )
    p.add_argument("dir", metavar="DIR", help="run folder written by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=handler)
    return p


def handler(args) -> int:
    from ibprobe.plots import plot_run

    written = plot_run(Path(args.dir))
    if not args.quiet:
        print(f"wrote {len(written)} files to {Path(args.dir) / 'figures'}:")
        for path in written:
            print(f"  {path}")
    return 0
