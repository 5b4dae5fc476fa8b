"""The flag vocabulary shared by every command, declared once: device, quiet, data source, model, layers, decoder
and fit overrides, training settings, jobs and backends, seed, the other estimators and KID, what a checkpoint
lens looks at, which checkpoints (--epochs, --steps). Also the parsers of `K=V` values and lists, and the two things
every command prints: a table of mi.csv rows (with the stages of phases.csv) and the files it wrote."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ibprobe.backends import BACKENDS, Backend, make_backend
from ibprobe.config import AnalysisConfig, check_int, check_seed, parse_value
from ibprobe.data import DATASET_NAMES
from ibprobe.errors import ConfigError
from ibprobe.estimators.kid import WEIGHTS_FEATURES, KidConfig
from ibprobe.lenses.run import LensTarget, target_from_run, target_from_spec
from ibprobe.models import parse_model_args
from ibprobe.measure.phases import phase_line
from ibprobe.rundir.paths import RunDir
from ibprobe.rundir.sources import NORMALIZE_PRESETS, dataset_spec
from ibprobe.rundir.tables import PHASES, read_table


# ------------------------------------------------------------------------------------------------ types
def count(lo: int = 0) -> Callable[[str], int]:
    """An argparse type: an integer >= lo (argparse reports a bad one in one line, before any work)."""
    def parse(text: str) -> int:
        try:
            v = float(text) if any(c in text for c in ".eE") else int(text)
            return check_int("value", v, lo)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {lo}") from None
    parse.__name__ = f"integer >= {lo}"
    return parse


def seed(text: str) -> int:
    """An argparse type: a seed, an integer in 0..2**63-1."""
    try:
        return check_seed(int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer from 0 to 2**63-1)") from None


def out_dir(text: str) -> str:
    """An argparse type: a folder path, not empty (an empty --out would write into the current folder)."""
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError("the folder must be a non-empty path, e.g. --out runs/mine")
    return text


def folder(text: str) -> str:
    """An argparse type: a folder to read, not empty (an empty path would mean the current folder)."""
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError("the folder must be a non-empty path, e.g. runs/mine")
    return text


# ------------------------------------------------------------------------------------------------ groups
def add_device(p) -> None:
    p.add_argument("--device", default="auto", metavar="DEV", help="auto (default: cuda if present), cpu, cuda or "
                                                                   "cuda:N")


def add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress reports")


def add_seed(p, what: str = "seed for the split, the networks and the decoders", default: int | None = 0) -> None:
    p.add_argument("--seed", type=seed, default=default, help=f"{what} (default {default or 0})")


def add_data_source(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", metavar="NAME", help=f"a named data set: {', '.join(DATASET_NAMES)}")
    g.add_argument("--data-root", type=folder, metavar="DIR",
                   help="folder holding the named data set (default $IBPROBE_DATA or ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download the named data set into "
                                                           "--data-root")
    g.add_argument("--images", metavar="X.npy", help="your images: integer array [N,C,H,W] (or [N,H,W,C], [N,H,W]) in "
                                                     "a .npy file, or in an .npz file")
    g.add_argument("--images-key", metavar="NAME", help="with an .npz --images: the array to read (needed when it "
                                                        "holds several)")
    g.add_argument("--labels", metavar="Y.npy", help="your labels: integer array [N], classes 0..K-1")
    g.add_argument("--labels-key", metavar="NAME", help="with an .npz --labels: the array to read")
    g.add_argument("--levels", type=count(2), metavar="L",
                   help="intensity levels of --images (256 for 8-bit); with --dataset, re-quantise to L levels")


def add_model(p, required: bool = False) -> None:
    p.add_argument("--model", required=required, metavar="SPEC",
                   help="'resnet', 'resnet_ae', 'rir' (ours), 'torchvision:NAME' or 'package.module:callable' (or "
                   "file.py:callable), imported from the current folder")
    p.add_argument("--model-arg", action="extend", nargs="+", metavar="K=V",
                   help="keyword argument of the model constructor, e.g. widths=16,32,64 (repeatable)")


def add_layers(p, required: bool = False) -> None:
    p.add_argument("--layers", required=required, metavar="A,B",
                   help="comma-separated module paths to measure (see `ibprobe layers`)")


def add_analysis(p, jobs_default: int) -> None:
    """Decoder and fit overrides, jobs, probe, retries and resume state: everything an analysis is asked."""
    g = p.add_argument_group("analysis")
    g.add_argument("--decoder", action="extend", nargs="+", metavar="K=V",
                   help="override DecoderConfig fields, e.g. nr_resnet=1 nr_filters=32 (repeatable)")
    g.add_argument("--fit", action="extend", nargs="+", metavar="K=V",
                   help="override FitConfig fields, e.g. epochs=20 lr=1e-3 (repeatable)")
    g.add_argument("--jobs", type=count(0), default=jobs_default,
                   help=f"decoder tasks at once: local worker processes (0: one per CPU core on CPU, 1 on CUDA); "
                   f"ray: the CPUs of a local Ray (0: all); slurm: the array's parallelism (0: no cap) "
                   f"(default {jobs_default})")
    g.add_argument("--no-probe", action="store_true", help="skip the I(Y;H) probes")
    g.add_argument("--retry-failed", action="store_true", help="rerun jobs that failed before (e.g. NaN loss)")
    g.add_argument("--keep-fit-state", action="store_true",
                   help="keep each finished job's fit_state.pt (its optimizer state; about 3x the decoder)")
    g.add_argument("--decoder-data", default="auto", choices=["auto", "heldout", "train"],
                   help="the side of the network's training split whose images the decoders and probes are fitted "
                   "and tested on (default auto: held out where it holds enough images)")
    g.add_argument("--reference", default="best", choices=["best", "plain"],
                   help="the reference for H(X): the best valid density on validation images (default), or the "
                   "plain q(x) as in the paper")
    g.add_argument("--mixture-codes", type=count(0), default=16, metavar="M",
                   help="codes per code-mixture reference; costs M forward passes per scored image (0: none)")
    g.add_argument("--ignorance", default="switch", choices=["switch", "none"],
                   help="optional ignorance: a row whose q(x|h) does not beat the reference on validation images reads "
                   "the reference (switch, the default: I(X;H) = 0), or always its own q(x|h) (none); mi.csv keeps "
                   "the raw value in i_xh_raw_bits")
    g.add_argument("--code-lr", default=None, choices=["trunk", "fresh"],
                   help="the code path of each paired fit: the trunk's continued learning rate (trunk) or its own "
                   "Adam group from the fit's lr (fresh); default: the preset's, else trunk")
    g.add_argument("--repeats", type=count(1), default=1, metavar="K",
                   help="fit every decoder with K seeds and report the spread (i_xh_seed_sd); K times the work")


def add_backend(p) -> None:
    """Who runs the decoder jobs: this machine's processes, a Ray cluster or Slurm arrays (ibprobe.backends)."""
    g = p.add_argument_group("backend (who runs the decoder jobs; see `Running on a cluster` in the README)")
    g.add_argument("--backend", default="local", choices=BACKENDS,
                   help="local: processes on this machine (default); ray: Ray tasks; slurm: Slurm job arrays "
                   "through submitit; none: fit nothing, prepare the folder for `ibprobe run-job`")
    g.add_argument("--jobs-per-task", type=count(1), default=1, metavar="K",
                   help="decoder jobs one after another in one worker or array task (default 1)")
    g.add_argument("--devices", metavar="D1,D2", help="one worker per device, each with its device, e.g. "
                   "cuda:0,cuda:1 (repeat one for two workers on it); with slurm, within each task")
    g.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster, e.g. auto or ray://head:10001 "
                   "(default $RAY_ADDRESS, else a local Ray)")
    g.add_argument("--ray", action="extend", nargs="+", metavar="K=V",
                   help="ray.remote options of each task, e.g. num_gpus=1 num_cpus=4 max_retries=3")
    g.add_argument("--slurm", action="extend", nargs="+", metavar="K=V",
                   help="submitit/Slurm parameters, e.g. partition=gpu gpus_per_node=1 timeout_min=720 account=lab "
                   "(cluster=local runs the arrays on this machine)")


