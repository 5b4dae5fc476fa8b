"""One decoder fit on one bundle of data (FitData), paired or not, scored in bits per image.

With paired fitting (ibprobe.config.Settings.paired) a first q0(x) is fitted; every other decoder, the reference
q(x), the label decoder q(x|y) and each q(x|h), continues from q0's best weights (`Start`) with the same budget and
batch order, its code path starting at zero, so each pair differs only in what the code adds. A fit scores its
decoder on the test images and on its own validation images, and, for a mixture reference (ibprobe.estimators.
reference), the mixture's NLLs too. With a `workdir` the fit is a resumable, idempotent job (ibprobe.jobs writes
the folders): a folder holding result.json is read, not refitted.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from decoders import DecoderError, PixelCNNPP, evaluate_nll_bits
from decoders import fitting as decoder_fitting
from decoders import load_decoder, save_decoder
from decoders.errors import FitStateError
from ibprobe.config import Runtime, Settings
from ibprobe.errors import DataError, JobFailed
from ibprobe.estimators.reference import label_mixture
from ibprobe.rundir import paths
from ibprobe.rundir.files import atomic_np_save, atomic_write_json
from ibprobe.rundir.pinning import load_nll, read_job_file

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class FitData:
    """The data of one decoder fit: the images it is fitted on (the fit splits them again into train and validation
    by its seed) with their codes, and the test images it is scored on with theirs. Codes None: unconditional."""

    images: np.ndarray
    codes: np.ndarray | None
    test_images: np.ndarray
    test_codes: np.ndarray | None


@dataclass(frozen=True)
class Mixture:
    """A mixture reference sum_j w_j q(x | h_j) of a conditional decoder: its codes [M, *code_shape] and weights [M]
    (None: 1/M each). With `labels` (one per fit image, codes one-hot [K, K]) the weights are the label frequencies
    of the fit's training rows, so the validation images, which choose the reference, do not set its prior."""

    codes: np.ndarray
    weights: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class Start:
    """The q0(x) a paired fit continues from: its weights (a model or a decoder.pt) and its best epoch, whose
    weights those are."""

    weights: PixelCNNPP | Path
    best_epoch: int


@dataclass
class Fitted:
    """A fitted decoder's per-image NLLs in bits: on the test images, on its validation images and, for a mixture
    reference, the mixture's on both. `model` is None when the fit was read from its folder."""

    test_nll: np.ndarray
    val_nll: np.ndarray
    info: dict
    mix_test_nll: np.ndarray | None = None
    mix_val_nll: np.ndarray | None = None
    model: PixelCNNPP | None = None


_OUTPUTS = {"test_nll": paths.nll_file("test"), "val_nll": paths.nll_file("val"),  # field -> file
            "mix_test_nll": paths.nll_file("test", mixture=True), "mix_val_nll": paths.nll_file("val", mixture=True)}


