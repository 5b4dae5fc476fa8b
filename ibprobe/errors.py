"""User-facing errors.

Anything a user can cause (bad flags, missing data, a corrupt or hostile checkpoint, an unknown layer)
raises a subclass of `UserError` with a message that says what to do. The CLI prints it as one line and
exits with code 2. Bugs raise ordinary exceptions and keep their traceback.

The file system's own errors (a full disk, a read-only folder, a missing file) stay `OSError`s inside the library,
so that a job is never marked failed for good because the disk was full; the CLI turns them into a `StorageError`
line (`StorageError.from_os`) in one place.
"""
import errno


class UserError(Exception):
    """Base class: an error the user can fix. The message is shown as is."""


class DataError(UserError):
    """Missing, malformed or inconsistent data (images, labels, data folders)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe to load, or does not fit the model."""


class LayerError(UserError):
    """An unknown layer name, or a layer that did not fire exactly once."""


class ConfigError(UserError):
    """An invalid option, preset, model spec or key=value override."""


class JobFailed(UserError):
    """A decoder job that could not finish (e.g. NaN loss); other jobs carry on."""


class StorageError(UserError):
    """The file system refused a read or a write: no space left, a read-only folder, no permission, a missing file."""

    @classmethod
    def from_os(cls, e: OSError) -> "StorageError":
        """One line naming the path and what to do."""
        path = e.filename if e.filename is not None else "a file"
        if e.filename2 is not None:
            path = f"{path} -> {e.filename2}"
        what = e.strerror or type(e).__name__
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space and rerun the command; finished results are kept and partial files removed"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = "make the folder writable, or choose another --out"
        elif e.errno in (errno.EEXIST, errno.ENOTDIR):
            what, hint = "a file stands where a folder is needed", "choose another --out, or move that file"
        elif e.errno == errno.ENOENT:
            hint = "it was removed while in use, or never made; rerun the command"
        else:
            hint = "check the folder and rerun the command"
        return cls(f"{path}: {what}; {hint}")


def one_line(message: object) -> str:
    """A message as one line: newlines (e.g. from a library's multi-line error) become '; '."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "(no message)"


__all__ = ["UserError", "DataError", "CheckpointError", "LayerError", "ConfigError", "JobFailed", "StorageError",
           "one_line"]
