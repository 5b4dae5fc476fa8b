"""`ibprobe gallery DIR`: held-out images beside samples from q(x | h(x)), per layer and checkpoint."""
from __future__ import annotations

from pathlib import Path

from ibprobe.cli import flags
from ibprobe.pipeline import make_gallery


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gallery", help="draw held-out images beside samples from their layers' conditional decoders",
        description="For N held-out images, draw the original and K samples from q(x | h(x)) for every fitted "
        "(layer, checkpoint) decoder of DIR, plus the unconditional q(x). Writes DIR/figures/gallery.png, "
        ".pdf and gallery.npz (the drawn pixels).")
    p.add_argument("dir", type=flags.folder, metavar="DIR",
                   help="run folder written by `ibprobe run` or `ibprobe analyze`")
    p.add_argument("--n-images", type=flags.count(1), default=4, metavar="N",
                   help="held-out images, chosen by --seed (default 4)")
    p.add_argument("--samples", type=flags.count(1), default=4, metavar="K",
                   help="samples per image and decoder (default 4)")
    flags.add_layers(p)
    flags.add_checkpoint_choice(p)
    flags.add_seed(p, "chooses the images and seeds the samples")
    flags.add_device(p)
    flags.add_quiet(p)
    p.set_defaults(handler=handler)


def handler(args) -> int:
    png = make_gallery(Path(args.dir), n_images=args.n_images, n_samples=args.samples,
                       layers=flags.parse_list(args.layers), steps=flags.parse_steps(args.steps),
                       epochs=flags.parse_epochs(args.epochs), seed=args.seed,
                       device=args.device, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {png}, {png.with_suffix('.pdf')} and {png.with_suffix('.npz')}")
    return 0