def add_estimators(p) -> None:
    """The binning and KDE baselines (computed beside the decoder estimate) and the KID of decoder samples."""
    g = p.add_argument_group("other estimators")
    g.add_argument("--bins", type=count(1), default=AnalysisConfig.bins, metavar="N",
                   help=f"binning baseline: bins over each layer's observed range (default {AnalysisConfig.bins})")
    g.add_argument("--kde-noise-var", type=float, default=AnalysisConfig.kde_noise_var, metavar="V",
                   help="KDE baseline: variance of the noise added to the codes, in the activations' units squared "
                   f"(default {AnalysisConfig.kde_noise_var})")
    g.add_argument("--no-kid", action="store_true", help="skip the KID of decoder samples (computed with the figures)")
    g.add_argument("--kid-samples", type=count(4), default=None, metavar="N",
                   help=f"KID: test images per decoder, one sample each (default {KidConfig.samples}, or the "
                   "preset's: 2000 for the paper presets, so that subsets hold 1000)")
    g.add_argument("--kid-features", default=None, metavar="SPEC",
                   help="KID features: run (the analysed network's penultimate layer at its last checkpoint, the "
                   f"default) or torchvision:NAME with --kid-weights; --kid-weights alone means {WEIGHTS_FEATURES}")
    g.add_argument("--kid-weights", metavar="PATH", help="local weights of --kid-features (nothing is downloaded)")


