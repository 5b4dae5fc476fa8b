"""Loading checkpoints, ours and from elsewhere: safely, in the common formats, with clear errors.

Our run folders: `list_checkpoints`, `load_run_config`, `load_run_checkpoint` and `load_run_model`, which rebuilds
the network from the config inside the checkpoint.

Checkpoints from other people are untrusted. They are always read with `torch.load(weights_only=True)`, which
only rebuilds tensors and primitive containers and never runs code from the file; a file that needs more
(pickled classes, functions, NumPy arrays) is refused, not executed.

How a checkpoint is keyed: by the optimizer step at which it was taken, with its (fractional) epoch beside it
(ibprobe.rundir.paths). Ours hold both (`step`, and `epoch` = step / steps per epoch); a run folder names them
step_XXXXXXXX.pt (older runs epoch_XXXX.pt, whose files hold their step too). A file from elsewhere that holds no
step is keyed by its epoch number, which then stands for both: its `epoch` key, else the last number in its name,
else its place in the sorted file list (see `resolve_checkpoints`).

Formats understood by `extract_state_dict`:
  - ours: {"model": state_dict, "epoch": float, "step": int, "config": {...}, ...} (see ibprobe.train);
  - a raw state_dict (a mapping of names to tensors);
  - {"model": sd, ...}, {"state_dict": sd, ...}, {"model_state_dict": sd, ...} (plain, Lightning, common scripts);
  - keys prefixed by "module." (DataParallel/DDP), "model." (Lightning) or "_orig_mod." (torch.compile), also
    nested ("module.model."); a prefix is stripped only when every key carries it.
"""
from __future__ import annotations

import glob
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibprobe.config import resolve_device
from ibprobe.errors import CheckpointError
from ibprobe.models import build_model
from ibprobe.rundir.files import atomic_write_json, read_json
from ibprobe.rundir.paths import RunDir, checkpoint_name_key

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")
_FIX_HINT = (
    "re-save only the weights where the file was made, with torch.save(model.state_dict(), path), "
    "and pass that file instead"
)


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """Read a checkpoint with torch.load(weights_only=True), never anything less safe.

    Raises:
        CheckpointError: the file is missing, is not a readable torch file, or holds Python objects beyond
            tensors and primitives (refused for safety; nothing in it is executed).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a folder, not a file; pass the .pt/.pth/.ckpt files in it")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        if _looks_pickled(p) and ("weights_only" in str(e) or "Weights only" in str(e) or "GLOBAL" in str(e)):
            raise CheckpointError(_refusal(p, e)) from None
        raise CheckpointError(f"checkpoint {p} is corrupt or not a torch file ({_first_line(e)})") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {p} is too large to load into memory") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a foreign file is the file's fault
        what = f"{type(e).__name__}: {_first_line(e)}" if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {p} is corrupt, truncated or not a torch file ({what})") from None


def _looks_pickled(path: Path) -> bool:
    """Whether the file starts like a torch file (a zip) or a pickle, rather than as other bytes."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80" or head == b"PK"


