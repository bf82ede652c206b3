"""The bounds every entry point checks a model's shape against, in one place: a scale is a positive integer up to
:data:`MAX_SCALE`, a band count a positive integer up to :data:`MAX_BANDS`. Values outside them come from damaged
metadata or a typo (a scale of 0 once surfaced as "no shipped weights at x0"; a band count from a hostile file made the
model builder allocate accordingly)."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import InputValidationError

__all__ = ["MAX_BANDS", "MAX_SCALE", "check_scale"]

#: Largest super-resolution factor accepted anywhere (the official models use 4 and 8).
MAX_SCALE = 64
#: Largest band count a model may be built for (AVIRIS-NG has 425; anything beyond is a damaged file).
MAX_BANDS = 1024


def check_scale(scale: Any, what: str = "scale") -> int:
    """``scale`` as an int, or an :class:`InputValidationError` saying a scale is a positive integer from 1 to
    :data:`MAX_SCALE`. The preprocessing decimates with ``[::scale]``: only integers work (``4.0`` is refused too)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or not 1 <= int(scale) <= MAX_SCALE:
        raise InputValidationError(
            f"{what} must be a positive integer from 1 to {MAX_SCALE} (the model's super-resolution factor, e.g. 4 "
            f"or 8); got {scale!r}"
        )
    return int(scale)
