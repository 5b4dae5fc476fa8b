"""Sample galleries: what an image looks like when only a layer's activation h(x) is known.

The paper's figure 1 (Darlow & Storkey, "What Information Does a ResNet Compress?"): for a few held-out images,
the original followed by samples from the fitted conditional decoder q(x | h(x)), one row per (layer, checkpoint),
plus the unconditional q(x) as a reference row. Samples that still look like the original mean the layer kept
that information; samples that vary freely show what it discarded.

The samples come from ibprobe.sample (a GalleryData); `gallery_figure` draws them (no I/O) and `save_gallery`
writes the figure and the drawn pixels.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ibprobe.errors import DataError
from ibprobe.rundir.files import atomic_write_bytes

if TYPE_CHECKING:
    from ibprobe.sample import GalleryData


def _to_display(img: np.ndarray, levels: int) -> tuple[np.ndarray, str | None]:
    """(C, H, W) integers in [0, L-1] -> float image in [0, 1] for imshow, and the colormap (gray for C=1)."""
    x = np.clip(img.astype(np.float32) / max(levels - 1, 1), 0.0, 1.0)
    if x.shape[0] == 1:
        return x[0], "gray"
    if x.shape[0] == 3:
        return np.transpose(x, (1, 2, 0)), None
    return x.mean(axis=0), "gray"


def gallery_figure(data: GalleryData, *, title: str | None = None):
    """Figure: rows are (layer, checkpoint) decoders; per image, the original, then K samples from q(x | h(x))."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not data.rows:
        raise DataError("the gallery has no rows to draw")
    n, k, r = len(data.images), data.n_samples, len(data.rows)
    gap = 0.35  # spacer between image groups, in cells
    cell = min(0.62, 15.0 / (n * (k + 1) + (n - 1) * gap))  # inches per image
    label_w = max(1.2, 0.35 + 0.068 * max(len(t) for row in data.rows for t in row.label.split("\n")))  # 8 pt
    top_h = 0.55 + (0.3 if title else 0.0)
    width = label_w + cell * (n * (k + 1) + (n - 1) * gap) + 0.15
    height = top_h + cell * r * 1.08 + 0.15
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    ratios = []
    for i in range(n):
        ratios += [1.0] * (k + 1) + ([gap] if i < n - 1 else [])
    gs = fig.add_gridspec(r, len(ratios), width_ratios=ratios, left=label_w / width, right=1 - 0.15 / width,
                          top=1 - top_h / height, bottom=0.15 / height, wspace=0.06, hspace=0.08)
    for ri, row in enumerate(data.rows):
        for i in range(n):
            c0 = i * (k + 2)
            for j in range(k + 1):
                ax = fig.add_subplot(gs[ri, c0 + j])
                img = data.images[i] if j == 0 else row.samples[i, j - 1]
                shown, cmap = _to_display(img, data.levels)
                ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_gid("original" if j == 0 else "sample")
                for s in ax.spines.values():
                    s.set_edgecolor("tab:red" if j == 0 else "0.6")
                    s.set_linewidth(1.2 if j == 0 else 0.5)
                if ri == 0:
                    ax.set_title("original" if j == 0 else f"sample {j}", fontsize=7, pad=2)
                if i == 0 and j == 0:
                    ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
    for i in range(n):
        first, last = gs[0, i * (k + 2)].get_position(fig), gs[0, i * (k + 2) + k].get_position(fig)
        name = f"test image {int(data.image_index[i])}"
        if data.labels is not None and data.classes:
            name += f" ({data.classes[int(data.labels[i])]})"
        fig.text((first.x0 + last.x1) / 2, first.y1 + 0.2 / height, name, ha="center", va="bottom", fontsize=8,
                 gid="image_title")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig


def save_gallery(data: GalleryData, out_dir: str | os.PathLike, stem: str = "gallery",
                 title: str = "samples from q(x | h(x)) for held-out images") -> Path:
    """Draw `data` and write out_dir/<stem>.png (returned), <stem>.pdf and <stem>.npz, atomically."""
    fig = gallery_figure(data, title=title)
    out_dir = Path(out_dir)
    written = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
        written.append(atomic_write_bytes(out_dir / f"{stem}.{ext}", buf.getvalue()))
    atomic_write_bytes(out_dir / f"{stem}.npz", _npz(data))
    return written[0]


def _npz(data: GalleryData) -> bytes:
    """The drawn pixels, so the figure can be redrawn without sampling: images, index, per-row labels, layers,
    checkpoint steps and epochs (-1 for q(x)), and samples."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=data.images, image_index=data.image_index, levels=np.int64(data.levels),
        row_labels=np.array([row.label for row in data.rows]),
        row_layers=np.array(["" if row.layer is None else row.layer for row in data.rows]),
        row_steps=np.array([-1 if row.step is None else row.step for row in data.rows], dtype=np.int64),
        row_epochs=np.array([-1.0 if row.step is None else float(row.step if row.epoch is None else row.epoch)
                             for row in data.rows], dtype=np.float64),
        samples=np.stack([row.samples for row in data.rows]),  # (R, N, K, C, H, W) uint8
    )
    return buf.getvalue()
