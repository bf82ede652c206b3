"""Exception types raised on bad input, so callers can tell user errors from bugs."""

from __future__ import annotations


class SSCHSRError(Exception):
    """Base class of every error this package raises on purpose."""


class InputValidationError(SSCHSRError, ValueError):
    """An input array or tensor violates a documented requirement (shape, band count, size, finiteness)."""


class CheckpointError(SSCHSRError, RuntimeError):
    """A checkpoint file is unreadable, truncated, of an unknown layout, or does not match the model."""
