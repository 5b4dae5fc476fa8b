"""What an analysis measures: the network at each checkpoint (ModelSource) and the images (a data spec), checked
up front so that a mistake costs one line, not an hour.

`prepare_analysis` validates a bring-your-own-model analysis: the data load, the checkpoints load safely and fit
the model, every layer exists and fires once on two test images, and the decoder and fit settings resolve.
`source_from_run` is the same for one of our training runs. `open_source` reopens an analysed folder.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from decoders import DecoderError, check_images
from ibprobe.capture import capture, check_layers
from ibprobe.config import AnalysisConfig, Settings, check_int
from ibprobe.data import Dataset, describe_sizes, load_dataset, stratified_split
from ibprobe.errors import ConfigError, DataError, LayerError, UserError
from ibprobe.models import build_model
from ibprobe.rundir.checkpoints import (build_run_model, load_run_checkpoint, load_run_config, load_run_model,
                                        load_weights, resolve_checkpoints, run_checkpoints)
from ibprobe.rundir.files import jsonable, read_json
from ibprobe.rundir.paths import RunDir, sanitize_name

NORMALIZE_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild the analysed network at each checkpoint. Saved as DIR/source.json.

    kind "run": one of our training runs (checkpoints carry their own config).
    kind "spec": a model spec (`resnet`, `torchvision:NAME`, `pkg.mod:callable`) plus foreign checkpoints.

    A checkpoint is keyed by its optimizer step (ibprobe.rundir.checkpoints); `epochs` gives each one's fractional
    epoch. A foreign checkpoint that holds no step is keyed by its epoch number, which is then its epoch too.
    """

    kind: str
    model: str
    model_args: dict = field(default_factory=dict)
    in_shape: tuple = ()
    num_classes: int = 10
    checkpoints: tuple = ()  # ((step, path), ...) sorted by step
    normalize: tuple | None = None  # ((mean per channel), (std per channel)) after scaling to [0, 1]
    epochs: tuple = ()  # ((step, epoch), ...): each checkpoint's fractional epoch (a step not here: its own number)

    def __post_init__(self):
        if self.normalize:  # JSON lists or numpy arrays -> ((mean, ...), (std, ...)) of floats
            mean, std = self.normalize
            object.__setattr__(self, "normalize", (tuple(float(v) for v in mean), tuple(float(v) for v in std)))
        elif self.normalize is not None:
            object.__setattr__(self, "normalize", None)
        object.__setattr__(self, "epochs", tuple((int(s), float(e)) for s, e in self.epochs))

    def epoch_of(self, step: int) -> float:
        """The fractional epoch of the checkpoint at `step` (its own number where the step is not known)."""
        return dict(self.epochs).get(int(step), float(step))

    def select(self, *, steps=None, epochs=None) -> list[tuple[int, str]]:
        """[(step, path)] of the checkpoints asked for by step and/or by epoch (None: all), in step order.

        Both select exactly: an epoch asked for must be a checkpoint's epoch (a log-spaced run has few whole
        epochs; ask for its checkpoints by step). A ConfigError lists what there is."""
        if steps is None and epochs is None:
            return [(int(s), str(p)) for s, p in self.checkpoints]
        have = {int(s): str(p) for s, p in self.checkpoints}
        want = set(int(s) for s in steps or ())
        by_epoch = {self.epoch_of(s): s for s in have}
        missing_e = [e for e in epochs or () if float(e) not in by_epoch]
        missing_s = sorted(want - set(have))
        if missing_e or missing_s:
            asked = [f"epoch {e:g}" for e in missing_e] + [f"step {s}" for s in missing_s]
            there = ", ".join(f"{s} (epoch {self.epoch_of(s):.3g})" for s in sorted(have))
            raise ConfigError(f"no checkpoint at {', '.join(asked)}; the checkpoints are at steps {there}; choose "
                              f"among them with --steps (or --epochs for their whole epochs)")
        want |= {by_epoch[float(e)] for e in epochs or ()}
        return [(s, p) for s, p in sorted(have.items()) if s in want]

    def load_model(self, path: str | os.PathLike, device: str = "cpu"):
        """The network at checkpoint `path`, in eval mode, on `device`."""
        if self.kind == "run":
            model, _ = load_run_model(path, device=device)
        elif self.kind == "spec":
            model = build_model(self.model, in_shape=tuple(self.in_shape), num_classes=self.num_classes,
                                **dict(self.model_args))
            load_weights(model, path)
            model = model.to(device)
        else:
            raise ConfigError(f"unknown model source kind {self.kind!r}")
        return model.eval()

    def build(self):
        """The network this source describes, untrained (for its layer names and structure)."""
        if self.kind == "run":
            return build_run_model(load_run_checkpoint(self.checkpoints[0][1])["config"])
        return build_model(self.model, in_shape=tuple(self.in_shape), num_classes=self.num_classes,
                           **dict(self.model_args))

    def network(self) -> dict:
        """The source without its checkpoints: what the network is, whichever checkpoints it is looked at."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoints", "epochs")}

    def to_dict(self, root: Path | None = None) -> dict:
        d = asdict(self)
        d["checkpoints"] = [[int(s), _relative(p, root)] for s, p in self.checkpoints]
        d["epochs"] = [[int(s), float(e)] for s, e in self.epochs]
        return d

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> "ModelSource":
        d = dict(d)
        d["in_shape"] = tuple(d.get("in_shape") or ())
        d["checkpoints"] = tuple((int(s), _absolute(p, root)) for s, p in d.get("checkpoints", ()))
        d["epochs"] = tuple((int(s), float(e)) for s, e in d.get("epochs", ()))
        return cls(**d)


def _relative(p: str | os.PathLike, root: Path | None) -> str:
    p = Path(p)
    if root is not None:
        try:
            return str(p.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(p.resolve()) if p.exists() else str(p)


def _absolute(p: str, root: Path | None) -> str:
    q = Path(p)
    return str(q if q.is_absolute() or root is None else (Path(root) / q))


def default_chain(source: ModelSource, layers) -> list[str]:
    """The analysed layers that lie on the network's main path, in forward order (each a function of the one
    before), for the data-processing self-check; [] for a network that does not say (give --chain)."""
    names = getattr(source.build(), "chain_names", None)
    return [l for l in names() if l in set(layers)] if names else []


def relative_to_run(path: str | os.PathLike | None, run_dir: Path) -> str | None:
    """A checkpoint path as written in the folder's tables: relative to the run folder when inside it."""
    return None if path is None else _relative(path, run_dir)


