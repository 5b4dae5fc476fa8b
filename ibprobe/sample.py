"""Samples from a run folder's fitted decoders: for a few held-out images x, draws of q(x | h(x)) per (layer,
checkpoint) and of q(x), with the exact cached sampler (decoders.sampling). The gallery draws them
(ibprobe.report.gallery) and KID scores them (ibprobe.measure.kid).

Images are chosen from the test split by the seed; codes h(x) come from the network at that checkpoint (the decoder
standardises raw codes itself); each row's generator is seeded by (seed, layer, step) alone, so a row's samples do
not depend on which other rows are drawn. Checkpoints are keyed by step (ibprobe.rundir.paths); a row also carries
its checkpoint's fractional epoch, for its label.
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
    step: int | None
    samples: np.ndarray  # uint8 [N, K, C, H, W]
    note: str = ""  # a second caption line, e.g. the row's KID
    epoch: float | None = None  # the checkpoint's fractional epoch (None: the step's own number)
    prefix: str = ""  # a first word of the caption, e.g. the regime of a gallery of several

    @property
    def label(self) -> str:
        name = "q(x), unconditional" if self.layer is None else \
            f"{self.layer} @ {checkpoint_label(self.step, self.epoch)}"
        name = f"{self.prefix}: {name}" if self.prefix else name
        return f"{name}\n{self.note}" if self.note else name


def checkpoint_label(step: int, epoch: float | None = None) -> str:
    """'epoch 1.13 (step 26)'; 'epoch 5' where the epoch is the step's own number (a foreign checkpoint)."""
    e = float(step) if epoch is None else float(epoch)
    return f"epoch {e:.3g}" + ("" if e == step else f" (step {step})")


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


def stack_galleries(galleries: dict[str, GalleryData]) -> GalleryData:
    """One gallery of several runs' galleries of the same held-out images (e.g. a preset's regimes): their rows one
    after another, each caption starting with its run's name. A DataError when their images differ."""
    items = list(galleries.items())
    if not items:
        raise DataError("no gallery to stack")
    first = items[0][1]
    for name, g in items[1:]:
        same = (g.images.shape == first.images.shape and np.array_equal(g.image_index, first.image_index)
                and np.array_equal(g.images, first.images) and g.levels == first.levels
                and g.n_samples == first.n_samples)
        if not same:
            raise DataError(f"the galleries of {items[0][0]} and {name} show other images; they cannot share columns")
    rows = [GalleryRow(r.layer, r.step, r.samples, r.note, r.epoch, prefix=name)
            for name, g in items for r in g.rows]
    return GalleryData(images=first.images, image_index=first.image_index, levels=first.levels, rows=rows,
                       labels=first.labels, classes=first.classes)


def find_decoders(run_dir: str | os.PathLike) -> dict[tuple[str | None, int | None], Path]:
    """{(layer, step): decoder.pt} of every finished decoder job in the folder's job index ((None, None) = q(x)),
    in the index's order (the network's layers, checkpoint by checkpoint). Failed and pending jobs are left out."""
    found: dict[tuple[str | None, int | None], Path] = {}
    if not paths.RunDir(run_dir).decoders.is_dir():
        return found
    for spec in read_job_index(run_dir):
        job = spec.job_dir(run_dir)
        if spec.role in (Role.REFERENCE, Role.CONDITIONAL) and not spec.repeat and job_state(job) == "done" \
                and (job / paths.DECODER).is_file():
            found[(spec.layer, spec.step)] = job / paths.DECODER
    return found


def _select(found: dict, layers: list[str] | None, steps: list[int] | None, epochs: list[float] | None = None,
            epoch_of=float) -> list[tuple[str, int]]:
    """The (layer, step) decoders asked for: layers by name, checkpoints by step and/or by epoch, both exactly (an
    epoch must be a checkpoint's epoch, `epoch_of(step)`); a UserError names what there is."""
    have_layers = sorted({l for l, _ in found if l is not None})
    have_steps = sorted({s for l, s in found if l is not None})
    if layers is not None:
        by_sanitised = {paths.sanitize_name(l): l for l in have_layers}
        unknown = [l for l in layers if l not in have_layers and l not in by_sanitised]
        if unknown:
            raise UserError(f"no fitted decoder for layer(s) {', '.join(unknown)}; layers with decoders: "
                            f"{', '.join(have_layers) or 'none'}")
        layers = [l if l in have_layers else by_sanitised[l] for l in layers]
    wanted = None
    if steps is not None or epochs is not None:
        by_epoch = {float(epoch_of(s)): s for s in have_steps}
        unknown = [f"epoch {e:g}" for e in epochs or () if float(e) not in by_epoch] + \
            [f"step {s}" for s in steps or () if s not in have_steps]
        if unknown:
            there = ", ".join(f"{s} (epoch {epoch_of(s):.3g})" for s in have_steps) or "none"
            raise UserError(f"no fitted decoder at {', '.join(unknown)}; steps with decoders: {there}")
        wanted = set(steps or ()) | {by_epoch[float(e)] for e in epochs or ()}
    pairs = [(l, s) for l, s in found if l is not None and (layers is None or l in layers)
             and (wanted is None or s in wanted)]
    if not pairs and (layers is not None or wanted is not None):
        raise UserError(f"no fitted decoder for that combination of layers and checkpoints; have "
                        f"{', '.join(f'{l}@{s}' for l, s in sorted(k for k in found if k[0] is not None))}")
    order = layers if layers is not None else list(dict.fromkeys(l for l, _ in found if l is not None))
    return sorted(pairs, key=lambda p: (order.index(p[0]), p[1]))  # the user's (or the network's) layer order


