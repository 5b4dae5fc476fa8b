"""The `ibprobe` command: a thin layer over the Python API.

Each subcommand is a module `ibprobe/cli/<name>.py` with `add_parser(subparsers)` (which registers the command
and sets `handler`) and `handler(args) -> int`; shared flags come from `ibprobe.cli.flags`. Command modules parse
arguments and print; the work is the library's. `main(argv=None)` returns an exit code, so tests call it
directly. Every bad input ends the same way, here and only here: a `UserError` (or an argparse error, or an
`OSError` of the file system) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ibprobe.errors import StorageError, UserError, one_line

COMMANDS = {"run": "run", "train": "train", "layers": "layers", "capture": "capture", "analyze": "analyze",
            "run-job": "run_job", "plan": "plan", "plot": "plot", "gallery": "gallery", "validate": "validate",
            "bench": "bench", "pilot": "pilot", "hessian": "hessian", "complexity": "complexity"}


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (not the usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ibprobe",
        description="Information-bottleneck analysis of image classifiers with conditional PixelCNN++ decoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"ibprobe.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            if args.command is not None:
                parser.print_help()
                return 2
            args = parser.parse_args(["run"] + list(argv or []))  # `ibprobe` alone runs the embedded default
    except SystemExit as e:  # --help (0) or a flag argparse refused (2, said in one line)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        rc = args.handler(args)
    except UserError as e:
        print(f"ibprobe {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system's errors (full disk, read-only folder): not bugs, one line too
        print(f"ibprobe {args.command}: error: {one_line(StorageError.from_os(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ibprobe {args.command}: interrupted; finished results are kept, rerun to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
