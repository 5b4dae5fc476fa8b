"""`ibprobe analyze`: measure I(X;H) and I(Y;H) for your own model and checkpoints, layer by layer. Everything is
checked before any long work (ibprobe.rundir.sources.prepare_analysis); outputs are those of `ibprobe run`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ibprobe.cli import flags
from ibprobe.pipeline import draw_figures, run_analysis
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.sources import NORMALIZE_PRESETS, prepare_analysis
from ibprobe.rundir.tables import MI

EXAMPLE = """examples:
  ibprobe analyze --model torchvision:resnet18 --checkpoints 'ckpts/epoch_*.pt' \\
      --layers layer1,layer2,layer3,layer4 --dataset cifar10 --data-root data --normalize cifar10 --out runs/r18
  ibprobe analyze --model mynets:Net --model-arg width=32 --checkpoints 'run1/*.ckpt' --layers conv2,fc1 \\
      --images x.npy --labels y.npy --levels 256 --normalize 0.5,0.25 --out runs/mine

checkpoints: ours; a raw state_dict; {'model': sd}, {'state_dict': sd} (Lightning), {'model_state_dict': sd};
'module.'/'model.' prefixes are stripped. Files are read with torch.load(weights_only=True) only: a file holding
pickled Python objects is refused, never executed.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze", help="measure I(X;H) and I(Y;H) for your own model and checkpoints",
        description="Bring your own model and checkpoints: fit one conditional PixelCNN++ per (checkpoint, layer) "
        "plus the unconditional reference, write DIR/analysis/mi.csv and draw the information plane. The model "
        "sees images as float in [0, 1] at their native size (then --normalize, if given). Rerunning the same "
        "command resumes: finished jobs are kept.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_model(p, required=True)
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="GLOB",
                   help="checkpoint files or quoted globs; keyed by the file's 'step' (ibprobe's), else its epoch: "
                   "its 'epoch' key, else the last number in its name, else the file order")
    flags.add_layers(p, required=True)
    flags.add_data_source(p)
    p.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="per-channel normalisation after scaling to [0, 1]: 'MEAN,STD' for all channels, "
                   "'M1,..,MC,S1,..,SC' per channel, or a preset: " + ", ".join(NORMALIZE_PRESETS))
    p.add_argument("--out", required=True, type=flags.out_dir, metavar="DIR",
                   help="analysis folder (created; rerun to resume)")
    flags.add_analysis(p, jobs_default=1)
    flags.add_estimators(p)
    p.add_argument("--chain", metavar="A,B,C", help="layers each of which is a function of the one before, for the "
                   "data-processing self-check (our models give theirs)")
    flags.add_backend(p)
    flags.add_device(p)
    flags.add_seed(p)
    flags.add_figures(p)
    p.add_argument("--no-gallery", action="store_true", help="draw the plots but skip the gallery")
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    t0, kid = time.time(), flags.kid_config(args)
    spec = flags.data_spec(args)
    prep = prepare_analysis(model=args.model, checkpoints=args.checkpoints, dataset_spec=spec,
                            cfg=flags.analysis_config(args, args.layers.split(",")),
                            model_args=flags.model_args(args, args.model), normalize=args.normalize,
                            download=args.download)
    out = Path(args.out)
    if not args.quiet:
        print(f"measuring {len(prep.cfg.layers)} layer(s) x {len(prep.source.checkpoints)} checkpoint(s) "
              f"-> {out}/analysis/mi.csv", file=sys.stderr)
    rows = run_analysis(out, prep.source, prep.dataset_spec, prep.cfg, prep.settings, flags.backend(args))
    run = RunDir(out)
    written = [run.source, run.table(MI.name)]
    if not args.no_figures and args.backend != "none":
        written += draw_figures(out, progress=not args.quiet, gallery=not args.no_gallery, device=args.device, kid=kid)
    flags.print_summary(args.model, rows, file=sys.stdout, run_dir=out)
    return flags.print_written(t0, written, rows, str(run.table(MI.name)), args.backend)