def kid_config(args, defaults: Mapping[str, Any] | None = None) -> KidConfig | None:
    """The KidConfig of the add_estimators flags (seeded by --seed), or None with --no-kid. Unset flags take
    `defaults` (a preset's KidConfig fields), then KidConfig's own; without --kid-features the features are the
    run's own network, or WEIGHTS_FEATURES when --kid-weights is given."""
    if args.no_kid:
        return None
    if args.kid_weights and not Path(args.kid_weights).expanduser().is_file():
        raise ConfigError(f"--kid-weights {args.kid_weights}: no such file")
    cfg = dict(defaults or {})
    if args.kid_samples is not None:
        cfg["samples"] = args.kid_samples
    features = args.kid_features or (WEIGHTS_FEATURES if args.kid_weights else cfg.pop("features", "run"))
    return KidConfig(**{**cfg, "seed": args.seed or 0, "features": features, "weights": args.kid_weights})


def add_train(p) -> None:
    p.add_argument("--train", action="extend", nargs="+", metavar="K=V",
                   help="TrainConfig fields, e.g. epochs=8 checkpoint_epochs=0,1,3,8 (or checkpoint_schedule=log:8, "
                   "checkpoint_steps=0,50,100) lr=3e-3 regime=autoencode (repeatable)")


def add_lens_source(p, several_runs: bool = False) -> None:
    """What a checkpoint lens (hessian, complexity) looks at: a training run, or a model spec with checkpoints."""
    g = p.add_argument_group("checkpoints: --run DIR, or --model SPEC --checkpoints GLOB with --dataset/--images")
    g.add_argument("--run", nargs="+" if several_runs else None, type=folder, metavar="DIR",
                   help="training run folder(s) written by `ibprobe train`/`ibprobe run`: their checkpoints and the "
                   "images they trained on; outputs go into the run folder")
    g.add_argument("--checkpoints", nargs="+", metavar="GLOB", help="with --model: checkpoint files or quoted globs")
    add_checkpoint_choice(g)
    g.add_argument("--normalize", metavar="MEAN,STD",
                   help="with --model: per-channel normalisation after scaling to [0, 1] (or " +
                   ", ".join(NORMALIZE_PRESETS) + ")")
    add_model(p)
    add_data_source(p)


