"""Hand-written kernels of sschsr_deploy (the Triton ones live in :mod:`.triton`) and small launch helpers they share.

The helpers sit here, in the parent package, so that the kernel modules can import them without an import cycle through
``kernels/triton/__init__.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch

from ..errors import InputValidationError

__all__ = ["GRID_LIMITS", "check_grid", "check_int32_extent", "check_launch_devices", "launch_device",
           "triton_interpreting"]

GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's maximum gridDim.x, .y, .z


def triton_interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` is on, i.e. ``@triton.jit`` kernels defined now run on the CPU interpreter.

    Triton reads the variable when a kernel is *defined* (decorated), so the kernel modules read it once, at import.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def check_launch_devices(op: str, interpreting: bool, *tensors: torch.Tensor | None) -> torch.device:
    """All tensors on one device, and a device the kernels can run on: CUDA, or anything under the interpreter."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    for t in present[1:]:
        if t.device != device:
            raise InputValidationError(f"{op}: all tensors must be on one device, got {device} and {t.device}")
    if device.type != "cuda" and not interpreting:
        raise InputValidationError(
            f"{op}: the Triton kernel needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 before importing "
            "sschsr_deploy.kernels.triton to run it on the CPU interpreter"
        )
    return device


def check_int32_extent(op: str, *tensors: torch.Tensor) -> None:
    """Offsets inside one batch sample must fit int32: the kernels promote only the batch term to int64."""
    for t in tensors:
        extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True))
        if t.numel() and extent >= 2**31:
            raise InputValidationError(
                f"{op}: a tensor of shape {tuple(t.shape)} spans {extent} elements per batch sample, more than the "
                "kernels' int32 indexing allows; split the input into tiles"
            )


def check_grid(op: str, grid: Sequence[int], advice: Sequence[str]) -> None:
    """A grid CUDA can launch: past 65535 programs on axis 1 or 2 the launch fails (the interpreter would run it).

    ``advice[i]`` tells the caller how to shrink axis ``i`` (e.g. "split the batch into several calls").
    """
    for axis, (size, limit) in enumerate(zip(grid, GRID_LIMITS, strict=False)):
        if size > limit:
            raise InputValidationError(
                f"{op}: the launch needs {size} programs on grid axis {axis}, more than CUDA's {limit}; {advice[axis]}"
            )


def launch_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that makes ``device`` current: Triton launches on the current CUDA device, not on the tensors'."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
