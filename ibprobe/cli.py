"""The `ibprobe` command: a thin layer over the Python API.

Each subcommand lives in `ibprobe/commands/<name>.py` and defines `add_parser(subparsers)` (which
registers the subcommand and sets `func`) and a handler `func(args) -> int`. `main(argv=None)` returns
an exit code, so tests call it directly. A `UserError` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ibprobe.errors import UserError

COMMANDS = ["run", "train", "layers", "capture", "analyze", "plot", "gallery", "validate", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibprobe",
        description="Information-bottleneck analysis of image classifiers with conditional PixelCNN++ decoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"ibprobe.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ibprobe.commands.{name}":
                continue  # not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        if args.command is None:
            # `ibprobe` alone runs the embedded default.
            args = parser.parse_args(["run"] + list(argv or []))
        else:
            parser.print_help()
            return 2
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"ibprobe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ibprobe {args.command}: interrupted; finished results are kept, rerun to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
