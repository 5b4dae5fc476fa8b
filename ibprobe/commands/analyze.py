"""`ibprobe analyze`: measure I(X;H) and I(Y;H) for your own model and checkpoints, layer by layer.

    ibprobe analyze --model torchvision:resnet18 --checkpoints 'ckpts/*.pt' --layers layer1,layer2,layer4 \
                    --dataset cifar10 --data-root data --out runs/mine

Everything is checked before any long work (checkpoints load safely and fit the model, layers exist and fire once,
the data and the options are valid), so a mistake costs one clear line, not an hour. Outputs, resumable jobs, plots
and the gallery are the same as for `ibprobe run`. `prepare_analysis` + `run_analysis` are the Python API behind it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ibprobe.errors import ConfigError, DataError, LayerError, UserError
from ibprobe.utils import parse_kv, sanitize_name

NORMALIZE_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

EXAMPLE = """examples:
  # a torchvision ResNet-18 trained on CIFAR-10 by your own script, checkpoints ckpts/epoch_*.pt
  ibprobe analyze --model torchvision:resnet18 --checkpoints 'ckpts/epoch_*.pt' \\
      --layers layer1,layer2,layer3,layer4 --dataset cifar10 --data-root data --normalize cifar10 --out runs/r18

  # your own class in ./mynets.py, your own arrays (uint8 [N,C,H,W] or [N,H,W,C], values < levels)
  ibprobe analyze --model mynets:Net --model-arg width=32 --checkpoints run1/*.ckpt --layers conv2,fc1 \\
      --images x.npy --labels y.npy --levels 256 --normalize 0.5,0.25 --out runs/mine

checkpoint formats: ours; a raw state_dict; {'model': sd, ...}; {'state_dict': sd, ...} (Lightning) and
{'model_state_dict': sd}; 'module.'/'model.' prefixes (DDP, Lightning) are stripped. Files are always read with
torch.load(weights_only=True): a file holding pickled Python objects is refused, never executed.
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser(
        "analyze",
        help="measure I(X;H) and I(Y;H) for your own model and checkpoints",
        description="Bring your own model and checkpoints: fit one conditional PixelCNN++ per (checkpoint, layer) "
        "plus one unconditional reference, write DIR/analysis/mi.csv and draw the information plane. The model "
        "sees images as float in [0, 1] at their native size (then --normalize, if given). Rerunning the same "
        "command resumes: finished jobs are kept.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="'resnet' (ours), 'torchvision:NAME' (any torchvision classifier; a first conv for C != 3 "
                   "channels is swapped in, images are not resized) or 'package.module:callable' (or file.py:callable), "
                   "imported from the current folder")
    p.add_argument("--model-arg", action="extend", nargs="+", metavar="K=V",
                   help="keyword argument for the model constructor (repeatable; ints/floats/bools/comma lists parsed); "
                   "num_classes defaults to the data set's class count")
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="GLOB",
                   help="checkpoint files or quoted globs; epoch from the file's 'epoch' key, else the last number "
                   "in its name, else the file order")
    p.add_argument("--layers", required=True, metavar="A,B",
                   help="comma-separated module paths to measure (see `ibprobe layers`)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="a named data set (digits, cifar10, cifar100, svhn, mnist, fashion_mnist, cinic10, folder)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the named data set")
    p.add_argument("--download", action="store_true", help="let torchvision download the named data set into --data-root")
    p.add_argument("--images", default=None, metavar="X.npy", help="your images: integer array [N,C,H,W] (or [N,H,W,C])")
    p.add_argument("--labels", default=None, metavar="Y.npy", help="your labels: integer array [N] (for I(Y;H))")
    p.add_argument("--levels", type=int, default=None, metavar="L",
                   help="intensity levels of --images (256 for 8-bit); with --dataset, re-quantise to L levels")
    p.add_argument("--out", required=True, metavar="DIR", help="analysis folder (created; rerun to resume)")
    p.add_argument("--decoder", action="extend", nargs="+", metavar="K=V",
                   help="override DecoderConfig fields, e.g. nr_resnet=1 nr_filters=32 (repeatable)")
    p.add_argument("--fit", action="extend", nargs="+", metavar="K=V",
                   help="override FitConfig fields, e.g. epochs=20 lr=1e-3 (repeatable)")
    p.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="per-channel normalisation after scaling to [0, 1]: 'MEAN,STD' for all channels, "
                   "'M1,..,MC,S1,..,SC' per channel, or a preset: " + ", ".join(NORMALIZE_PRESETS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--jobs", type=int, default=1, help="decoder jobs at once on this machine (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="skip the I(Y;H) probes")
    p.add_argument("--retry-failed", action="store_true", help="rerun jobs that failed before (e.g. NaN loss)")
    p.add_argument("--no-figures", action="store_true", help="skip the plots and the gallery")
    p.add_argument("--no-gallery", action="store_true",
                   help="draw the plots but skip the gallery (sampling 32x32 images is slow on a CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


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
        raise ConfigError(f"--normalize {text!r} must be MEAN,STD numbers (or one of {', '.join(NORMALIZE_PRESETS)})") from None
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


def dataset_spec_from_args(dataset: str | None, *, data_root=None, images=None, labels=None,
                           levels: int | None = None) -> dict:
    """The `load_dataset(**spec)` keywords for --dataset or --images/--labels/--levels (absolute paths)."""
    if dataset and images:
        raise ConfigError("give either --dataset NAME or --images X.npy, not both")
    if images:
        if levels is None:
            raise ConfigError("--images needs --levels L, the number of intensity levels (256 for 8-bit images)")
        spec = {"name": "npy", "images_path": str(Path(images).expanduser().resolve()), "levels": int(levels)}
        if labels:
            spec["labels_path"] = str(Path(labels).expanduser().resolve())
        return spec
    if labels:
        raise ConfigError("--labels goes with --images; a named --dataset brings its own labels")
    if not dataset:
        raise ConfigError("say which images to use: --dataset NAME, or --images X.npy [--labels Y.npy] --levels L")
    spec: dict[str, Any] = {"name": dataset}
    if data_root is not None:
        spec["data_root"] = str(Path(data_root).expanduser().resolve())
    if levels is not None:
        spec["levels"] = int(levels)
    return spec


def parse_layers(text: str) -> tuple[str, ...]:
    layers = tuple(dict.fromkeys(x.strip() for x in str(text).split(",") if x.strip()))
    if not layers:
        raise ConfigError("--layers is empty; name at least one module path (see `ibprobe layers`)")
    folders: dict[str, str] = {}
    for layer in layers:
        f = sanitize_name(layer)
        if f in folders:
            raise ConfigError(f"layers {folders[f]!r} and {layer!r} would share the folder decoders/{f}")
        folders[f] = layer
    return layers


def check_layers(model, layers, available: list[str], *, spec: str = "") -> None:
    """Every layer must be a tappable module path; the error lists the available ones (top two levels if many)."""
    import difflib

    unknown = [l for l in layers if l not in available]
    if not unknown:
        return
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


@dataclass
class Prepared:
    """Everything `run_analysis` needs, validated."""

    source: Any  # ibprobe.pipeline.ModelSource
    dataset_spec: dict
    cfg: Any  # ibprobe.pipeline.AnalysisConfig
    dataset: Any  # ibprobe.data.Dataset
    code_shapes: dict  # layer -> activation shape per image


def prepare_analysis(
    *, model: str, checkpoints, layers, dataset_spec: dict, model_args: dict | None = None,
    normalize: str | tuple | None = None, decoder: dict | None = None, fit: dict | None = None,
    device: str = "auto", jobs: int = 1, seed: int = 0, probe: bool = True, retry_failed: bool = False,
    progress: bool = True, download: bool = False,
) -> Prepared:
    """Validate a bring-your-own-model analysis up front; raises a UserError subclass for anything wrong.

    Loads the data, builds the model, loads every checkpoint into it (safely, strictly), and runs two test images
    through the last one to check that each layer exists and fires once.
    """
    from ibprobe.checkpoints import load_weights, resolve_checkpoints
    from ibprobe.data import describe_sizes, load_dataset
    from ibprobe.models import build_model
    from ibprobe.pipeline import AnalysisConfig, ModelSource
    from ibprobe.utils import resolve_device

    layers = parse_layers(",".join(layers) if isinstance(layers, (list, tuple)) else layers)
    if int(jobs) < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    resolve_device(device)
    ds = load_dataset(**dataset_spec, download=download) if download else load_dataset(**dataset_spec)
    _check_images(ds)
    in_shape = ds.image_shape
    norm = normalize if normalize is None or isinstance(normalize, tuple) else parse_normalize(normalize, in_shape[0])
    _check_overrides(in_shape, ds.levels, decoder or {}, fit or {}, seed)

    margs = dict(model_args or {})
    num_classes = int(margs.pop("num_classes", ds.num_classes))
    net = build_model(model, in_shape=in_shape, num_classes=num_classes, **margs)
    ckpts = resolve_checkpoints(checkpoints)
    for _, path in ckpts:
        load_weights(net, path)
    net.eval()
    code_shapes = _probe_layers(net, ds, layers, norm, spec=str(model))
    if progress:
        print(f"{describe_sizes(ds)}; {model} with {len(ckpts)} checkpoint(s) (epochs "
              f"{', '.join(str(e) for e, _ in ckpts)}); layers "
              + ", ".join(f"{l} {tuple(s)}" for l, s in code_shapes.items()), file=sys.stderr)
    source = ModelSource(
        kind="spec", model=str(model), model_args=margs, in_shape=tuple(in_shape), num_classes=num_classes,
        checkpoints=tuple((int(e), str(Path(p).resolve())) for e, p in ckpts), normalize=norm,
    )
    cfg = AnalysisConfig(layers=layers, decoder=dict(decoder or {}), fit=dict(fit or {}), device=device,
                         jobs=int(jobs), seed=int(seed), probe=bool(probe), retry_failed=bool(retry_failed),
                         progress=bool(progress))
    return Prepared(source=source, dataset_spec=dict(dataset_spec), cfg=cfg, dataset=ds, code_shapes=code_shapes)


def _check_images(ds) -> None:
    x = ds.images
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(f"images must be uint8 [N,C,H,W]; got {x.dtype} {x.shape}")
    if x.size and int(x.max()) >= ds.levels:
        raise DataError(f"images have values up to {int(x.max())}, but levels={ds.levels}; values must be < levels")
    if len(ds.labels) != len(x):
        raise DataError(f"{len(ds.labels)} labels for {len(x)} images; give one label per image")
    if x.shape[2] % 4 or x.shape[3] % 4:
        raise DataError(f"images are {x.shape[2]}x{x.shape[3]}; the decoders need height and width that are multiples "
                        "of 4: pad or crop them")
    if len(ds.test_idx) < 2 or len(ds.train_idx) < 2:
        raise DataError(f"{len(x)} images are too few: the split needs at least 2 train and 2 test images")


def _check_overrides(in_shape, levels: int, decoder: dict, fit: dict, seed: int) -> None:
    """Unknown or invalid --decoder/--fit fields fail now, not inside the first job."""
    from ibprobe.estimate import default_decoder_config, default_fit_config
    from ibprobe.utils import apply_overrides

    try:
        apply_overrides(default_decoder_config(in_shape, levels, None, "cpu"), decoder, "--decoder")
        apply_overrides(default_fit_config(in_shape, "cpu", seed), fit, "--fit")
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid --decoder/--fit value: {e}") from None


def _probe_layers(net, ds, layers, normalize, spec: str = "") -> dict:
    """Run two test images through the net; every layer must exist and fire exactly once."""
    from ibprobe.taps import capture, tappable_layers

    check_layers(net, layers, tappable_layers(net), spec=spec)
    x = ds.images[ds.test_idx[:2]]
    try:
        acts = capture(net, x, list(layers), levels=ds.levels, normalize=normalize, batch_size=2, device="cpu")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model cannot take these images: say so in one line
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"the model failed on images of shape {tuple(x.shape[1:])} (float in [0, 1]"
                          f"{', normalised' if normalize else ''}): {type(e).__name__}: {msg}") from None
    for layer, a in acts.items():
        if not np.all(np.isfinite(a)):
            raise DataError(f"layer {layer} gives non-finite activations on the test images; check the checkpoints")
    return {l: tuple(acts[l].shape[1:]) for l in layers}


def main(args) -> int:
    from ibprobe.commands.run import draw_figures, print_summary
    from ibprobe.pipeline import run_analysis

    t0 = time.time()
    spec = dataset_spec_from_args(args.dataset, data_root=args.data_root, images=args.images, labels=args.labels,
                                  levels=args.levels)
    prep = prepare_analysis(
        model=args.model, checkpoints=args.checkpoints, layers=args.layers, dataset_spec=spec,
        model_args=parse_kv(args.model_arg, "--model-arg"), normalize=args.normalize,
        decoder=parse_kv(args.decoder, "--decoder"), fit=parse_kv(args.fit, "--fit"), device=args.device,
        jobs=args.jobs, seed=args.seed, probe=not args.no_probe, retry_failed=args.retry_failed,
        progress=not args.quiet, download=args.download,
    )
    out = Path(args.out)
    if not args.quiet:
        print(f"measuring {len(prep.cfg.layers)} layer(s) x {len(prep.source.checkpoints)} checkpoint(s) "
              f"-> {out}/analysis/mi.csv", file=sys.stderr)
    rows = run_analysis(out, prep.source, prep.dataset_spec, prep.cfg)
    written = [out / "source.json", out / "analysis" / "mi.csv"]
    if not args.no_figures:
        written += draw_figures(out, quiet=args.quiet, gallery=not args.no_gallery)
    print_summary(args.model, rows, file=sys.stdout)
    print(f"\nfinished in {time.time() - t0:.0f} s; wrote:")
    for w in written:
        print(f"  {w}")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        print(f"{len(failed)} job(s) failed; see the status/error columns of {out / 'analysis' / 'mi.csv'}",
              file=sys.stderr)
        return 1
    return 0


__all__ = ["prepare_analysis", "Prepared", "parse_normalize", "dataset_spec_from_args", "parse_layers", "check_layers"]