# ------------------------------------------------------------------------------------------------ data
def dataset(spec: dict) -> Dataset:
    """The Dataset of a data spec (`load_dataset` keywords), loaded once per process."""
    return _load_dataset(_freeze(jsonable(spec)))


def _freeze(d: Any) -> Any:
    if isinstance(d, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in d.items()))
    if isinstance(d, list):
        return tuple(_freeze(v) for v in d)
    return d


@lru_cache(maxsize=2)
def _load_dataset(frozen_spec: tuple) -> Dataset:
    return load_dataset(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in frozen_spec})


def open_source(run_dir: str | os.PathLike, spec: dict | None = None) -> tuple[ModelSource, Dataset]:
    """(ModelSource, Dataset) of an analysed run folder, from its source.json and analysis.json (or `spec`, the data
    spec of an analysis.json the caller has read already)."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run.source.exists() or not run.pinned.exists():
        raise UserError(f"{run_dir} holds no analysis (no source.json/analysis.json); run `ibprobe run` or "
                        f"`ibprobe analyze` first")
    try:
        source = ModelSource.from_dict(read_json(run.source), run_dir)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{run.source} is damaged ({type(e).__name__}); rerun the `ibprobe run` or "
                        f"`ibprobe analyze` command that made {run_dir} to write it again") from None
    if spec is not None:
        return source, dataset(spec)
    try:
        spec = read_json(run.pinned)["dataset"]
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{run.pinned} is damaged ({type(e).__name__}); analyse into a new --out "
                        f"folder, or delete it (and the folder's decoders/ and analysis/) to start over") from None
    return source, dataset(spec)


def dataset_spec(name: str | None = None, *, data_root=None, images=None, labels=None,
                 levels: int | None = None, images_key: str | None = None, labels_key: str | None = None) -> dict:
    """The `load_dataset(**spec)` keywords for a named data set or user arrays (absolute paths)."""
    if name and images:
        raise ConfigError("give either --dataset NAME or --images X.npy, not both")
    if images_key is not None and not images:
        raise ConfigError("--images-key goes with --images X.npz")
    if labels_key is not None and not labels:
        raise ConfigError("--labels-key goes with --labels Y.npz")
    if images:
        if levels is None:
            raise ConfigError("--images needs --levels L, the number of intensity levels (256 for 8-bit images)")
        spec = {"name": "npy", "images_path": str(Path(images).expanduser().resolve()), "levels": int(levels)}
        if labels:
            spec["labels_path"] = str(Path(labels).expanduser().resolve())
        spec.update({k: v for k, v in (("images_key", images_key), ("labels_key", labels_key)) if v is not None})
        return spec
    if labels:
        raise ConfigError("--labels goes with --images; a named --dataset brings its own labels")
    if not name:
        raise ConfigError("say which images to use: --dataset NAME, or --images X.npy [--labels Y.npy] --levels L")
    spec: dict[str, Any] = {"name": name}
    if data_root is not None:
        spec["data_root"] = str(Path(data_root).expanduser().resolve())
    if levels is not None:
        spec["levels"] = int(levels)
    return spec


def check_dataset(ds: Dataset) -> None:
    """Images the decoders can model and a split that leaves at least 2 train and 2 test images."""
    try:
        check_images(ds.images, ds.levels)
    except DecoderError as e:
        raise DataError(str(e)) from None
    if len(ds.labels) != len(ds.images):
        raise DataError(f"{len(ds.labels)} labels for {len(ds.images)} images; give one label per image")
    if len(ds.test_idx) < 2 or len(ds.train_idx) < 2:
        raise DataError(f"{len(ds.images)} images are too few: the split needs at least 2 train and 2 test images")


def parse_normalize(text: str | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """'0.5,0.25' (all channels), 'm1,..,mC,s1,..,sC' or a preset name -> ((mean per channel), (std per channel))."""
    if text is None:
        return None
    t = text.strip().lower()
    if t in NORMALIZE_PRESETS:
        mean, std = NORMALIZE_PRESETS[t]
        if len(mean) != channels:
            raise ConfigError(f"--normalize {t} is for 3-channel images; these have {channels}")
        return tuple(mean), tuple(std)
    try:
        vals = [float(v) for v in t.replace("/", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--normalize {text!r} must be MEAN,STD numbers (or one of "
                          f"{', '.join(NORMALIZE_PRESETS)})") from None
    if len(vals) == 2:
        mean, std = [vals[0]] * channels, [vals[1]] * channels
    elif len(vals) == 2 * channels:
        mean, std = vals[:channels], vals[channels:]
    else:
        raise ConfigError(f"--normalize needs 2 numbers (MEAN,STD) or {2 * channels} (a mean then a std per channel "
                          f"for {channels}-channel images), got {len(vals)}")
    if not all(np.isfinite(vals)) or min(std) <= 0:
        raise ConfigError(f"--normalize {text!r}: values must be finite and every STD > 0")
    return tuple(mean), tuple(std)


def parse_layers(layers) -> tuple[str, ...]:
    """'A,B' or a sequence -> a tuple of distinct layer names whose folders (sanitised names) differ."""
    items = layers.split(",") if isinstance(layers, str) else list(layers)
    out = tuple(dict.fromkeys(str(x).strip() for x in items if str(x).strip()))
    if not out:
        raise ConfigError("--layers is empty; name at least one module path (see `ibprobe layers`)")
    folders: dict[str, str] = {}
    for layer in out:
        f = sanitize_name(layer)
        if f in folders:
            raise ConfigError(f"layers {folders[f]!r} and {layer!r} would share the folder decoders/{f}")
        folders[f] = layer
    return out


# ------------------------------------------------------------------------------------------------ data side
SIDES = ("heldout", "train")
HELDOUT_MIN = 5000  # held-out images that can carry the decoders alone (CIFAR-10 test: 10,000; digits: 359)
DECODER_TEST_FRACTION = 0.2  # of the chosen side; the decoders hold out 10% of the rest for validation


def resolve_side(ds: Dataset, requested: str = "auto") -> str:
    """The side of the network's training split the decoders and the probe use: "heldout" (images the network
    never saw) where it holds at least HELDOUT_MIN images, else "train". User arrays (`npy`) are one side as a
    whole, held out unless said otherwise."""
    if requested not in ("auto", *SIDES):
        raise ConfigError(f"--decoder-data must be auto, heldout or train, got {requested!r}")
    if requested != "auto":
        return requested
    return "heldout" if ds.name == "npy" or len(ds.test_idx) >= HELDOUT_MIN else "train"


def side_indices(ds: Dataset, side: str) -> np.ndarray:
    """The images of one side: the network's test split ("heldout") or its training split; all of a user's
    arrays (they are one side, whichever the user says it is)."""
    if ds.name == "npy":
        return np.arange(len(ds.images), dtype=np.int64)
    return np.asarray(ds.test_idx if side == "heldout" else ds.train_idx, dtype=np.int64)


def decoder_split(ds: Dataset, side: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) image indices, both from one side: the decoders and the probe are fitted on `fit` (which each
    fit splits again into train and validation) and scored on `test`. Stratified by label, seeded."""
    pool = side_indices(ds, side)
    fit, test = stratified_split(ds.labels[pool], DECODER_TEST_FRACTION, seed)
    if len(test) < 2 or len(fit) < 4:
        raise DataError(f"the {side} side holds {len(pool)} images, too few to fit decoders on ({len(fit)}) and "
                        f"test them ({len(test)}); need at least 4 and 2")
    return pool[fit], pool[test]


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class Prepared:
    """Everything `run_analysis` needs, validated."""

    source: ModelSource
    dataset_spec: dict
    cfg: AnalysisConfig
    settings: Settings
    dataset: Dataset
    code_shapes: dict  # layer -> activation shape per image


