"""The capture stage -> DIR/activations/: read any layer of a network, batch by batch or streamed into an on-disk
activation store, and fill a run's store for every checkpoint (`fill_store`, the one way to do it).

A layer is named by its module path (`layer2`, `layer3.0.relu1`, `pool`). Capture runs the model in eval
mode under no_grad with forward hooks that store copies (`.detach().clone()`), never views, so an in-place
op later in the forward pass cannot corrupt them. Hooks are removed in a `finally`. A layer that fires zero
times or more than once in one forward pass is a LayerError (a reused module would silently mix outputs).

Activation store layout (float16 .npy, one file per (checkpoint, layer, split); a checkpoint is keyed by its
optimizer step, ibprobe.rundir.paths):
    root/step_XXXXXXXX/<sanitize_name(layer)>/<split>.npy
    root/step_XXXXXXXX/manifest.json   {layer: {"dir", "splits": {split: {"shape", "dtype", "n", "checkpoint"}}}}
Files are written streaming (peak memory does not grow with N) under a temp name and renamed when complete; a failed
write (a full disk) leaves no temp file. Entries are keyed by `codes_key` (the images, the network and its
normalisation, the checkpoint's content), so the store never serves codes of other inputs; damaged ones are recaptured.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from decoders.progress import progress as progress_report
from ibprobe.config import resolve_device
from ibprobe.data import to_model_input
from ibprobe.errors import CheckpointError, LayerError
from ibprobe.rundir.files import NpyStream, atomic_write_json, file_digest, jsonable, read_json, try_lock
from ibprobe.rundir.paths import checkpoint_name_key, sanitize_name, step_dirname

SPLITS = ("fit", "test")  # the analysis image sets: the decoders' and probe's fitting images, their test images

FLOAT16_MAX = float(np.finfo(np.float16).max)


def tappable_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Module paths worth tapping, in forward order. Our models list their own; others: every named module.

    With `example` (a float input batch), a foreign model is run once and only modules that return a tensor
    and fire exactly once are kept (e.g. torchvision's shared `layer1.0.relu` is dropped).
    """
    if hasattr(model, "tap_names"):
        return list(model.tap_names())
    names = [name for name, _ in model.named_modules() if name]
    if example is None:
        return names
    order = call_order(model, example)
    counts = {n: 0 for n in names}
    returns_tensor = {n: True for n in names}
    for name, _, is_tensor in order:
        counts[name] += 1
        returns_tensor[name] = returns_tensor[name] and is_tensor
    return [n for n in names if counts[n] == 1 and returns_tensor[n]]


def call_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, returned a tensor) of every named module's call in one eval-mode forward pass of `example`,
    in the order they return (a module called twice appears twice); the model's train/eval mode is restored."""
    order: list[tuple[str, nn.Module, bool]] = []
    handles = []
    was = model.training
    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(
                    lambda m, _i, out, name=name: order.append((name, m, isinstance(out, torch.Tensor)))))
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return order


def list_layers(model: nn.Module, every: bool = False) -> list[str]:
    """The layer names of `model` worth tapping (run once on zeros of its input shape, when it records one), or
    with `every` all its named modules."""
    if every:
        return [n for n, _ in model.named_modules() if n]
    shape = getattr(model, "ibprobe_build", {}).get("in_shape")
    return tappable_layers(model, torch.zeros(2, *shape) if shape else None)


