"""The `ibprobe` command: a thin layer over the Python API.

Each subcommand is a module `ibprobe/cli/<name>.py` with `add_parser(subparsers)` (which registers the command
and sets `handler`) and `handler(args) -> int`; shared flags come from `ibprobe.cli.flags`. Command modules parse
arguments and print; the work is the library's. `main(argv=None)` returns an exit code, so tests call it
directly. A `UserError` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ibprobe.errors import UserError

COMMANDS = {"run": "run", "train": "train", "layers": "layers", "capture": "capture", "analyze": "analyze",
            "run-job": "run_job", "plan": "plan", "plot": "plot", "gallery": "gallery", "validate": "validate",
            "bench": "bench", "hessian": "hessian", "complexity": "complexity"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibprobe",
        description="Information-bottleneck analysis of image classifiers with conditional PixelCNN++ decoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"ibprobe.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        if args.command is None:
            args = parser.parse_args(["run"] + list(argv or []))  # `ibprobe` alone runs the embedded default
        else:
            parser.print_help()
            return 2
    try:
        rc = args.handler(args)
    except UserError as e:
        print(f"ibprobe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ibprobe {args.command}: interrupted; finished results are kept, rerun to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