def source_from_run(run_dir: str | os.PathLike) -> tuple[ModelSource, dict]:
    """(ModelSource, data spec) of one of our training runs, from its config.json and checkpoints."""
    conf = load_run_config(run_dir)
    found = run_checkpoints(run_dir)
    source = ModelSource(kind="run", model=conf["model"], model_args=dict(conf.get("model_args") or {}),
                         in_shape=tuple(conf.get("in_shape", ())), num_classes=int(conf.get("num_classes", 10)),
                         checkpoints=tuple((s, str(p)) for s, _, p in found), normalize=conf.get("normalize"),
                         epochs=tuple((s, e) for s, e, _ in found))
    spec = dict(conf.get("dataset_spec") or {"name": conf.get("dataset", "digits")})
    if conf.get("max_train") is not None:  # runs from before the spec carried it
        spec.setdefault("max_train", int(conf["max_train"]))
    return source, spec


def prepare_analysis(*, model: str, checkpoints, dataset_spec: dict, cfg: AnalysisConfig,
                     model_args: dict | None = None, normalize: str | tuple | None = None,
                     download: bool = False) -> Prepared:
    """Validate a bring-your-own-model analysis up front; raises a UserError subclass for anything wrong.

    Loads the data, resolves the settings, builds the model, loads every checkpoint into it (safely, strictly),
    and runs two test images through the last one to check that each layer exists and fires once.
    """
    cfg = AnalysisConfig(**{**asdict(cfg), "layers": parse_layers(cfg.layers)})
    ds, norm = spec_data(dataset_spec, normalize, download)
    settings = cfg.settings(ds.image_shape, ds.levels, resolve_side(ds, cfg.decoder_data))
    decoder_split(ds, settings.decoder_data, settings.seed)  # enough images on that side?
    source, net = spec_source(model, checkpoints, ds, model_args=model_args, normalize=norm)
    code_shapes = probe_layers(net.eval(), ds, cfg.layers, norm, spec=str(model),
                               weights=f"checkpoint {source.checkpoints[-1][1]}")
    if cfg.progress:
        print(f"{describe_sizes(ds)}; {model} with {len(source.checkpoints)} checkpoint(s) (steps "
              f"{', '.join(str(s) for s, _ in source.checkpoints)}); layers "
              + ", ".join(f"{l} {tuple(s)}" for l, s in code_shapes.items()), file=sys.stderr)
    return Prepared(source=source, dataset_spec=dict(dataset_spec), cfg=cfg, settings=settings, dataset=ds,
                    code_shapes=code_shapes)