def check_layers(model: nn.Module, layers: Sequence[str], *, spec: str = "") -> dict[str, nn.Module]:
    """{layer: module} for module paths of `model`; the one layer check of ibprobe.

    A LayerError names the unknown layers, the closest matches and the available ones (top two levels if many).
    Whether a layer fires exactly once per forward pass is checked when it is captured.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise LayerError("no layers given; choose from: " + ", ".join(tappable_layers(model)))
    if len(set(layers)) != len(layers):
        raise LayerError(f"layers listed twice: {layers}")
    modules = dict(model.named_modules())
    unknown = [l for l in layers if l not in modules or l == ""]
    if unknown:
        available = tappable_layers(model)
        close = [c for l in unknown for c in difflib.get_close_matches(l, available, n=3, cutoff=0.6)]
        hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
        if len(available) <= 40:
            shown = ", ".join(available)
        else:
            top = [a for a in available if a.count(".") <= 1]
            shown = (", ".join(top[:60]) + f" (and {len(available) - min(len(top), 60)} deeper ones; "
                     f"`ibprobe layers --model {spec or '...'}` lists all)")
        raise LayerError(f"unknown layer(s) {', '.join(repr(l) for l in unknown)} in {type(model).__name__}{hint}; "
                         f"available: {shown}")
    return {l: modules[l] for l in layers}


@contextmanager
def _hooked(model: nn.Module, layers: Sequence[str]):
    """Register copy-storing hooks; yields a dict layer -> list of outputs of the current forward pass."""
    mods = check_layers(model, layers)
    fired: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    handles = []

    def make(name: str):
        def hook(_m, _inp, out):
            if not isinstance(out, torch.Tensor):
                raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor; tap one of its "
                                 f"submodules")
            fired[name].append(out.detach().clone())
        return hook

    try:
        for name, m in mods.items():
            handles.append(m.register_forward_hook(make(name)))
        yield fired
    finally:
        for h in handles:
            h.remove()


def _take(fired: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    out = {}
    for name, outs in fired.items():
        if len(outs) != 1:
            raise LayerError(f"layer {name!r} fired {len(outs)} times in one forward pass (must be exactly once); "
                             f"it is {'never used' if not outs else 'reused'} in forward(), so its activations "
                             f"are ambiguous; tap another layer")
        a = outs[0].float().cpu().numpy()  # (B, ...)
        if not np.isfinite(a).all():
            raise LayerError(f"layer {name!r} produced non-finite activations (NaN/inf); the network has diverged")
        out[name] = a
        outs.clear()
    return out


def iter_capture(model: nn.Module, images: np.ndarray | torch.Tensor, layers: Sequence[str], *, levels: int,
                 normalize: Any = None, batch_size: int = 256, device: str | torch.device = "cpu",
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Yield {layer: float32 [B, ...]} per batch of `images` (uint8 [N, C, H, W]), computed on the fly.

    The model is moved to `device` and put in eval mode; its training flag is restored afterwards.
    """
    dev = resolve_device(device)
    model.to(dev)
    was = model.training
    model.eval()
    n = len(images)
    try:
        with _hooked(model, list(layers)) as fired, torch.no_grad():
            for i in range(0, n, int(batch_size)):
                x = to_model_input(images[i:i + batch_size], levels, normalize).to(dev)  # (B, C, H, W)
                for v in fired.values():
                    v.clear()
                model(x)
                yield _take(fired)
    finally:
        model.train(was)


