"""Helpers shared by the checkpoint modules: the path type, tensor coercion and comparison, one-line error causes."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

PathLike = str | os.PathLike

_SHOW = 5  # keys listed per problem kind in messages


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A tensor (detached) or numpy array as a tensor; None for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return None


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` holds exactly ``a``'s values (compared in ``a``'s dtype and on its device; NaN equals NaN)."""
    if a is b:
        return True
    if a.shape != b.shape:
        return False
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    if a.device != b.device:
        b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(a, b))


_TRUNCATION_HINTS = (
    "PytorchStreamReader",
    "zip archive",
    "central directory",
    "Ran out of input",
    "truncated",
    "unexpected end",
    "EOF",
)


def _explain(exc: BaseException) -> str:
    """One line saying what went wrong; torch's own messages can run to a page."""
    message = str(exc).strip()
    if "WeightsUnpickler error:" in message:  # torch's weights-only loader buries the cause after a long preamble
        message = message.split("WeightsUnpickler error:", 1)[1].strip()
    text = message.splitlines()[0] if message else ""
    text = text if len(text) <= 240 else text[:240] + "..."
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, EOFError) or any(h in str(exc) for h in _TRUNCATION_HINTS):
        return f"the file is truncated or corrupt ({detail})"
    return detail
