"""Resumable, idempotent jobs with deterministic folders, safe under concurrent processes.

A job is one decoder fit: `(run_dir, layer, epoch)` for a conditional decoder, or the shared unconditional
reference. Its folder is fixed (`job_dir`), its finished result is a file written atomically last
(`row.json`, or `failed.json` when it could not finish), and its fit resumes from its own checkpoint.

Concurrency: each job is claimed with an exclusive `flock` on `<job_dir>/.lock`. The kernel drops the lock when the
process dies, so a job killed with `kill -9` is free to be resumed at once, and two `ibprobe run` processes on the
same folder never fit the same job twice. (flock is local to one machine; on a cluster, give each job to one
worker, e.g. one `ibprobe run --only-job LAYER@EPOCH` per task.)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ibprobe.utils import epoch_dirname, read_json, sanitize_name

UNCONDITIONAL = "_unconditional"
UNCONDITIONAL_INIT = "_unconditional_init"  # q0(x) of paired fitting: both q(x) and every q(x|h) start from it


@dataclass(frozen=True)
class JobSpec:
    """One decoder fit. `layer is None` means the unconditional reference q(x) (or, with `init`, the q0(x) that
    paired fitting starts every decoder from)."""

    layer: str | None
    epoch: int | None = None
    checkpoint: str | None = None
    init: bool = False

    @property
    def key(self) -> str:
        if self.layer is None:
            return UNCONDITIONAL_INIT if self.init else UNCONDITIONAL
        return f"{self.layer}@{self.epoch}"

    def job_dir(self, run_dir: str | os.PathLike) -> Path:
        base = Path(run_dir) / "decoders"
        if self.layer is None:
            return base / (UNCONDITIONAL_INIT if self.init else UNCONDITIONAL)
        return base / sanitize_name(self.layer) / epoch_dirname(self.epoch)


def job_state(job_dir: Path) -> str:
    """'done', 'failed' or 'pending' from the files in a job folder."""
    if (job_dir / "row.json").exists():
        return "done"
    if (job_dir / "failed.json").exists():
        return "failed"
    return "pending"


def read_result(job_dir: Path) -> dict | None:
    for name in ("row.json", "failed.json"):
        p = job_dir / name
        if p.exists():
            return read_json(p)
    return None


@contextlib.contextmanager
def try_lock(path: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block; yields False (without waiting) if another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