def choose_images(test_idx: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    """`n_images` distinct held-out image indices (int64, in data-set order), the same for the same seed."""
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if n_images > len(test_idx):
        raise UserError(f"--images {n_images} is more than the {len(test_idx)} held-out images")
    pick = np.sort(np.random.default_rng(seed).choice(len(test_idx), size=n_images, replace=False))
    return np.sort(test_idx[pick])


def _row_seed(seed: int, layer: str | None, step: int | None) -> int:
    """A seed per row that does not depend on which other rows are drawn."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{layer}@{step}".encode())) % (2**63)


def sample_gallery(run_dir: str | os.PathLike, *, n_images: int = 4, n_samples: int = 4,
                   layers: list[str] | None = None, steps: list[int] | None = None,
                   epochs: list[float] | None = None, seed: int = 0, device: str = "auto", unconditional: bool = True,
                   progress: bool = True) -> GalleryData:
    """Draw `n_samples` samples from q(x | h(x)) for `n_images` held-out images, per (layer, checkpoint) decoder.

    Images are chosen from the test split by `seed`; codes h(x) come from the network at that checkpoint
    (the decoder standardises raw codes itself). Checkpoints are chosen by step and/or by epoch, exactly (None:
    all). Unknown layers or checkpoints raise a UserError naming what exists.
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
    source, dataset = open_source(run_dir) if epochs is not None else (None, None)  # epochs need the source's
    pairs = _select(found, layers, steps, epochs, source.epoch_of if source is not None else float)
    if source is None:
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
    """`n_samples` samples of q(x | h(x)) for each of `images` (uint8 [N, C, H, W]) from each (layer, step)
    decoder of `pairs` (paths in `found`, as `find_decoders` gives), preceded by N·K samples of q(x) when
    `unconditional` and found. Codes h(x) come from `source`'s network at that checkpoint (the decoder
    standardises raw codes itself); each row's generator is seeded by (seed, layer, step) alone. A CheckpointError
    when a checkpoint's content changed since run_dir was analysed."""
    check_checkpoints(run_dir, source)  # codes from other weights than the decoders were fitted on would mislead
    dev = resolve_device(device)
    n_images = len(images)
    checkpoints = {int(s): p for s, p in source.checkpoints}
    missing = sorted({s for _, s in pairs if s not in checkpoints})
    if missing:
        raise DataError(f"decoders exist for step(s) {missing} but the run has no such checkpoint "
                        f"(checkpoints: {sorted(checkpoints)})")
    rows: list[GalleryRow] = []
    todo: list[tuple[str | None, int | None]] = ([(None, None)] if unconditional and (None, None) in found else [])
    todo += pairs
    bar = progress_report(todo, enabled=progress, desc=desc, unit="decoder")
    codes: dict[tuple[str, int], np.ndarray] = {}
    for step in sorted({s for _, s in pairs}):
        model = source.load_model(checkpoints[step], device=str(dev))
        want = [l for l, s in pairs if s == step]
        got = capture(model, images, want, levels=levels, normalize=source.normalize,
                      batch_size=max(1, min(n_images, 256)), device=str(dev))
        codes.update({(l, step): got[l] for l in want})
        del model
    with torch.no_grad():
        for layer, step in bar:
            try:
                decoder = load_decoder(found[(layer, step)], map_location="cpu").to(dev).eval()
            except DecoderError as e:
                raise DataError(f"{found[(layer, step)]} is damaged ({type(e).__name__}); "
                                f"{refit_hint(found[(layer, step)].parent)}") from None
            g = torch.Generator(device=dev)
            g.manual_seed(_row_seed(seed, layer, step))
            if layer is None:
                x = decoder.sample(n=n_images * n_samples, generator=g)
            else:
                c = torch.as_tensor(codes[(layer, step)], dtype=torch.float32, device=dev)  # (N, ...)
                c = c.repeat_interleave(n_samples, dim=0)  # (N*K, ...)
                x = decoder.sample(code=c, n=n_images * n_samples, generator=g)
            x = x.detach().to("cpu", torch.uint8).numpy()  # (N*K, C, H, W)
            rows.append(GalleryRow(layer, step, rearrange(x, "(n k) c h w -> n k c h w", k=n_samples),
                                   epoch=None if step is None else source.epoch_of(step)))
    return rows


def kid_captions(run_dir: str | os.PathLike) -> dict[tuple[str | None, int | None], str]:
    """{(layer, step): "KID 0.012 ± 0.004"} from analysis/kid.csv ((None, None): q(x)), ± its standard error
    (kid_sem; the std over subsets in a table from before kid_sem); {} without the file."""
    path = paths.RunDir(run_dir).table(KID.name)
    if not path.is_file():
        return {}
    out = {}
    for r in read_table(path, KID):
        if r.get("kid_mean") is not None and r.get("reference") in ("conditional", "unconditional"):
            err = r.get("kid_sem") if r.get("kid_sem") is not None else r.get("kid_std") or 0.0
            out[(r["layer"], r["step"])] = f"KID {r['kid_mean']:.2g} ± {err:.1g}"
    return out
