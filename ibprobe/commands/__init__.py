"""One module per `ibprobe` subcommand; see ibprobe/cli.py."""