def lens_targets(args, other: str = "") -> list[tuple[LensTarget, str]]:
    """[(LensTarget, output folder)] of the add_lens_source flags: one per --run (its own folder, or --out for a
    single run), or the --model spec's (into --out). `other`: what else the command can look at, for the message
    that asks for one."""
    runs = [args.run] if isinstance(args.run, str) else list(args.run or [])
    if runs and (args.model or args.checkpoints or args.dataset or args.images or args.normalize):
        raise ConfigError("--run DIR brings its own model, checkpoints and data: drop --model, --checkpoints, "
                          "--dataset, --images and --normalize, or drop --run")
    if runs:
        return [(target_from_run(r), args.out if args.out and len(runs) == 1 else r) for r in runs]
    if not args.model or not args.checkpoints:
        raise ConfigError(f"say what to look at: {other}--run DIR (one of our training runs), or --model SPEC "
                          "--checkpoints GLOB with --dataset NAME or --images X.npy")
    if not args.out:
        raise ConfigError("--model needs --out DIR, the folder for analysis/ and figures/")
    spec = data_spec(args)
    target = target_from_spec(model=args.model, checkpoints=args.checkpoints, dataset_spec=spec,
                              model_args=model_args(args, args.model), normalize=args.normalize,
                              download=args.download)
    return [(target, args.out)]


def data_spec(args) -> dict:
    """The data spec (`load_dataset` keywords) of the add_data_source flags."""
    return dataset_spec(args.dataset, data_root=args.data_root, images=args.images, labels=args.labels,
                        levels=args.levels, images_key=args.images_key, labels_key=args.labels_key)


def add_figures(p) -> None:
    p.add_argument("--no-figures", action="store_true", help="skip the plots and the gallery")


# ------------------------------------------------------------------------------------------------ values
def analysis_config(args, layers=None) -> AnalysisConfig:
    """The AnalysisConfig of the shared analysis flags (AnalysisConfig checks every value's range)."""
    return AnalysisConfig(layers=tuple(layers or ()), decoder=parse_kv(args.decoder, "--decoder"),
                          fit=parse_kv(args.fit, "--fit"), device=args.device, jobs=args.jobs, seed=args.seed,
                          probe=not args.no_probe, retry_failed=args.retry_failed, progress=not args.quiet,
                          keep_fit_state=args.keep_fit_state, decoder_data=args.decoder_data,
                          reference=args.reference, mixture_codes=args.mixture_codes, repeats=args.repeats,
                          ignorance=args.ignorance, code_lr=args.code_lr,
                          chain=tuple(parse_list(getattr(args, "chain", None)) or ()),
                          bins=getattr(args, "bins", AnalysisConfig.bins),
                          kde_noise_var=getattr(args, "kde_noise_var", AnalysisConfig.kde_noise_var))


def backend(args) -> Backend:
    """The backend of the shared backend flags."""
    return make_backend(args.backend, jobs=args.jobs, jobs_per_task=args.jobs_per_task,
                        devices=parse_list(args.devices) or (), ray_address=args.ray_address,
                        ray=parse_kv(args.ray, "--ray"), slurm=parse_kv(args.slurm, "--slurm"), device=args.device)


