"""`ibprobe plot DIR`: draw the information plane, MI against epoch and training curves of a run folder."""
from __future__ import annotations

from pathlib import Path

from ibprobe.cli import flags
from ibprobe.report import plot_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw the information plane, MI against epoch and training curves of a run",
        description="Draw DIR/figures/{info_plane,mi_vs_epoch,training_curves}.{png,pdf} from DIR/analysis/mi.csv "
        "and DIR/metrics.jsonl, each beside the CSV it was drawn from.")
    p.add_argument("dir", metavar="DIR", help="run folder written by `ibprobe run` or `ibprobe analyze`")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    written = plot_run(Path(args.dir))
    if not args.quiet:
        print(f"wrote {len(written)} files to {Path(args.dir) / 'figures'}:")
        for path in written:
            print(f"  {path}")
    return 0