def _refusal(path: Path, err: BaseException) -> str:
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
    found = f" (it asks for {m.group(1)})" if m else ""
    return (
        f"refused checkpoint {path}: it holds Python objects beyond tensors and primitives{found}, which could run "
        f"arbitrary code, so it was not loaded and nothing in it was executed; to fix, {_FIX_HINT}"
    )


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception message (torch's are long), at most 200 characters."""
    s = str(e).strip().splitlines()
    if not s:
        return type(e).__name__
    return re.split(r"(?<=[.:;])\s", s[0], maxsplit=1)[0].rstrip(".:;")[:200]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def extract_state_dict(obj: Any, source: str = "the checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Find the model weights in a loaded checkpoint (`source` names it in an error).

    Returns:
        (state_dict, meta): meta has "format" (what was recognised), "epoch" if the file has a number >= 0 under
        "epoch" (an int, or our fractional epochs), "step" if it has an integer >= 0 under "step", "config" if it
        has a dict "config" (our runs), and "stripped_prefix" ("" if none).
    Raises:
        CheckpointError: no state_dict could be found.
    """
    meta: dict[str, Any] = {"format": "state_dict", "stripped_prefix": ""}
    if isinstance(obj, Mapping):
        ep, st = _number(obj.get("epoch")), _number(obj.get("step"))
        if ep is not None:
            meta["epoch"] = ep
        if isinstance(st, int):
            meta["step"] = st
        if isinstance(obj.get("config"), Mapping):
            meta["config"] = dict(obj["config"])
    sd = obj
    for _ in range(3):  # e.g. {"state_dict": {"model": sd}}
        if _is_state_dict(sd) or not isinstance(sd, Mapping):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            break
        meta["format"] = key if meta["format"] == "state_dict" else f"{meta['format']}.{key}"
        sd = sd[key]
    if isinstance(sd, Mapping):
        # tolerate a few non-tensor entries (e.g. extra state) but require tensors to be there
        tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(sd) - 2:
            sd = tensors
    if not _is_state_dict(sd):
        keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else []
        shown = f"; its top-level keys are {keys}" if keys else f"; it holds a {type(obj).__name__}"
        raise CheckpointError(
            f"found no model weights in {source} (expected a state_dict, or a dict with one of "
            f"{', '.join(repr(k) for k in WRAPPER_KEYS)}){shown}"
        )
    sd, prefix = _strip_common_prefixes(dict(sd))
    meta["stripped_prefix"] = prefix
    return sd, meta


def _number(v: Any) -> int | float | None:
    """A finite number >= 0 (an int stays an int, a one-element tensor counts), else None."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return v


def _strip_common_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    stripped = ""
    while True:
        p = next((p for p in STRIP_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if p is None:
            return sd, stripped
        sd = {k[len(p):]: v for k, v in sd.items()}
        stripped += p


def _match_submodule(sd: Mapping[str, torch.Tensor], want: set[str]) -> dict[str, torch.Tensor] | None:
    """If the checkpoint keys under some dotted prefix (e.g. "backbone.", or a re-added "model.") are exactly the
    model's keys, return that sub-dict; handles wrappers that hold the model next to other modules."""
    prefixes = {""}
    for k in sd:
        parts = k.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    for p in sorted(prefixes, key=len):
        sub = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        if set(sub) == want:
            return sub
    return None


def apply_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str = "the checkpoint") -> None:
    """Strictly load `sd` into `model`; on any mismatch raise one CheckpointError that summarises it."""
    want = model.state_dict()
    if set(sd) != set(want):
        sub = _match_submodule(sd, set(want))
        if sub is not None:
            sd = sub
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}"
        for k in want
        if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)
    ]
    params = dict(model.named_parameters())
    bad = [k for k in want if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].is_floating_point()
           and (torch.isnan(sd[k]).any() or (k in params and torch.isinf(sd[k]).any()))]
    if bad:  # NaN weights (or infinite parameters) never come from a run that went well
        raise CheckpointError(f"{source} holds NaN or infinite weights ({_few(bad)}): the training run it comes "
                              f"from diverged; leave this checkpoint out")
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) ({_few(shapes)})")
        raise CheckpointError(
            f"{source} does not fit the model: {'; '.join(parts)}; the --model spec or --model-arg values "
            "probably differ from those the checkpoint was trained with"
        )
    try:
        model.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:  # e.g. dtype that cannot be copied
        raise CheckpointError(f"{source} does not fit the model: {_first_line(e)}") from None


def _few(names: list[str], n: int = 3) -> str:
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the checkpoint at `path` into `model` (safely, strictly); return the checkpoint's meta."""
    sd, meta = extract_state_dict(load_checkpoint_file(path), f"checkpoint {path}")
    want = set(model.state_dict())
    prefix = meta["stripped_prefix"]
    if prefix and set(sd) != want:  # the model itself may have a top module called "model"/"module"
        parts = prefix.split(".")[:-1]
        for i in range(len(parts)):
            back = ".".join(parts[i:]) + "."
            if {back + k for k in sd} == want:
                sd = {back + k: v for k, v in sd.items()}
                meta["stripped_prefix"] = prefix[: len(prefix) - len(back)]
                break
    apply_state_dict(model, sd, source=f"checkpoint {path}")
    return meta


