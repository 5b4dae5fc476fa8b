"""What several test modules share, imported as `tests.helpers`:

- FIXTURES: the folder of user model files (byo_nets.py, memo_nets.py) the bring-your-own-model tests import by spec;
- chi2_critical, chi2_statistic: Pearson's chi-square goodness of fit, for the sampling tests;
- One tiny analysis for the backend tests: digits-quick cut to 2 layers x 2 checkpoints, decoders of 4 filters
  fitted on a fifth of the images (test_fraction=0.8), by flags (FLAGS) and in this process (`analyse`), on copies of
  one trained network (`trained_copy`); and TINY, a preset of 2 layers x 2 checkpoints of a 400-image digits run for
  the pipeline's end-to-end tests. Checkpoints are keyed by step: LAST and TINY_LAST are the steps of their epoch 1.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from ibprobe.config import AnalysisConfig
from ibprobe.pipeline import run_preset
from ibprobe.presets import Preset

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------------------------------------ chi-square
def chi2_critical(df: int, alpha: float = 1e-3) -> float:
    try:
        from scipy.stats import chi2
        return float(chi2.ppf(1.0 - alpha, df))
    except ImportError:  # Wilson-Hilferty, z for alpha = 1e-3
        z = 3.0902
        return df * (1.0 - 2.0 / (9 * df) + z * math.sqrt(2.0 / (9 * df))) ** 3


def chi2_statistic(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson statistic with cells of expected count < 5 merged; returns (statistic, degrees of freedom)."""
    n = counts.sum()
    exp = probs * n
    small = exp < 5
    obs_c, exp_c = list(counts[~small]), list(exp[~small])
    if small.any():
        obs_c.append(counts[small].sum())
        exp_c.append(exp[small].sum())
    obs_c, exp_c = np.array(obs_c, float), np.array(exp_c, float)
    if exp_c[-1] < 5 and len(exp_c) > 1:  # fold a still-small merged cell into the smallest other one
        k = int(np.argmin(exp_c[:-1]))
        obs_c[k] += obs_c[-1]
        exp_c[k] += exp_c[-1]
        obs_c, exp_c = obs_c[:-1], exp_c[:-1]
    return float(((obs_c - exp_c) ** 2 / exp_c).sum()), len(exp_c) - 1


# ------------------------------------------------------------------------------------------------ a tiny analysis
TINY = Preset(
    name="tiny",
    description="test",
    train=dict(dataset="digits", model="resnet", model_args={"widths": (8, 16, 16), "blocks": (1, 1, 1)}, epochs=1,
               checkpoint_epochs=(0, 1), optimizer="adam", lr=3e-3, batch_size=64, max_train=400),
    layers={"classify": ("layer1", "pool")},
    decoder=dict(nr_resnet=1, nr_filters=8, nr_mix=2, dropout=0.0),
    fit=dict(epochs=1, batch_size=64, patience=1),
)

TINY_LAST = 7  # the step of TINY's last checkpoint, epoch 1: 400 training images, 64 a batch

TRAIN = {"epochs": 1, "checkpoint_epochs": (0, 1), "test_fraction": 0.8}
LAST = 6  # the step of the last checkpoint of TRAIN and FLAGS, epoch 1: 359 training images, 64 a batch
LAYERS = ("layer1", "pool")
DECODER = {"nr_resnet": 1, "nr_filters": 4, "nr_mix": 2, "dropout": 0.0}
FIT = {"epochs": 2, "patience": 2}
FIT_3 = {"epochs": 3, "patience": 3}  # long enough to kill a worker mid-job: its fit_state.pt exists after epoch 1
FLAGS = ["--train", "epochs=1", "checkpoint_epochs=0,1", "test_fraction=0.8", "--layers", ",".join(LAYERS),
         "--decoder", "nr_resnet=1", "nr_filters=4", "nr_mix=2", "dropout=0", "--fit", "epochs=2", "patience=2",
         "--device", "cpu", "--quiet", "--no-figures"]


def analyse(out: Path, backend=None, fit=FIT) -> Path:
    """The tiny digits-quick analysis of FLAGS into `out` (training is skipped when `out` holds the run)."""
    request = AnalysisConfig(layers=LAYERS, decoder=DECODER, fit=fit, device="cpu", jobs=1, progress=False)
    run_preset("digits-quick", out, request, train_overrides=TRAIN, figures=False, backend=backend)
    return out / "analysis" / "mi.csv"


def trained_copy(reference: Path, out: Path, refs_from: Path | None = None) -> Path:
    """A folder holding the trained network of `reference` and none of its analysis; with `refs_from`, also that
    folder's activations, pinned settings and finished references, so that only the conditional jobs are left."""
    out.mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(reference / name, out / name)
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    if refs_from is not None:
        shutil.copy(refs_from / "analysis.json", out / "analysis.json")
        shutil.copytree(refs_from / "activations", out / "activations")
        for ref in ("_unconditional_init", "_unconditional"):
            shutil.copytree(refs_from / "decoders" / ref, out / "decoders" / ref,
                            ignore=shutil.ignore_patterns(".lock"))
    return out
