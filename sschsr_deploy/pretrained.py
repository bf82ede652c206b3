"""Weights that ship inside the package: the ``tiny`` preset trained on generated scenes (see :mod:`.train`).

The official SSC-HSR weights cannot be downloaded by the package; these small weights make the demo, the runtime's
default and every quality check (FP16, tiling, ONNX) run on a network that really super-resolves. Each file comes with a
card (``<name>.card.json``: data, steps, seed, held-out metrics) and its training curves (``<name>.curves.png``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputValidationError
from .limits import check_scale

__all__ = ["SHIPPED", "shipped_card", "shipped_weights"]

#: (preset, scale) -> file stem under ``sschsr_deploy/resources/weights/``; all are 31-band (400-700 nm) models.
SHIPPED: dict[tuple[str, int], str] = {("tiny", 4): "tiny_x4", ("tiny", 8): "tiny_x8"}
SHIPPED_BANDS = 31


def _directory() -> Path:
    return Path(str(resources.files("sschsr_deploy") / "resources" / "weights"))


def shipped_weights(preset: str = "tiny", scale: int = 4, bands: int = SHIPPED_BANDS) -> Path:
    """Path of the shipped safetensors file for ``preset`` at ``scale``; a clear error when none ships."""
    scale = check_scale(scale)
    stem = SHIPPED.get((preset, int(scale)))
    if stem is None or bands != SHIPPED_BANDS:
        have = ", ".join(f"{p} x{s}" for p, s in SHIPPED) or "none"
        raise InputValidationError(
            f"no shipped weights for preset {preset!r} at x{scale} with {bands} bands (shipped: {have}, "
            f"{SHIPPED_BANDS} bands); pass --weights with your own file (an official checkpoint needs the 'official' "
            "preset)"
        )
    path = _directory() / f"{stem}.safetensors"
    if not path.is_file():
        raise InputValidationError(f"shipped weights {path} are missing from this installation (reinstall the package)")
    return path


def shipped_card(preset: str = "tiny", scale: int = 4) -> dict[str, Any]:
    """The card (training data, steps, seed, metrics) of the shipped weights for ``preset`` at ``scale``."""
    path = shipped_weights(preset, scale).with_suffix("").with_suffix(".card.json")
    return json.loads(path.read_text())