_GLOB_CHARS = re.compile(r"[*?\[]")


def resolve_checkpoints(globs: str | os.PathLike | list) -> list[tuple[int, float, Path]]:
    """Expand checkpoint globs into [(step, epoch, path), ...] sorted by step.

    A file that holds its step and epoch (ours) is keyed by its step. A file without them is keyed by its epoch
    number, which then stands for both step and epoch: its integer "epoch" key, else the last number in its file
    name; if no file has either, the files are numbered 0, 1, ... in sorted-path order. Each file is loaded once
    (safely) to read it.

    Raises:
        CheckpointError: a pattern matches nothing, a file cannot be read, some files hold their step and others do
            not, epochs are ambiguous, or two files have one key.
    """
    if isinstance(globs, (str, os.PathLike)):
        globs = [globs]
    paths: list[Path] = []
    seen: set[Path] = set()
    for pattern in globs:
        pat = os.path.expanduser(str(pattern))
        if _GLOB_CHARS.search(pat):
            hits = sorted(glob.glob(pat, recursive=True))
            hits = [h for h in hits if os.path.isfile(h)]
            if not hits:
                raise CheckpointError(f"no checkpoint file matched {pattern!r}")
        else:
            if not os.path.exists(pat):
                raise CheckpointError(f"no such checkpoint: {pat}")
            hits = [pat]
        for h in hits:
            key = Path(h).resolve()
            if key not in seen:
                seen.add(key)
                paths.append(Path(h))
    paths.sort(key=lambda p: str(p))

    stepped: list[tuple[Path, int, float]] = []
    found: list[tuple[Path, int | None, str]] = []
    for p in paths:
        _, meta = extract_state_dict(load_checkpoint_file(p), f"checkpoint {p}")
        if "step" in meta and "epoch" in meta:
            stepped.append((p, meta["step"], float(meta["epoch"])))
        elif isinstance(meta.get("epoch"), int):
            found.append((p, meta["epoch"], "its 'epoch' key"))
        else:
            nums = re.findall(r"\d+", p.stem)
            found.append((p, int(nums[-1]) if nums else None, "its file name"))
    if stepped and found:
        raise CheckpointError(
            f"{stepped[0][0]} holds its training step and {found[0][0]} does not, so they cannot be put in one order; "
            "pass checkpoints of one kind (ibprobe's, keyed by step, or others, keyed by epoch)")
    if stepped:
        return _unique([(st, ep, p, "its 'step' key") for p, st, ep in stepped], "step")
    unknown = [p for p, e, _ in found if e is None]
    if unknown and len(unknown) == len(found):
        found = [(p, i, "file order") for i, (p, _, _) in enumerate(found)]
    elif unknown:
        raise CheckpointError(
            f"cannot tell the epoch of {unknown[0]}: it has no 'epoch' key and no number in its name, while other "
            "checkpoints have one; rename it with its epoch, e.g. model_epoch12.pt"
        )
    return _unique([(int(e), float(e), p, how) for p, e, how in found], "epoch")


def _unique(found: list[tuple[int, float, Path, str]], what: str) -> list[tuple[int, float, Path]]:
    """[(step, epoch, path)] sorted by step; two files of one key (a step, or an epoch standing for it) are refused."""
    by_key: dict[int, tuple[Path, str]] = {}
    for step, epoch, p, how in found:
        if step in by_key:
            q, how_q = by_key[step]
            raise CheckpointError(f"checkpoints {q} and {p} both are {what} {step} (from {how_q} and {how}); pass one "
                                  f"file per {what}")
        by_key[step] = (p, how)
    return sorted(((step, epoch, p) for step, epoch, p, _ in found), key=lambda t: t[0])


