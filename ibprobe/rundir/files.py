"""Files and folders of a run: atomic writes, JSON, names on disk, and locks.

Every write goes through `decoders.io.atomic_write` (a temp file beside the target, then `os.replace`), so a
reader never sees a partial file and a kill leaves the old file or the new one. Every writer takes the path first.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from decoders.io import atomic_torch_save, atomic_write, cpu_state, jsonable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_np_save",
           "atomic_torch_save", "cpu_state", "jsonable", "read_json", "try_lock",
           "file_digest", "remove_stale_temps", "NpyStream"]


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


@contextlib.contextmanager
def try_lock(path: Path, *, wait: bool = False, shared: bool = False) -> Iterator[bool]:
    """Hold an exclusive (or, with `shared`, a shared) flock on `path` for the block; yields False (without
    waiting) if another process holds a conflicting one.

    The kernel drops the lock when its process dies, so a holder killed with `kill -9` frees it at once. flock is
    local to one machine (and to file systems that honour it). Two opens of one file conflict even in one process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            if not shared:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """A digest of a file's content (blake2b, 32 hex digits), what a result records it was made from.

    Cached per process by (path, inode, size, mtime, ctime), so asking again for an unchanged file costs one stat.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def remove_stale_temps(folder: str | os.PathLike, names: tuple[str, ...] | None = None, *,
                       recursive: bool = False) -> int:
    """Remove the temp files atomic writers leave behind when killed (`.<name>.XXXX.tmp`) in `folder` (and below,
    with `recursive`), only those of the files `names` when given. Returns how many were removed.

    Call it only while holding the lock that every writer of those files holds: a temp file being written by a
    live process must not be taken from under it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        if names is None or any(p.name.startswith(f".{n}.") for n in names):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    return removed


class NpyStream:
    """Streams rows into a float16 .npy at a temp path beside `final` with plain file writes (no growing resident
    mapping); `commit` renames it into place, `abort` (or any failed write or commit) removes it."""

    def __init__(self, final: Path, n: int, row_shape: tuple[int, ...]):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            os.chmod(self.tmp, 0o644)  # mkstemp makes 0600; the store is meant to be shared read-only
            mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float16, shape=(n, *row_shape))
            self.offset = mm.offset
            del mm  # header and (sparse) file size written; rows go through a plain file handle
            self.f = open(self.tmp, "r+b")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        self.row_bytes = int(np.prod(row_shape, dtype=np.int64)) * 2
        self.f.seek(self.offset)
        self.rows = 0
        self.n = n
        self.shape = [n, *row_shape]

    def write(self, a: np.ndarray) -> None:
        try:
            self.f.write(np.ascontiguousarray(a, dtype=np.float16).tobytes())
        except OSError as e:  # a full disk names no file: name the entry
            e.filename = e.filename or str(self.final)
            raise
        self.rows += len(a)

    def commit(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            if self.rows != self.n:
                raise RuntimeError(f"wrote {self.rows} rows, expected {self.n}")
            os.replace(self.tmp, self.final)
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                e.filename = e.filename or str(self.final)
            raise

    def abort(self) -> None:
        try:
            if not self.f.closed:
                self.f.close()
        except OSError:
            pass  # a full disk fails the close's flush too; the temp file goes all the same
        self.tmp.unlink(missing_ok=True)
