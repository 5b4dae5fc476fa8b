"""`ibprobe run [--preset NAME] [--out DIR]`: train, measure every layer at every checkpoint, draw the figures."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ibprobe.presets import DEFAULT_PRESET, PRESETS
from ibprobe.utils import parse_kv


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train a ResNet and draw its information plane (default: embedded digits, minutes on a CPU)",
        description="Train (or reuse) a network, fit one conditional PixelCNN++ per (checkpoint, layer) plus one "
        "unconditional reference, write DIR/analysis/mi.csv and draw the information plane and a gallery. "
        "Rerunning the same command resumes: finished jobs are kept.",
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"what to run (default {DEFAULT_PRESET}); " +
                   "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--regime", action="append", choices=["classify", "autoencode"],
                   help="only this regime of a two-regime preset (repeatable)")
    p.add_argument("--data-root", default=None, help="folder holding the data set (cifar10, cinic10, ...)")
    p.add_argument("--download", action="store_true", help="let torchvision download the data set into --data-root")
    p.add_argument("--layers", default=None, help="comma-separated layers instead of the preset's")
    p.add_argument("--decoder", action="extend", nargs="+", metavar="K=V", help="override DecoderConfig fields")
    p.add_argument("--fit", action="extend", nargs="+", metavar="K=V", help="override FitConfig fields")
    p.add_argument("--train", action="extend", nargs="+", metavar="K=V", help="override TrainConfig fields")
    p.add_argument("--jobs", type=int, default=0,
                   help="decoder jobs at once on this machine (default 0: one per CPU core on CPU, 1 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="skip the plots and the gallery")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args) -> int:
    from ibprobe.run import regime_dirs, run_preset
    from ibprobe.presets import get_preset

    t0 = time.time()
    preset = get_preset(args.preset)
    out = Path(args.out or Path("runs") / preset.name)
    layers = tuple(x for x in args.layers.split(",") if x) if args.layers else None
    results = run_preset(
        preset, out, regimes=args.regime, data_root=args.data_root, download=args.download, device=args.device,
        jobs=args.jobs, seed=args.seed, layers=layers, decoder=parse_kv(args.decoder, "--decoder"),
        fit=parse_kv(args.fit, "--fit"), train_overrides=parse_kv(args.train, "--train"), progress=not args.quiet,
    )
    written = []
    for regime, run_dir in regime_dirs(out, preset, args.regime).items():
        written.append(run_dir / "analysis" / "mi.csv")
        if not args.no_figures:
            written += draw_figures(run_dir, quiet=args.quiet, gallery_layers=preset.gallery_layers,
                                    gallery_epochs=preset.gallery_epochs, device=args.device)
        print_summary(regime, results[regime], file=sys.stdout)
    print(f"\nfinished in {time.time() - t0:.0f} s; wrote:")
    for w in written:
        print(f"  {w}")
    failed = [r for rows in results.values() for r in rows if r.get("status") != "ok"]
    if failed:
        print(f"{len(failed)} job(s) failed; see the status/error columns of mi.csv", file=sys.stderr)
        return 1
    return 0


def draw_figures(run_dir: Path, *, quiet: bool = False, gallery: bool = True, gallery_layers=None,
                 gallery_epochs=None, device: str = "auto") -> list[Path]:
    """Plots (and the gallery) for a finished run folder; returns the files written."""
    from ibprobe.plots import plot_run

    written = list(plot_run(run_dir))
    if gallery:
        from ibprobe.gallery import make_gallery

        g = make_gallery(run_dir, layers=list(gallery_layers) if gallery_layers else None,
                         epochs=list(gallery_epochs) if gallery_epochs else None, device=device,
                         progress=not quiet)
        written += g if isinstance(g, list) else [g]
    return written


def print_summary(regime: str, rows: list[dict], file=sys.stdout) -> None:
    """A compact table of the mi.csv rows."""
    print(f"\n[{regime}] I(X;H) and I(Y;H), bits per image (95% CI):", file=file)
    print(f"  {'layer':<18} {'epoch':>5} {'I(X;H)':>8} {'95% CI':>19} {'I(Y;H)':>7}", file=file)
    for r in rows:
        if r.get("status") != "ok":
            print(f"  {str(r.get('layer')):<18} {str(r.get('epoch')):>5}   failed: {r.get('error')}", file=file)
            continue
        iy = "" if r.get("i_yh_bits") is None else f"{r['i_yh_bits']:.2f}"
        ci = f"[{r['i_xh_ci_low']:.1f}, {r['i_xh_ci_high']:.1f}]"
        print(f"  {r['layer']:<18} {r['epoch']:>5} {r['i_xh_bits']:>8.1f} {ci:>19} {iy:>7}", file=file)