# ------------------------------------------------------------------------------------------------ our run folders
def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of run_dir/checkpoints/step_*.pt, sorted by step (last.pt excluded). A run of an older version
    named its checkpoints by epoch (epoch_XXXX.pt): those files are read once for the step they hold."""
    out = []
    for p in RunDir(run_dir).checkpoints.glob("*.pt"):
        named = checkpoint_name_key(p.stem)
        if named is None:
            continue
        kind, n = named
        out.append((n if kind == "step" else _step_in(p), p))
    return sorted(out)


def _step_in(path: Path) -> int:
    """The training step an ibprobe checkpoint holds (one named by epoch, from an older version)."""
    step = load_run_checkpoint(path).get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path} holds no training step; it is not an ibprobe training checkpoint")
    return step


def run_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, float, Path]]:
    """[(step, epoch, path)] of a training run's checkpoints, sorted by step: the epoch is step / steps per epoch
    (config.json's `steps_per_epoch`), or the epoch an older run's file is named by."""
    spe = load_run_config(run_dir).get("steps_per_epoch")
    out = []
    for step, p in list_checkpoints(run_dir):
        named = checkpoint_name_key(p.stem)
        if named and named[0] == "epoch":
            out.append((step, float(named[1]), p))
        elif isinstance(spe, int) and spe > 0:
            out.append((step, step / spe, p))
        else:  # a config.json without it: the checkpoint says
            out.append((step, float(load_run_checkpoint(p)["epoch"]), p))
    return out


def load_run_config(run_dir: str | os.PathLike) -> dict:
    """run_dir/config.json, or a CheckpointError saying it is not a run folder.

    A damaged or missing config.json of a folder that holds checkpoints is rebuilt from them (each carries the
    config it was trained with).
    """
    p = RunDir(run_dir).config
    why = "is missing"
    if p.is_file():
        try:
            conf = read_json(p)
            if isinstance(conf, dict) and "model" in conf:
                return conf
            why = "is not a run config"
        except ValueError as e:
            why = f"is unreadable ({type(e).__name__})"
    saved = run_config_from_checkpoints(run_dir)
    if saved is None:
        if not p.is_file():
            raise CheckpointError(f"{run_dir} is not a training run folder (no config.json); create one with "
                                  f"`ibprobe train --out {run_dir}`")
        raise CheckpointError(f"{p} {why} and no checkpoint of {run_dir} holds the run's config; delete the "
                              f"config.json and train again with `ibprobe train --out {run_dir} ...`")
    try:
        atomic_write_json(p, saved)
    except OSError:
        pass  # a read-only folder: the config is still the checkpoints'
    return saved


def run_config_from_checkpoints(run_dir: str | os.PathLike) -> dict | None:
    """The run config inside the newest readable checkpoint of run_dir (last.pt first), or None if there is none."""
    for path in [RunDir(run_dir).last_checkpoint] + [p for _, p in reversed(list_checkpoints(run_dir))]:
        if path.is_file():
            try:
                conf = load_run_checkpoint(path)["config"]
            except CheckpointError:
                continue
            if isinstance(conf, dict) and "model" in conf:
                return dict(conf)
    return None


def load_run_checkpoint(path: str | os.PathLike) -> dict:
    """One of our training checkpoints (step_XXXXXXXX.pt, last.pt), read safely; CheckpointError if it is not one."""
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path} is not an ibprobe training checkpoint (needs 'model' and 'config' entries)")
    return ckpt


def build_run_model(config: dict) -> nn.Module:
    """An untrained model of the architecture a run config describes."""
    try:
        return build_model(config["model"], in_shape=tuple(config["in_shape"]), num_classes=int(config["num_classes"]),
                           **dict(config.get("model_args") or {}))
    except KeyError as e:
        raise CheckpointError(f"run config lacks {e.args[0]!r}; it cannot rebuild the model") from None


def load_run_model(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, checkpoint dict) from one of our step_XXXXXXXX.pt / last.pt files."""
    ckpt = load_run_checkpoint(checkpoint_path)
    model = build_run_model(ckpt["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint_path} does not fit the model its config describes: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(resolve_device(device)).eval(), ckpt
