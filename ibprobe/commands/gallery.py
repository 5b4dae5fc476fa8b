"""`ibprobe gallery DIR`: held-out images beside samples from q(x | h(x)), per layer and checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

from ibprobe.utils import parse_epochs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gallery",
        help="draw held-out images beside samples from their layers' conditional decoders",
        description="For N held-out images, draw the original and K samples from q(x | h(x)) for every fitted "
        "(layer, checkpoint) decoder of DIR, plus the unconditional q(x). Writes DIR/figures/gallery.png, "
        ".pdf and gallery.npz (the drawn pixels).",
    )
    p.add_argument("dir", metavar="DIR", help="run folder written by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("--images", type=int, default=4, metavar="N", help="held-out images, chosen by --seed (default 4)")
    p.add_argument("--samples", type=int, default=4, metavar="K", help="samples per image and decoder (default 4)")
    p.add_argument("--layers", default=None, metavar="A,B", help="comma-separated layers (default: all fitted)")
    p.add_argument("--epochs", default=None, metavar="0,10", help="comma-separated checkpoint epochs (default: all)")
    p.add_argument("--seed", type=int, default=0, help="chooses the images and seeds the samples (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=handler)
    return p


def handler(args) -> int:
    from ibprobe.gallery import make_gallery

    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    png = make_gallery(Path(args.dir), n_images=args.images, n_samples=args.samples, layers=layers,
                       epochs=parse_epochs(args.epochs), seed=args.seed, device=args.device,
                       progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {png}, {png.with_suffix('.pdf')} and {png.with_suffix('.npz')}")
    return 0