def spec_data(dataset_spec: dict, normalize: str | tuple | None = None,
              download: bool = False) -> tuple[Dataset, tuple | None]:
    """(checked Dataset, normalisation) of a data spec (downloaded when asked) and a --normalize text or tuple."""
    ds = load_dataset(**dataset_spec, download=True) if download else dataset(dataset_spec)
    check_dataset(ds)
    return ds, parse_normalize(normalize, ds.image_shape[0]) if isinstance(normalize, str) else normalize


def spec_source(model: str, checkpoints, ds: Dataset, *, model_args: dict | None = None,
                normalize: tuple | None = None) -> tuple[ModelSource, Any]:
    """(ModelSource of a model spec and its checkpoints, the model with every checkpoint loaded into it in turn,
    safely and strictly: the last one's weights); num_classes defaults to the data set's."""
    margs = dict(model_args or {})
    num_classes = check_int("--model-arg num_classes", margs.pop("num_classes", ds.num_classes), 1)
    net = build_model(model, in_shape=ds.image_shape, num_classes=num_classes, **margs)
    ckpts = resolve_checkpoints(checkpoints)
    for _, _, path in ckpts:
        load_weights(net, path)
    source = ModelSource(kind="spec", model=str(model), model_args=margs, in_shape=tuple(ds.image_shape),
                         num_classes=num_classes, normalize=normalize,
                         checkpoints=tuple((int(s), str(Path(p).resolve())) for s, _, p in ckpts),
                         epochs=tuple((int(s), float(e)) for s, e, _ in ckpts))
    return source, net


def model_failed(e: Exception, shape: tuple, detail: str = "") -> ConfigError:
    """One line saying that the user's model cannot take images of `shape` (one image's), and why."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return ConfigError(f"the model failed on images of shape {tuple(shape)}{detail}: {type(e).__name__}: {msg}")


def probe_layers(net, ds: Dataset, layers, normalize, spec: str = "", weights: str = "") -> dict:
    """{layer: activation shape per image} from two test images; every layer must exist and fire exactly once.
    `weights`: the checkpoint `net` holds, named when its activations are not finite."""
    check_layers(net, layers, spec=spec)
    x = ds.images[ds.test_idx[:2]]
    try:
        acts = capture(net, x, list(layers), levels=ds.levels, normalize=normalize, batch_size=2, device="cpu")
    except LayerError as e:
        raise LayerError(f"{e} (with the weights of {weights})" if weights else str(e)) from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model cannot take these images: say so in one line
        raise model_failed(e, x.shape[1:], f" (float in [0, 1]{', normalised' if normalize else ''})") from None
    return {l: tuple(acts[l].shape[1:]) for l in layers}