def fit_decoder(settings: Settings, runtime: Runtime, role: str, data: FitData, *, q0: Start | None = None,
                repeat: int = 0, mixture: int | Mixture | None = None, workdir: Path | None = None, desc: str = "",
                inputs: dict | None = None) -> Fitted:
    """Fit one decoder of an analysis on `data` and score it (bits per image).

    role: "q0" (paired fitting's start), "reference" (q(x)), "labels" (q(x|y)) or "conditional" (q(x|h)). With
    paired settings, every role but q0 starts from `q0` and continues its learning-rate schedule; `repeat` r > 0
    fits with another seed (ibprobe.config.Settings.stage_fit). `mixture`: a mixture reference to score too, a
    Mixture or M for M codes drawn from the decoder's training codes (never its validation ones, which choose the
    reference). With `workdir` the fit is resumable and idempotent: a folder holding result.json is read, not
    refitted; a damaged fit_state.pt (its resume point) is dropped and the fit started again. `inputs`: what the fit
    is made from, recorded in its result; `desc` names it in progress and errors.
    """
    if workdir is not None and (workdir / paths.RESULT).exists():
        return Fitted(info=read_job_file(workdir / paths.RESULT),
                      **{k: _load(workdir / f) for k, f in _OUTPUTS.items()})
    if role != "q0" and settings.paired and q0 is None:
        raise ValueError("paired fitting: give the q0 to start from")
    cfg = settings.decoder_for(None if data.codes is None else data.codes.shape[1:])
    stage = settings.stage_fit("q0" if role == "q0" else "q", q0.best_epoch if q0 is not None else None, repeat)
    if role == "conditional" and settings.paired:  # its start, q0, ignores h: a candidate for its best weights
        stage = dataclasses.replace(stage, start_candidate=True)
    fit_cfg = runtime.fit_config(stage)

    def fresh() -> PixelCNNPP:
        torch.manual_seed(fit_cfg.seed)  # weight init
        m = PixelCNNPP(cfg)
        if role != "q0" and settings.paired:
            m.start_from(q0.weights if isinstance(q0.weights, PixelCNNPP) else load_decoder(q0.weights))
        return m

    def fit(m: PixelCNNPP):
        return decoder_fitting.fit(m, data.images, data.codes, fit_cfg, eval_images=data.test_images,
                                   eval_codes=data.test_codes, workdir=workdir, desc=desc)

    try:
        model = fresh()
        try:
            res = fit(model)
        except FitStateError:  # a damaged or foreign resume point: start the fit over
            (workdir / decoder_fitting.STATE_FILE).unlink(missing_ok=True)
            model = fresh()
            res = fit(model)
        out = Fitted(test_nll=np.asarray(res.eval_nll_bits, np.float64), val_nll=res.val_nll_bits, info={},
                     model=model)
        if mixture is not None:
            if isinstance(mixture, int):
                train_rows = np.setdiff1d(np.arange(len(data.images)), res.val_idx)
                mixture = Mixture(code_mixture(_rows(data.codes, train_rows), mixture, settings.seed))
            elif mixture.labels is not None:
                train_rows = np.setdiff1d(np.arange(len(data.images)), res.val_idx)
                mixture = Mixture(*label_mixture(np.asarray(mixture.labels)[train_rows], len(mixture.codes)))
            out.mix_test_nll = mixture_nll_bits(model, data.test_images, mixture.codes, mixture.weights)
            out.mix_val_nll = mixture_nll_bits(model, _rows(data.images, res.val_idx), mixture.codes,
                                               mixture.weights)
    except FloatingPointError as e:
        raise JobFailed(f"{desc or role}: {e}; try a lower fit lr or grad_clip") from e
    except DecoderError as e:
        raise DataError(f"{desc or role}: {e}") from None
    out.info = {"status": "ok", "role": role, "decoder": settings.decoder_id, "curve": res.curve,
                "best_epoch": int(res.best_epoch), "epochs_run": int(res.epochs_run), "epochs": fit_cfg.epochs,
                "stopped_early": bool(res.stopped_early), "patience": int(fit_cfg.patience),
                "min_delta_bits": float(fit_cfg.min_delta), "n_test": int(len(out.test_nll)),
                "h_bits": float(np.mean(out.test_nll)), "mixture": None if mixture is None else len(mixture.codes),
                "inputs": inputs}
    if workdir is not None:
        save_decoder(model, workdir / paths.DECODER, extra={"decoder_id": settings.decoder_id, "desc": desc})
        atomic_write_json(workdir / paths.FIT_LOG, {**out.info, "decoder_config": cfg.to_dict(),
                                                     "fit_config": asdict(fit_cfg)})
        for k, f in _OUTPUTS.items():
            if getattr(out, k) is not None:
                atomic_np_save(workdir / f, getattr(out, k))
        atomic_write_json(workdir / paths.RESULT, out.info)
        if not runtime.keep_fit_state:
            (workdir / decoder_fitting.STATE_FILE).unlink(missing_ok=True)
    return out


def _load(path: Path) -> np.ndarray | None:
    return load_nll(path) if path.exists() else None


def _rows(arr, idx: np.ndarray) -> np.ndarray:
    return np.asarray(arr[np.asarray(idx)])


def mixture_nll_bits(model, images, codes: np.ndarray, weights: np.ndarray | None = None, *,
                     batch_size: int = 256) -> np.ndarray:
    """-log2 sum_j w_j q(x | h_j) per image (bits, float64 [N]) under a conditional decoder `model`.

    codes: [M, *code_shape], the mixture's components; weights: [M] summing to 1 (default 1/M). Costs M passes
    over `images`. Components of weight 0 are skipped.
    """
    codes = np.asarray(codes)
    m = len(codes)
    w = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(images)
    terms = []
    for j in np.flatnonzero(w > 0):
        code = np.broadcast_to(codes[j][None], (n, *codes.shape[1:])).astype(np.float32)  # (N, *code_shape)
        nll = evaluate_nll_bits(model, images, code, batch_size=batch_size)  # (N,) bits
        terms.append(math.log(w[j]) - nll * _LN2)  # ln w_j + ln q(x | h_j)
    lse = torch.logsumexp(torch.from_numpy(np.stack(terms)), dim=0).numpy()  # (N,) nats
    return -lse / _LN2


def code_mixture(codes_train, m: int, seed: int) -> np.ndarray:
    """M codes drawn without replacement (seeded) from a decoder's training codes: [M, *code_shape] float32."""
    n = len(codes_train)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(int(m), n), replace=False))
    return np.asarray(codes_train[pick], dtype=np.float32)
