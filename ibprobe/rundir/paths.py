"""Every path of a run folder, named once.

    runs/<name>/
      config.json, metrics.jsonl            the training run (ibprobe.train)
      checkpoints/epoch_0000.pt, last.pt    its checkpoints
      source.json, analysis.json            the analysed network; the pinned settings, data and inputs
      activations/                          the activation store (ibprobe.capture)
      decoders/jobs.json                    the job index (ibprobe.jobs)
      decoders/<job>/                       one decoder job: decoder.pt, fit_log.json, *_nll_bits.npy, result.json
      analysis/<table>.csv                  the tables (ibprobe.rundir.tables)
      figures/<figure>.{png,pdf,csv}        the figures (ibprobe.report)

A layer's name becomes a folder name only through `sanitize_name`, and a checkpoint's epoch only through
`epoch_dirname`, so the same layer and checkpoint always land in the same folder.
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


def epoch_dirname(epoch: int) -> str:
    """The one name for a checkpoint epoch on disk: epoch_0003."""
    return f"epoch_{int(epoch):04d}"


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

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"{epoch_dirname(epoch)}.pt"

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

    def job(self, folder: str, epoch: int | None = None, repeat: int = 0) -> Path:
        """A decoder job's folder: decoders/<folder> (a reference's) or decoders/<layer>/epoch_XXXX, under
        decoders/_repeat<r>/ for repeat r > 0."""
        base = self.decoders / f"_repeat{int(repeat)}" if repeat else self.decoders
        return base / folder if epoch is None else base / sanitize_name(folder) / epoch_dirname(epoch)

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
