"""What :mod:`sschsr_deploy.cli` and its command modules (:mod:`sschsr_deploy.infer_command`) share: the program
name, the exit statuses, the usage error and the runtime options. A module of its own so that the commands need not
import the entry point that imports them."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "PROG", "ArgumentError",
           "add_runtime_arguments", "tile_arg"]

PROG = "sschsr-deploy"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # SIGTERM / SIGHUP: 128 + signal (143 / 129)


class ArgumentError(Exception):
    """argparse reported a usage error (raised instead of exiting, so ``main`` can return a status)."""


def tile_arg(value: str) -> int | tuple[int, int] | str | None:
    """``--tile``: the sizes reworded messages suggest (128, 128x96, auto, whole)."""
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("none", "whole", "0"):
        return None
    try:
        if "x" in value.lower():
            h, w = (int(v) for v in value.lower().split("x"))
            return h if h == w else (h, w)
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, HxW, 'auto' or 'whole'; got {value!r}") from None


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """The tiling, device and progress options of the commands that run a pipeline (``infer``, ``demo``)."""
    from sschsr_deploy.runtime.planner import DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_TILE

    p.add_argument("--tile", type=tile_arg, default=DEFAULT_TILE,
                   help=f"window side in HR px (≥128, multiple of 8), HxW, 'auto' or 'whole' (default "
                        f"{DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                   help=f"blending overlap in px, multiple of 8 (default {DEFAULT_OVERLAP})")
    p.add_argument("--margin", type=int, default=DEFAULT_MARGIN,
                   help=f"discarded context per interior window side, px (default {DEFAULT_MARGIN})")
    p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