def capture(model: nn.Module, images: np.ndarray | torch.Tensor, layers: Sequence[str], *, levels: int,
            normalize: Any = None, batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """{layer: float32 [N, ...]} for all of `images`, in memory (use capture_to_store for large N)."""
    parts: dict[str, list[np.ndarray]] = {l: [] for l in layers}
    with closing(iter_capture(model, images, layers, levels=levels, normalize=normalize, batch_size=batch_size,
                              device=device)) as batches:
        for batch in batches:
            for l, a in batch.items():
                parts[l].append(a)
    return {l: np.concatenate(p) if p else np.zeros((0,), np.float32) for l, p in parts.items()}


class ActivationStore:
    """float16 activations per (checkpoint step, layer, split) under `root`; see the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def step_dir(self, step: int) -> Path:
        return self.root / step_dirname(step)

    def path(self, step: int, layer: str, split: str) -> Path:
        return self.step_dir(step) / sanitize_name(layer) / f"{sanitize_name(split)}.npy"

    def manifest(self, step: int) -> dict:
        """{layer: entry} of one checkpoint; a damaged manifest reads as empty, so its entries are captured again."""
        p = self.step_dir(step) / "manifest.json"
        try:
            m = read_json(p) if p.is_file() else {}
        except ValueError:
            return {}
        return m if isinstance(m, dict) and all(isinstance(v, dict) for v in m.values()) else {}

    def has(self, step: int, layer: str, split: str, key: str | None = None) -> bool:
        """Whether the entry is stored intact (its file's header matches the manifest) and, given a key, was captured
        from the inputs that key names."""
        entry = self.manifest(step).get(layer, {}).get("splits", {}).get(split)
        if not isinstance(entry, dict) or (key is not None and entry.get("key") != key):
            return False
        return self._intact(step, layer, split, entry) is not None

    def _intact(self, step: int, layer: str, split: str, entry: dict) -> np.memmap | None:
        """The entry's file as a read-only memmap if its header matches the manifest `entry`, else None."""
        try:
            a = np.load(self.path(step, layer, split), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing, truncated or not an array
            return None
        if not isinstance(a, np.ndarray):  # another file put in its place (an .npz is a zip)
            getattr(a, "close", lambda: None)()
            return None
        shape = entry.get("shape")
        ok = isinstance(shape, (list, tuple)) and tuple(a.shape) == tuple(shape)
        return a if a.dtype == np.float16 and ok else None

    def read(self, step: int, layer: str, split: str, key: str | None = None) -> np.memmap:
        """Read-only float16 memmap [N, ...]; LayerError if it was never captured (or, given a key, if it was
        captured from other images or another source)."""
        p = self.path(step, layer, split)
        manifest = self.manifest(step)
        entry = manifest.get(layer, {}).get("splits", {}).get(split)
        a = self._intact(step, layer, split, entry) if isinstance(entry, dict) else None
        if a is None:
            raise LayerError(f"no stored activations for layer {layer!r}, split {split!r} at {step_dirname(step)} "
                             f"({p}); stored layers there: {', '.join(sorted(manifest)) or 'none'}; run "
                             f"`ibprobe capture`")
        if key is not None and entry.get("key") != key:
            raise LayerError(f"the stored activations {p} were captured from other images or another source than "
                             f"this analysis uses; rerun the command to capture them again")
        return a

    def steps(self) -> list[int]:
        """The checkpoint steps with a folder in the store."""
        keys = (checkpoint_name_key(p.name) for p in self.root.glob("step_*") if p.is_dir())
        return sorted(n for kind, n in filter(None, keys) if kind == "step")

    def _record(self, step: int, layer: str, split: str, info: dict) -> None:
        m = self.manifest(step)
        entry = m.setdefault(layer, {"dir": sanitize_name(layer), "splits": {}})
        entry["splits"][split] = info
        atomic_write_json(self.step_dir(step) / "manifest.json", m)


def capture_to_store(model: nn.Module, images: np.ndarray | torch.Tensor, layers: Sequence[str],
                     store: ActivationStore, *, step: int, split: str, levels: int, normalize: Any = None,
                     batch_size: int = 256, device: str | torch.device = "cpu", checkpoint: str | None = None,
                     overwrite: bool = False, key: str | None = None) -> dict[str, Path]:
    """Stream the activations of `layers` on `images` into `store` as float16; returns {layer: path}.

    Layers already stored (under `key`, when given) are skipped unless `overwrite`. Values beyond float16 range
    (|a| > 65504) or non-finite ones are a LayerError, and nothing partial is left behind.
    """
    layers = list(layers)
    todo = [l for l in layers if overwrite or not store.has(step, l, split, key)]
    paths = {l: store.path(step, l, split) for l in layers}
    if not todo:
        return paths
    n = len(images)
    writers: dict[str, NpyStream] = {}
    batches = iter_capture(model, images, todo, levels=levels, normalize=normalize, batch_size=batch_size,
                           device=device)
    try:
        for batch in batches:
            for l, a in batch.items():
                if np.abs(a).max(initial=0.0) > FLOAT16_MAX:
                    raise LayerError(f"layer {l!r} has activations up to {np.abs(a).max():.3g}, beyond float16 range "
                                     f"({FLOAT16_MAX:.0f}); it cannot be stored as float16")
                if l not in writers:
                    writers[l] = NpyStream(paths[l], n, tuple(a.shape[1:]))
                writers[l].write(a)
        for l in todo:
            if l not in writers:  # n == 0
                raise LayerError(f"no images to capture for split {split!r}")
            w = writers.pop(l)
            w.commit()
            store._record(step, l, split, {"shape": w.shape, "dtype": "float16", "n": n, "key": key,
                                           "checkpoint": None if checkpoint is None else str(checkpoint),
                                           "file": str(paths[l].relative_to(store.step_dir(step)))})
    finally:
        batches.close()  # removes the hooks now, even while an exception propagates
        for w in writers.values():
            w.abort()
    return paths


def images_key(images: np.ndarray, normalize: Any = None) -> str:
    """A short digest of the images a split was captured from and of how they were normalised."""
    h = hashlib.blake2b(np.ascontiguousarray(images).tobytes(), digest_size=10)
    h.update(repr((tuple(images.shape), normalize)).encode())
    return h.hexdigest()


def codes_key(images: np.ndarray, source, checkpoint_digest: str) -> str:
    """The key an activation entry is stored and read under: a digest of the images, of the network they go through
    (`source`, a ModelSource: its spec and normalisation) and of the checkpoint's content (ibprobe.rundir.files.file_digest)."""
    return images_key(images, (json.dumps(jsonable(source.network()), sort_keys=True), str(checkpoint_digest)))


def fill_store(store: ActivationStore, source, images: dict[str, np.ndarray], layers: Sequence[str], *, levels: int,
               steps=None, device: str | torch.device = "cpu", batch_size: int = 256, overwrite: bool = False,
               progress: bool = True, digests: dict | None = None) -> dict[int, dict[str, str]]:
    """Capture `layers` on each named image set (split) at each checkpoint of `source` (a ModelSource) into
    `store`; returns {step: {split: key}}, the `codes_key` each entry is stored and read under.

    Entries already stored from the same inputs are kept unless `overwrite`; entries stored from other images,
    another normalisation or other weights are captured again. `digests` ({step: content digest}, as an analysis
    pinned them): a checkpoint whose content differs now is a CheckpointError, not codes of other weights under the
    pinned key. Each checkpoint is captured under a lock, so several processes on one folder capture it once.
    `steps`: a subset of the source's checkpoint steps (default all).
    """
    layers = list(layers)
    checkpoints = [(int(s), p) for s, p in source.checkpoints if steps is None or int(s) in set(steps)]
    all_keys: dict[int, dict[str, str]] = {}
    for step, path in progress_report(checkpoints, enabled=progress, desc="capture", unit="checkpoint"):
        digest = file_digest(path)
        pinned = None if digests is None else digests.get(str(step), digests.get(step))
        if pinned is not None and pinned != digest:
            raise CheckpointError(f"checkpoint {path} changed while this analysis ran (its content differs from when "
                                  f"the analysis began); rerun the command")
        keys = all_keys[step] = {split: codes_key(x, source, digest) for split, x in images.items()}

        def todo() -> list[tuple[str, str]]:
            return [(l, s) for l in layers for s in images if overwrite or not store.has(step, l, s, keys[s])]

        if not todo():
            continue
        with try_lock(store.step_dir(step) / ".capture.lock", wait=True):
            missing = todo()
            if not missing:
                continue
            model = source.load_model(path, device=str(device))
            for split, x in images.items():
                want = [l for l, s in missing if s == split]
                if want:
                    try:
                        capture_to_store(model, x, want, store, step=step, split=split, levels=levels,
                                         normalize=source.normalize, batch_size=batch_size, device=device,
                                         checkpoint=str(path), overwrite=True, key=keys[split])
                    except LayerError as e:  # say which checkpoint (e.g. the one that diverged)
                        raise LayerError(f"checkpoint {path} (step {step}): {e}") from None
        if progress:
            print(f"captured activations at step {step} (epoch {source.epoch_of(step):.3g}; {len(missing)} layer x "
                  f"split)", file=sys.stderr)
    return all_keys


__all__ = ["tappable_layers", "call_order", "check_layers", "capture", "iter_capture", "ActivationStore",
           "capture_to_store", "fill_store", "images_key", "codes_key", "SPLITS"]
