"""The report stage -> DIR/figures/: plots (`plots`, `estimators`), sample galleries (`gallery`) and the KID of
decoder samples (`kid_run`, which samples like the gallery and writes analysis/kid.csv). The only part of ibprobe
that imports matplotlib; figures are built from data and returned, then saved as PNG + PDF + the CSV they show."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ibprobe.errors import UserError
from ibprobe.kid import KidConfig
from ibprobe.report.gallery import find_decoders, make_gallery
from ibprobe.report.kid_run import measure_kid
from ibprobe.report.plots import plot_run

__all__ = ["draw_figures", "plot_run", "make_gallery", "measure_kid"]


def draw_figures(run_dir: str | os.PathLike, *, progress: bool = True, gallery: bool = True, gallery_layers=None,
                 gallery_epochs=None, device: str = "auto", kid: KidConfig | None = KidConfig()) -> list[Path]:
    """KID (analysis/kid.csv; `kid` None skips it, a KID the folder cannot give is said and skipped), the plots and
    the gallery of a finished run folder; returns the files written.

    `gallery_layers` / `gallery_epochs` (a preset's choice) apply where the folder has decoders for them. When the
    run's checkpoints or layers were overridden, missing preset layers are dropped (all layers if none is left) and
    missing preset epochs give way to the first and last epochs the folder has.
    """
    written: list[Path] = []
    try:
        if kid is not None and measure_kid(run_dir, kid, device=device, progress=progress):
            written.append(Path(run_dir) / "analysis" / "kid.csv")
    except UserError as e:  # e.g. a network whose penultimate layer cannot be told: the figures still matter
        print(f"KID skipped: {e}", file=sys.stderr)
    written += plot_run(run_dir)
    if gallery:
        have = [k for k in find_decoders(run_dir) if k[0] is not None]
        layers = [l for l in gallery_layers or () if l in {l for l, _ in have}] or None
        epochs = list(gallery_epochs) if gallery_epochs is not None else None
        have_epochs = sorted({e for _, e in have})
        if epochs is not None and have_epochs and not set(epochs) <= set(have_epochs):
            epochs = sorted({have_epochs[0], have_epochs[-1]})
        written.append(make_gallery(run_dir, layers=layers, epochs=epochs, device=device, progress=progress))
    return written
