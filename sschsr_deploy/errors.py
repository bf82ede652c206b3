"""Exception types raised on bad input, so callers can tell user errors from bugs."""

from __future__ import annotations


class SSCHSRError(Exception):
    """Base class of every error this package raises on purpose."""


class InputValidationError(SSCHSRError, ValueError):
    """An input array or tensor violates a documented requirement (shape, band count, size, finiteness)."""


class CheckpointError(SSCHSRError, RuntimeError):
    """A checkpoint file is unreadable, truncated, of an unknown layout, or does not match the model."""


class OutputSpaceError(SSCHSRError, OSError):
    """An output does not fit: not enough free space on its file system, or over the file size limit (ulimit -f)."""


class NonFiniteOutputError(SSCHSRError, ValueError):
    """The network produced NaN or infinite values: the output is refused rather than written."""
