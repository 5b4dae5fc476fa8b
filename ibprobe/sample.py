"""Samples from a run folder's fitted decoders: for a few held-out images x, draws of q(x | h(x)) per (layer,
checkpoint) and of q(x), with the exact cached sampler (decoders.sampling). The gallery draws them
(ibprobe.report.gallery) and KID scores them (ibprobe.measure.kid).

Images are chosen from the test split by the seed; codes h(x) come from the network at that checkpoint (the decoder
standardises raw codes itself); each row's generator is seeded by (seed, layer, epoch) alone, so a row's samples do
not depend on which other rows are drawn.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from decoders import DecoderError, load_decoder
from decoders.progress import progress as progress_report
from ibprobe.capture import capture
from ibprobe.config import resolve_device
from ibprobe.errors import DataError, UserError
from ibprobe.jobs import Role, job_state, read_job_index
from ibprobe.rundir import paths
from ibprobe.rundir.pinning import check_checkpoints, refit_hint
from ibprobe.rundir.sources import open_source
from ibprobe.rundir.tables import KID, read_table


@dataclass
class GalleryRow:
    """Samples of one decoder for every chosen image. `layer is None` is the unconditional q(x)."""

    layer: str | None
    epoch: int | None
    samples: np.ndarray  # uint8 [N, K, C, H, W]
    note: str = ""  # a second caption line, e.g. the row's KID

    @property
    def label(self) -> str:
        name = "q(x), unconditional" if self.layer is None else f"{self.layer} @ epoch {self.epoch}"
        return f"{name}\n{self.note}" if self.note else name


@dataclass
class GalleryData:
    """Chosen held-out images and decoder samples for them; pixel values are integers in [0, levels-1]."""

    images: np.ndarray  # uint8 [N, C, H, W]
    image_index: np.ndarray  # int64 [N], index into the data set
    levels: int
    rows: list[GalleryRow] = field(default_factory=list)
    labels: np.ndarray | None = None  # int64 [N]
    classes: list[str] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.rows[0].samples.shape[1]) if self.rows else 0


def find_decoders(run_dir: str | os.PathLike) -> dict[tuple[str | None, int | None], Path]:
    """{(layer, epoch): decoder.pt} of every finished decoder job in the folder's job index ((None, None) = q(x)),
    in the index's order (the network's layers, checkpoint by checkpoint). Failed and pending jobs are left out."""
    found: dict[tuple[str | None, int | None], Path] = {}
    if not paths.RunDir(run_dir).decoders.is_dir():
        return found
    for spec in read_job_index(run_dir):
        job = spec.job_dir(run_dir)
        if spec.role in (Role.REFERENCE, Role.CONDITIONAL) and not spec.repeat and job_state(job) == "done" \
                and (job / paths.DECODER).is_file():
            found[(spec.layer, spec.epoch)] = job / paths.DECODER
    return found


def _select(found: dict, layers: list[str] | None, epochs: list[int] | None) -> list[tuple[str, int]]:
    have_layers = sorted({l for l, _ in found if l is not None})
    have_epochs = sorted({e for l, e in found if l is not None})
    if layers is not None:
        by_sanitised = {paths.sanitize_name(l): l for l in have_layers}
        unknown = [l for l in layers if l not in have_layers and l not in by_sanitised]
        if unknown:
            raise UserError(f"no fitted decoder for layer(s) {', '.join(unknown)}; layers with decoders: "
                            f"{', '.join(have_layers) or 'none'}")
        layers = [l if l in have_layers else by_sanitised[l] for l in layers]
    if epochs is not None:
        unknown_e = [e for e in epochs if e not in have_epochs]
        if unknown_e:
            raise UserError(f"no fitted decoder at epoch(s) {', '.join(map(str, unknown_e))}; epochs with decoders: "
                            f"{', '.join(map(str, have_epochs)) or 'none'}")
    pairs = [(l, e) for l, e in found if l is not None and (layers is None or l in layers)
             and (epochs is None or e in epochs)]
    if not pairs and (layers is not None or epochs is not None):
        raise UserError(f"no fitted decoder for that combination of layers and epochs; have "
                        f"{', '.join(f'{l}@{e}' for l, e in sorted(k for k in found if k[0] is not None))}")
    order = layers if layers is not None else list(dict.fromkeys(l for l, _ in found if l is not None))
    return sorted(pairs, key=lambda p: (order.index(p[0]), p[1]))  # the user's (or the network's) layer order


def choose_images(test_idx: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    """`n_images` distinct held-out image indices (int64, in data-set order), the same for the same seed."""
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if n_images > len(test_idx):
        raise UserError(f"--images {n_images} is more than the {len(test_idx)} held-out images")
    pick = np.sort(np.random.default_rng(seed).choice(len(test_idx), size=n_images, replace=False))
    return np.sort(test_idx[pick])


def _row_seed(seed: int, layer: str | None, epoch: int | None) -> int:
    """A seed per row that does not depend on which other rows are drawn."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{layer}@{epoch}".encode())) % (2**63)


