"""User-facing errors.

Anything a user can cause (bad flags, missing data, a corrupt or hostile checkpoint, an unknown layer)
raises a subclass of `UserError` with a message that says what to do. The CLI prints it as one line and
exits non-zero. Bugs raise ordinary exceptions and keep their traceback.
"""


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