def parse_kv(items: Iterable[str] | None, what: str = "option", raw: bool = False) -> dict[str, Any]:
    """Parse ['a=1', 'b=x'] (each item may also hold several space-separated pairs) into a dict; with `raw`, the
    values stay text (for a caller that knows their types)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in str(item).split():
            if "=" not in part:
                raise ConfigError(f"{what} {part!r} is not of the form KEY=VALUE")
            k, v = part.split("=", 1)
            k = k.strip().replace("-", "_")
            if not k:
                raise ConfigError(f"{what} {part!r} has an empty key")
            out[k] = v if raw else parse_value(v)
    return out


def model_args(args, spec: str | None) -> dict[str, Any]:
    """The --model-arg values, each parsed once as the parameter of model `spec` it goes to needs."""
    texts = parse_kv(args.model_arg, "--model-arg", raw=True)
    return parse_model_args(str(spec or "resnet"), texts) if texts else {}


def add_checkpoint_choice(p, what: str = "") -> None:
    """--epochs and --steps: which checkpoints, by epoch or by optimizer step (both exact; default all)."""
    p.add_argument("--epochs", metavar="E,..", help=f"only the checkpoints at these epochs{what}, exactly (default "
                   "all; a log-spaced run has few whole epochs: use --steps)")
    p.add_argument("--steps", metavar="S,..", help=f"only the checkpoints at these optimizer steps{what} (default all)")


def parse_epochs(text: str | None) -> list[float] | None:
    """'0,1,3,10' -> [0, 1, 3, 10] (sorted, unique; an epoch may be fractional: 0.5)."""
    if text is None:
        return None
    try:
        vals = [float(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ConfigError(f"epochs {text!r} must be a comma-separated list of numbers") from None
    if any(not np.isfinite(v) or v < 0 for v in vals):
        raise ConfigError(f"epochs must be finite and >= 0, got {text}")
    return sorted({int(v) if v.is_integer() else v for v in vals})


def parse_steps(text: str | None) -> list[int] | None:
    """'0,150,690' -> [0, 150, 690] (sorted, unique optimizer steps)."""
    if text is None:
        return None
    try:
        vals = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ConfigError(f"steps {text!r} must be a comma-separated list of integers") from None
    if any(v < 0 for v in vals):
        raise ConfigError(f"steps must be >= 0, got {vals}")
    return sorted(set(vals))


def parse_ints(text: str, what: str) -> list[int]:
    """'1..8' (inclusive) or '1,2,4' (or both: '1..3,8') -> a sorted list of distinct integers."""
    out: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("..")
            out.update(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be integers: A..B or A,B,C") from None
    if not out:
        raise ConfigError(f"{what} is empty")
    return sorted(out)


def parse_list(text: str | None) -> list[str] | None:
    """'a, b' -> ['a', 'b']."""
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


# ------------------------------------------------------------------------------------------------ output
def print_summary(title: str, rows: list[dict], file=sys.stdout, run_dir: str | os.PathLike | None = None) -> None:
    """A compact table of mi.csv rows, how many estimates a self-check flagged, and, with `run_dir`, one line per
    layer on its stages (analysis/phases.csv, ibprobe.measure.phases.phase_line)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    side = ok[0].get("decoder_data") if ok else None
    ref = f"; reference {ok[0].get('h_x_ref')}" if ok else ""
    print(f"\n[{title}] I(X;H) and I(Y;H), bits per image (95% CI); decoders on the {side} images{ref}:", file=file)
    print(f"  {'layer':<18} {'step':>7} {'epoch':>6} {'I(X;H)':>8} {'95% CI':>19} {'I(Y;H)':>7}", file=file)
    for r in rows:
        epoch = "" if r.get("epoch") is None else f"{r['epoch']:.3g}"
        where = f"{str(r.get('step')):>7} {epoch:>6}"
        if r.get("status") != "ok":
            print(f"  {str(r.get('layer')):<18} {where}   failed: {r.get('error')}", file=file)
            continue
        iy = "" if r.get("i_yh_bits") is None else f"{r['i_yh_bits']:.2f}"
        ci = f"[{r['i_xh_ci_low']:.1f}, {r['i_xh_ci_high']:.1f}]"
        print(f"  {r['layer']:<18} {where} {r['i_xh_bits']:>8.1f} {ci:>19} {iy:>7}  {r.get('checks') or ''}",
              file=file)
    flagged = [r for r in ok if r.get("checks")]
    kinds = sorted({c for r in flagged for c in r["checks"].split(";")})
    print(f"  {len(flagged)} of {len(ok)} estimates flagged" + (f" ({', '.join(kinds)})" if kinds else "")
          + "; see checks in analysis/mi.csv and README 'Self-checks'", file=file)
    phases = RunDir(run_dir).table(PHASES.name) if run_dir is not None else None
    if phases is not None and phases.is_file():
        print(f"[{title}] stages of I(X;H), Holm-corrected over changes.csv (analysis/phases.csv):", file=file)
        for p in read_table(phases, PHASES):
            print(f"  {phase_line(p)}", file=file)


def print_written(t0: float, written, rows: list[dict], where: str, backend: str = "local") -> int:
    """'finished in N s; wrote: ...'; returns exit code 1 if a job failed (said on stderr), else 0."""
    print(f"\nfinished in {time.time() - t0:.0f} s; wrote:")
    for w in written:
        print(f"  {w}")
    if backend == "none":
        print("prepared for `ibprobe run-job` (--backend none): run the jobs of decoders/jobs.json, the references "
              "first, then rerun this command with another backend to measure and draw", file=sys.stderr)
        return 0
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        print(f"{len(failed)} job(s) failed; see the status/error columns of {where}", file=sys.stderr)
        return 1
    return 0