def sample_gallery(run_dir: str | os.PathLike, *, n_images: int = 4, n_samples: int = 4,
                   layers: list[str] | None = None, epochs: list[int] | None = None, seed: int = 0,
                   device: str = "auto", unconditional: bool = True, progress: bool = True) -> GalleryData:
    """Draw `n_samples` samples from q(x | h(x)) for `n_images` held-out images, per (layer, epoch) decoder.

    Images are chosen from the test split by `seed`; codes h(x) come from the network at that checkpoint
    (the decoder standardises raw codes itself). Unknown layers or epochs raise a UserError naming what exists.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; run `ibprobe run --out {run_dir}` first")
    if n_images < 1 or n_samples < 1:
        raise UserError(f"--images and --samples must be at least 1 (got {n_images}, {n_samples})")
    found = find_decoders(run_dir)
    subruns = sorted(p.parent.name for p in run_dir.glob("*/decoders"))
    if not found and subruns:
        raise UserError(f"{run_dir} holds one run per regime ({', '.join(subruns)}); pass one of them, e.g. "
                        f"{run_dir / subruns[0]}")
    if not any(k[0] is not None for k in found):
        raise UserError(f"{paths.RunDir(run_dir).decoders} holds no fitted conditional decoder; run `ibprobe run` "
                        f"or `ibprobe analyze` first")
    pairs = _select(found, layers, epochs)

    source, dataset = open_source(run_dir)
    test_idx = np.asarray(dataset.test_idx)
    index = choose_images(test_idx, n_images, seed)
    images = np.asarray(dataset.images[index])  # (N, C, H, W) uint8
    rows = sample_decoders(run_dir, found, pairs, images, source=source, levels=int(dataset.levels),
                           n_samples=n_samples, seed=seed, device=device, unconditional=unconditional,
                           progress=progress)
    return GalleryData(images=images, image_index=index, levels=int(dataset.levels), rows=rows,
                       labels=np.asarray(dataset.labels[index], dtype=np.int64), classes=list(dataset.classes))


def sample_decoders(run_dir: str | os.PathLike, found: dict, pairs: list[tuple[str, int]], images: np.ndarray, *,
                    source, levels: int, n_samples: int = 1, seed: int = 0, device: str = "auto",
                    unconditional: bool = True, progress: bool = True,
                    desc: str = "gallery: sampling") -> list[GalleryRow]:
    """`n_samples` samples of q(x | h(x)) for each of `images` (uint8 [N, C, H, W]) from each (layer, epoch)
    decoder of `pairs` (paths in `found`, as `find_decoders` gives), preceded by N·K samples of q(x) when
    `unconditional` and found. Codes h(x) come from `source`'s network at that checkpoint (the decoder
    standardises raw codes itself); each row's generator is seeded by (seed, layer, epoch) alone. A CheckpointError
    when a checkpoint's content changed since run_dir was analysed."""
    check_checkpoints(run_dir, source)  # codes from other weights than the decoders were fitted on would mislead
    dev = resolve_device(device)
    n_images = len(images)
    checkpoints = {int(e): p for e, p in source.checkpoints}
    missing = sorted({e for _, e in pairs if e not in checkpoints})
    if missing:
        raise DataError(f"decoders exist for epoch(s) {missing} but the run has no such checkpoint "
                        f"(checkpoints: {sorted(checkpoints)})")
    rows: list[GalleryRow] = []
    todo: list[tuple[str | None, int | None]] = ([(None, None)] if unconditional and (None, None) in found else [])
    todo += pairs
    bar = progress_report(todo, enabled=progress, desc=desc, unit="decoder")
    codes: dict[tuple[str, int], np.ndarray] = {}
    for epoch in sorted({e for _, e in pairs}):
        model = source.load_model(checkpoints[epoch], device=str(dev))
        want = [l for l, e in pairs if e == epoch]
        got = capture(model, images, want, levels=levels, normalize=source.normalize,
                      batch_size=max(1, min(n_images, 256)), device=str(dev))
        codes.update({(l, epoch): got[l] for l in want})
        del model
    with torch.no_grad():
        for layer, epoch in bar:
            try:
                decoder = load_decoder(found[(layer, epoch)], map_location="cpu").to(dev).eval()
            except DecoderError as e:
                raise DataError(f"{found[(layer, epoch)]} is damaged ({type(e).__name__}); "
                                f"{refit_hint(found[(layer, epoch)].parent)}") from None
            g = torch.Generator(device=dev)
            g.manual_seed(_row_seed(seed, layer, epoch))
            if layer is None:
                x = decoder.sample(n=n_images * n_samples, generator=g)
            else:
                c = torch.as_tensor(codes[(layer, epoch)], dtype=torch.float32, device=dev)  # (N, ...)
                c = c.repeat_interleave(n_samples, dim=0)  # (N*K, ...)
                x = decoder.sample(code=c, n=n_images * n_samples, generator=g)
            x = x.detach().to("cpu", torch.uint8).numpy()  # (N*K, C, H, W)
            rows.append(GalleryRow(layer, epoch, rearrange(x, "(n k) c h w -> n k c h w", k=n_samples)))
    return rows


def kid_captions(run_dir: str | os.PathLike) -> dict[tuple[str | None, int | None], str]:
    """{(layer, epoch): "KID 0.012 ± 0.004"} from analysis/kid.csv ((None, None): q(x)), ± its standard error
    (kid_sem; the std over subsets in a table from before kid_sem); {} without the file."""
    path = paths.RunDir(run_dir).table(KID.name)
    if not path.is_file():
        return {}
    out = {}
    for r in read_table(path, KID):
        if r.get("kid_mean") is not None and r.get("reference") in ("conditional", "unconditional"):
            err = r.get("kid_sem") if r.get("kid_sem") is not None else r.get("kid_std") or 0.0
            out[(r["layer"], r["epoch"])] = f"KID {r['kid_mean']:.2g} ± {err:.1g}"
    return out
