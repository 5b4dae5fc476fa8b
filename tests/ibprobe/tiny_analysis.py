"""One tiny analysis for the backend tests: digits-quick cut to 2 layers x 2 checkpoints, decoders of 4 filters
fitted on a fifth of the images (test_fraction=0.8), by flags (FLAGS) and in this process (`analyse`), on copies of
one trained network (`trained_copy`); and TINY, a preset of 2 layers x 2 checkpoints of a 400-image digits run for
the pipeline's end-to-end tests."""
from __future__ import annotations

import shutil
from pathlib import Path

from ibprobe.pipeline import run_preset
from ibprobe.presets import Preset

TINY = Preset(
    name="tiny",
    description="test",
    train=dict(dataset="digits", model="resnet", model_args={"widths": (8, 16, 16), "blocks": (1, 1, 1)}, epochs=1,
               checkpoint_epochs=(0, 1), optimizer="adam", lr=3e-3, batch_size=64, max_train=400),
    layers={"classify": ("layer1", "pool")},
    decoder=dict(nr_resnet=1, nr_filters=8, nr_mix=2, dropout=0.0),
    fit=dict(epochs=1, batch_size=64, patience=1),
)

TRAIN = {"epochs": 1, "checkpoint_epochs": (0, 1), "test_fraction": 0.8}
LAYERS = ("layer1", "pool")
DECODER = {"nr_resnet": 1, "nr_filters": 4, "nr_mix": 2, "dropout": 0.0}
FIT = {"epochs": 2, "patience": 2}
FIT_3 = {"epochs": 3, "patience": 3}  # long enough to kill a worker mid-job: its fit_state.pt exists after epoch 1
FLAGS = ["--train", "epochs=1", "checkpoint_epochs=0,1", "test_fraction=0.8", "--layers", ",".join(LAYERS),
         "--decoder", "nr_resnet=1", "nr_filters=4", "nr_mix=2", "dropout=0", "--fit", "epochs=2", "patience=2",
         "--device", "cpu", "--quiet", "--no-figures"]


def analyse(out: Path, backend=None, fit=FIT) -> Path:
    """The tiny digits-quick analysis of FLAGS into `out` (training is skipped when `out` holds the run)."""
    run_preset("digits-quick", out, train_overrides=TRAIN, layers=LAYERS, decoder=DECODER, fit=fit, device="cpu",
               jobs=1, progress=False, figures=False, backend=backend)
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
