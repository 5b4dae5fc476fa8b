"""Every path of a run folder, named once.

    runs/<name>/
      config.json, metrics.jsonl            the training run (ibprobe.train)
      checkpoints/step_00000000.pt, last.pt its checkpoints, named by optimizer step (step 0 = the initialisation)
      source.json, analysis.json            the analysed network; the pinned settings, data and inputs
      activations/                          the activation store (ibprobe.capture)
      decoders/jobs.json                    the job index (ibprobe.jobs)
      decoders/<job>/                       one decoder job: decoder.pt, fit_log.json, *_nll_bits.npy, result.json
      analysis/<table>.csv                  the tables (ibprobe.rundir.tables)
      figures/<figure>.{png,pdf,csv}        the figures (ibprobe.report)

A layer's name becomes a folder name only through `sanitize_name`, and a checkpoint's step only through
`step_dirname`, so the same layer and checkpoint always land in the same folder.

A checkpoint is identified by the optimizer step at which it was taken: the one number that orders checkpoints
whatever the schedule (several inside the first epoch, or one per epoch), and an integer, so a folder name. Its
epoch (step / steps per epoch, fractional) travels beside it. Training runs of older versions named checkpoints by
epoch (epoch_0003.pt); `checkpoint_name_key` still reads those names.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# files of one decoder job folder
RESULT = "result.json"  # written last and atomically: the job is done
FAILED = "failed.json"  # the job could not finish (e.g. a NaN loss)
DECODER = "decoder.pt"
FIT_LOG = "fit_log.json"
LOCK = ".lock"  # the job's claim (an flock)
Q0_FOLDER = "_unconditional_init"  # q0(x) of paired fitting, where every other decoder starts

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str) -> str:
    """Turn a layer name (module path) into a safe single folder name.

    Keeps letters, digits, '.', '_' and '-'; everything else becomes '_'. A name made only of dots
    (which would walk up the tree) is prefixed, so the result can never leave its parent folder.
    """
    s = _SAFE.sub("_", str(name)).strip()
    if not s or set(s) <= {"."} or s.startswith("."):
        s = "_" + s
    return s[:200]


def step_dirname(step: int) -> str:
    """The one name for a checkpoint on disk, by its optimizer step: step_00000150 (a checkpoint file adds .pt,
    the activation store and a decoder job use it as a folder)."""
    return f"step_{int(step):08d}"


_STEP_NAME = re.compile(r"^step_(\d+)$")
_EPOCH_NAME = re.compile(r"^epoch_(\d+)$")


def checkpoint_name_key(stem: str) -> tuple[str, int] | None:
    """("step", n) for a name step_n, ("epoch", n) for a name epoch_n (a training run of an older version), else
    None: how a run folder's checkpoint file is keyed by its name alone."""
    for kind, pattern in (("step", _STEP_NAME), ("epoch", _EPOCH_NAME)):
        m = pattern.match(stem)
        if m:
            return kind, int(m.group(1))
    return None


def nll_file(which: str, mixture: bool = False) -> str:
    """A job's per-image NLLs in bits: test_nll_bits.npy or val_nll_bits.npy (mix_... for a mixture reference)."""
    return f"{'mix_' if mixture else ''}{which}_nll_bits.npy"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # training
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """checkpoints/step_XXXXXXXX.pt, the checkpoint taken after `step` optimizer steps."""
        return self.checkpoints / f"{step_dirname(step)}.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    # analysis inputs
    @property
    def source(self) -> Path:
        return self.root / "source.json"

    @property
    def pinned(self) -> Path:
        """analysis.json: the pinned settings, data and inputs."""
        return self.root / "analysis.json"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    @property
    def decoders(self) -> Path:
        return self.root / "decoders"

    @property
    def job_index(self) -> Path:
        return self.decoders / "jobs.json"

    def job(self, folder: str, step: int | None = None, repeat: int = 0) -> Path:
        """A decoder job's folder: decoders/<folder> (a reference's) or decoders/<layer>/step_XXXXXXXX, under
        decoders/_repeat<r>/ for repeat r > 0."""
        base = self.decoders / f"_repeat{int(repeat)}" if repeat else self.decoders
        return base / folder if step is None else base / sanitize_name(folder) / step_dirname(step)

    # outputs
    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def table(self, name: str) -> Path:
        """analysis/<name>.csv, e.g. table("mi")."""
        return self.analysis / f"{name}.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def figure(self, stem: str) -> Path:
        """figures/<stem> (the saver adds .png, .pdf and .csv)."""
        return self.figures / stem
