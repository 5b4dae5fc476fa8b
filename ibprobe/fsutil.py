"""Files and folders of a run: atomic writes, JSON, names on disk, and locks.

Every write goes through `decoders.io.atomic_write` (a temp file beside the target, then `os.replace`), so a
reader never sees a partial file and a kill leaves the old file or the new one. Every writer takes the path first.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from decoders.io import atomic_torch_save, atomic_write, cpu_state, jsonable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_np_save",
           "atomic_torch_save", "cpu_state", "jsonable", "read_json", "sanitize_name", "epoch_dirname", "try_lock"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def atomic_np_save(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


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


@contextlib.contextmanager
def try_lock(path: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block; yields False (without waiting) if another process has it.

    The kernel drops the lock when its process dies, so a holder killed with `kill -9` frees it at once. flock is
    local to one machine (and to file systems that honour it).
    """
    path = Path(path)
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
