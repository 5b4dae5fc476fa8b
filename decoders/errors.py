"""Errors a caller of `decoders` can fix: bad configs, bad inputs, unreadable files, a workdir holding another
fit, weights that do not fit. All are ValueError subclasses, so plain `except ValueError` still catches them;
a program built on this package (ibprobe) maps `DecoderError` to its own user errors and lets every other
exception keep its traceback."""
from __future__ import annotations


class DecoderError(ValueError):
    """Base class: something the caller passed or pointed at is wrong. The message says what to do."""


class DecoderConfigError(DecoderError):
    """An invalid DecoderConfig or FitConfig field."""


class DecoderInputError(DecoderError):
    """Images or codes of the wrong shape, dtype or range, or too few of them."""


class DecoderFileError(DecoderError):
    """A decoder file is unreadable, of another format, or does not match its own config."""


class FitStateError(DecoderError):
    """A fit's workdir holds an unreadable fit state, or one of a different configuration."""


class IncompatibleWeightsError(DecoderError):
    """Weights to start a decoder from do not fit it (missing names or other shapes)."""
