"""The report stage -> DIR/figures/: it draws, and only draws. Every figure is built from data (the run folder's
tables, or samples from ibprobe.sample) and returned as a `matplotlib.figure.Figure`, then saved as PNG + PDF + the
table it was drawn from (`figure.save_figure`). The only part of ibprobe that imports matplotlib; nothing below the
pipeline and the command line imports it.

    figure      what every figure shares: the pyplot-free Figure, colours, markers, save_figure
    plots       information plane, I(X;H) against epoch, training curves; `plot_run` draws a run folder's tables
    estimators  the decoder's plane beside the binning and KDE baselines', bin-count sensitivity, KID
    gallery     samples from q(x | h(x)) beside their originals
    lenses      the Hessian and complexity lenses
"""
from __future__ import annotations

from ibprobe.report.gallery import gallery_figure, save_gallery
from ibprobe.report.plots import info_plane, mi_vs_epoch, plot_run, training_curves

__all__ = ["plot_run", "info_plane", "mi_vs_epoch", "training_curves", "gallery_figure", "save_gallery"]
