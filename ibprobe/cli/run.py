"""`ibprobe run [--preset NAME] [--out DIR]`: train, measure every layer at every checkpoint, draw the figures."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ibprobe.cli import flags
from ibprobe.pipeline import regime_dirs, run_preset
from ibprobe.presets import DEFAULT_PRESET, PRESETS, get_preset
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.sources import parse_layers
from ibprobe.rundir.tables import MI


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train a ResNet and draw its information plane (default: embedded digits, minutes on a CPU)",
        description="Train (or reuse) a network, fit one conditional PixelCNN++ per (checkpoint, layer) plus the "
        "unconditional reference, write DIR/analysis/mi.csv and draw the information plane and a gallery. "
        "Rerunning the same command resumes: finished jobs are kept.",
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"what to run (default {DEFAULT_PRESET}); " +
                   "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--out", default=None, type=flags.out_dir, metavar="DIR", help="run folder (default runs/<preset>)")
    p.add_argument("--regime", action="append", choices=["classify", "autoencode"],
                   help="only this regime of a two-regime preset (repeatable)")
    p.add_argument("--data-root", default=None, type=flags.folder, metavar="DIR",
                   help="folder holding the preset's data set")
    p.add_argument("--download", action="store_true", help="let torchvision download the data set into --data-root")
    flags.add_layers(p)
    flags.add_train(p)
    flags.add_analysis(p, jobs_default=0)
    flags.add_estimators(p)
    flags.add_backend(p)
    flags.add_device(p)
    flags.add_seed(p)
    flags.add_figures(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    t0 = time.time()
    preset = get_preset(args.preset)
    out = Path(args.out or Path("runs") / preset.name)
    request = flags.analysis_config(args, parse_layers(args.layers) if args.layers else None)
    figures = not args.no_figures and args.backend != "none"
    results = run_preset(preset, out, request, regimes=args.regime, figures=figures, backend=flags.backend(args),
                         kid=flags.kid_config(args, preset.kid) or False, train_overrides=flags.parse_kv(args.train, "--train"),
                         data_root=args.data_root, download=args.download)
    written = []
    for regime, run_dir in regime_dirs(out, preset, args.regime).items():
        written.append(RunDir(run_dir).table(MI.name))
        if figures:
            written.append(RunDir(run_dir).figures)
        flags.print_summary(regime, results[regime], file=sys.stdout, run_dir=run_dir)
    return flags.print_written(t0, written, [r for rows in results.values() for r in rows], "mi.csv", args.backend)
