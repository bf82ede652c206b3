"""Tile planner: cut an HR image into model-sized windows with overlap, and choose the tile size from a memory budget.

Geometry (per axis; rows and columns are planned independently):

- The image is first padded at the bottom / right by reflection to a multiple of 8 and to at least 128 px
  (:func:`padded_size`); the pipeline crops the result back. The model needs both (RAFT at 1/8 resolution without
  padding, coarsest correlation level ≥ 2 px at 1/64).
- A window is ``tile`` px long (≥ 128, a multiple of 8); when the padded image is not longer than ``tile``, one window
  covers it (whole-image along that axis).
- Windows start at multiples of ``stride = tile - overlap - 2 * margin`` (a multiple of 8, so every origin is aligned
  to the RAFT / VGG / encoder strides); the last window is shifted inward to end at the image edge instead of
  shrinking below the minimum size.
- Blending weight of a window (:func:`axis_weights`): 0 on ``margin`` px of context at each side that has a neighbour
  (pixels the model sees but whose outputs are dropped: the flow, patch-match and convolution border artefacts live
  there), then a raised-cosine ramp over ``overlap`` px, then 1. Sides on the image border get weight 1 up to the edge.
  Neighbouring ramps are complementary (sin² + cos² = 1) where windows sit exactly one stride apart; the blender
  divides by the accumulated weight anyway, so the shifted last window is handled the same way.

Memory: :func:`estimate_forward_bytes` predicts the model's peak working memory for a window (linear activations plus
RAFT's all-pairs correlation pyramid, which is quadratic in the pixel count), and :func:`choose_tile` picks whole-image
mode when the padded image fits the budget, else the largest tile that does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.model.presets import MIN_SIZE, SIZE_MULTIPLE, ModelConfig

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "TilePlan",
    "Window",
    "available_memory",
    "axis_starts",
    "axis_weights",
    "choose_tile",
    "estimate_forward_bytes",
    "padded_size",
    "plan_tiles",
]

log = logging.getLogger(__name__)

#: Default window side. 256 px keeps RAFT's 1/8 grid at 32 x 32 and the overlap overhead moderate.
DEFAULT_TILE = 256
#: Default overlap (ramp length) in px, chosen from the tiled-vs-whole measurement in docs/runtime.md.
DEFAULT_OVERLAP = 32
#: Default zero-weight context at interior window sides, px (docs/runtime.md).
DEFAULT_MARGIN = 8

#: Peak working memory of one forward pass in bytes per HR pixel at batch 1, RAFT's correlation pyramid excluded (it is
#: added analytically). Measured on the CPU as the growth of the peak RSS (VmHWM) during one ``forward`` in
#: ``torch.inference_mode`` (float32, random weights, 2 threads), fitted over 256² … 512² (tiny: 341 MB at 256²,
#: 1304 MB at 512²) and 128² … 256² (official: 243 MB at 128², 748 MB at 256²), rounded up. GPU memory use differs
#: (cuDNN workspaces, caching allocator): on a GPU, measure with ``torch.cuda.max_memory_allocated``.
BYTES_PER_PIXEL = {"tiny": 4_500, "official": 11_000}
#: Fixed working memory of one forward pass (patch-matching chunks, workspace), bytes.
FIXED_BYTES = 96 * 2**20


@dataclass(frozen=True)
class Window:
    """One model window in padded HR coordinates: rows ``y0 .. y0 + h``, columns ``x0 .. x0 + w``."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    h: int
    w: int

    @property
    def y1(self) -> int:
        return self.y0 + self.h

    @property
    def x1(self) -> int:
        return self.x0 + self.w


@dataclass(frozen=True)
class TilePlan:
    """The windows covering an image, and how to weight them.

    ``height`` / ``width``: the image; ``padded_height`` / ``padded_width``: after reflect-padding (the canvas the
    windows live on); ``tile_h`` / ``tile_w``: window size (all windows share it); ``row_starts`` / ``col_starts``:
    window origins; ``overlap`` and ``margin`` as in the module docstring.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_h: int
    tile_w: int
    overlap: int
    margin: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def windows(self) -> list[Window]:
        """All windows in raster order (row by row: the order the streaming blender finishes rows in)."""
        out = []
        for r, y0 in enumerate(self.row_starts):
            for c, x0 in enumerate(self.col_starts):
                out.append(Window(len(out), r, c, y0, x0, self.tile_h, self.tile_w))
        return out

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Window]:
        return iter(self.windows)

    @property
    def whole_image(self) -> bool:
        """True when one window covers the whole (padded) image."""
        return len(self) == 1

    @property
    def padding(self) -> tuple[int, int]:
        """Rows and columns added at the bottom / right by reflection."""
        return self.padded_height - self.height, self.padded_width - self.width

    def weights(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Separable blending weights (rows, columns) of ``window``: float32 vectors of length h and w."""
        wy = axis_weights(window.y0, window.h, self.padded_height, self.overlap, self.margin)
        wx = axis_weights(window.x0, window.w, self.padded_width, self.overlap, self.margin)
        return wy, wx

    def overhead(self) -> float:
        """Computed pixels / image pixels (1.0 = no overlap cost)."""
        return len(self) * self.tile_h * self.tile_w / (self.height * self.width)

    def describe(self) -> dict:
        """JSON-friendly summary (goes into the output's sidecar)."""
        return {
            "image": [self.height, self.width],
            "padded": [self.padded_height, self.padded_width],
            "tile": [self.tile_h, self.tile_w],
            "overlap": self.overlap,
            "margin": self.margin,
            "windows": len(self),
            "grid": [len(self.row_starts), len(self.col_starts)],
            "whole_image": self.whole_image,
            "overhead": round(self.overhead(), 4),
        }


def padded_size(n: int) -> int:
    """Length after padding: the next multiple of 8, and at least 128."""
    if n < 1:
        raise InputValidationError(f"image size must be positive; got {n}")
    return max(MIN_SIZE, -(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def _check_multiple(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputValidationError(f"{name} must be an integer number of pixels; got {value!r}")
    value = int(value)
    if value < minimum:
        raise InputValidationError(f"{name} must be at least {minimum} px; got {value}")
    if value % SIZE_MULTIPLE:
        lo = value // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise InputValidationError(
            f"{name} must be a multiple of {SIZE_MULTIPLE} px (keeps tile origins on the model's 1/8 grid); got "
            f"{value}, use {lo or SIZE_MULTIPLE} or {lo + SIZE_MULTIPLE}"
        )
    return value


def axis_starts(length: int, tile: int, overlap: int, margin: int) -> tuple[int, ...]:
    """Window origins along one padded axis of ``length`` (see the module docstring)."""
    if length <= tile:
        return (0,)
    stride = tile - overlap - 2 * margin
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return tuple(starts)


def axis_weights(start: int, size: int, length: int, overlap: int, margin: int) -> np.ndarray:
    """1-D blending weights of a window ``start .. start + size`` on an axis of ``length`` (float32, all ≥ 0).

    The ramp is ``sin²(π/2 · (i + 0.5) / overlap)`` for ``i = 0 .. overlap - 1``: strictly positive, and two ramps that
    overlap exactly (one stride apart) sum to one.
    """
    w = np.ones(size, dtype=np.float64)
    ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2 if overlap else np.zeros(0)
    lead = np.concatenate([np.zeros(margin), ramp])[:size]
    if start > 0:  # a neighbour before: context, then ramp up
        w[: lead.size] *= lead
    if start + size < length:  # a neighbour after: ramp down, then context
        w[size - lead.size:] *= lead[::-1]
    return w.astype(np.float32)


def plan_tiles(
    height: int,
    width: int,
    tile: int | Sequence[int] | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    margin: int = DEFAULT_MARGIN,
) -> TilePlan:
    """Plan the windows for an ``height`` x ``width`` HR image.

    Args:
        height, width: image size in HR pixels (any size ≥ 1: smaller or non-multiple-of-8 images are padded).
        tile: window side (int or (h, w)), ≥ 128 and a multiple of 8; ``None`` = one window over the whole image.
        overlap: raised-cosine ramp length in px (multiple of 8, may be 0).
        margin: zero-weight context in px at interior window sides (multiple of 8, may be 0).
    """
    ph, pw = padded_size(int(height)), padded_size(int(width))
    overlap = _check_multiple("overlap", overlap)
    margin = _check_multiple("margin", margin)
    if tile is None:
        th, tw = ph, pw
    else:
        if isinstance(tile, int | np.integer) or not isinstance(tile, Sequence) or len(tile) != 2:
            th = tw = tile  # validated below (a non-integer is refused there)
        else:
            th, tw = tile
        th = _check_multiple("tile height", th, MIN_SIZE)
        tw = _check_multiple("tile width", tw, MIN_SIZE)
        th, tw = min(th, ph), min(tw, pw)
    for name, t, n in (("height", th, ph), ("width", tw, pw)):
        if n > t and t - overlap - 2 * margin < SIZE_MULTIPLE:
            raise InputValidationError(
                f"tile {name} {t} leaves no stride for overlap {overlap} + 2 x margin {margin}; use a larger tile or "
                "a smaller overlap / margin (tile - overlap - 2 x margin must be ≥ 8)"
            )
    return TilePlan(
        height=int(height), width=int(width), padded_height=ph, padded_width=pw, tile_h=th, tile_w=tw,
        overlap=overlap, margin=margin, row_starts=axis_starts(ph, th, overlap, margin),
        col_starts=axis_starts(pw, tw, overlap, margin),
    )


# ---------------------------------------------------------------------------------------------------------------------
# memory


def estimate_forward_bytes(config: ModelConfig | str, height: int, width: int, batch: int = 1) -> int:
    """Predicted peak working memory (bytes) of one forward pass over ``batch`` windows of ``height`` x ``width``.

    ``linear`` (measured bytes per HR pixel for the preset; presets not in the table are scaled from ``official`` by
    their feature widths) + RAFT's all-pairs correlation pyramid: (HW/64)² float32 values at level 0, a quarter more
    per coarser level + a fixed workspace. The estimate is for float32; it is meant for choosing tile sizes, not as
    an exact bound.
    """
    if isinstance(config, str):
        from sschsr_deploy.model.presets import get_preset

        name, cfg = config, get_preset(config)
    else:
        cfg = config
        name = next((k for k, v in _presets().items() if v == cfg), None)
    if name in BYTES_PER_PIXEL:
        per_px = BYTES_PER_PIXEL[name]
    else:
        per_px = BYTES_PER_PIXEL["official"] * cfg.feature_widths[-1] / 256
    per_px *= max(1.0, cfg.bands / 31) ** 0.5
    n = (height // 8) * (width // 8)
    levels = cfg.raft.corr_levels
    corr = 4 * n * n * sum(0.25**i for i in range(levels))
    return int(batch * (per_px * height * width + corr) + FIXED_BYTES)


def _presets() -> dict:
    from sschsr_deploy.model.presets import PRESETS

    return PRESETS


def available_memory(device: str = "cpu") -> int:
    """Memory a run may use, bytes: free CUDA memory on a GPU, else MemAvailable from /proc/meminfo (or 4 GiB)."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def choose_tile(
    config: ModelConfig | str,
    height: int,
    width: int,
    budget_bytes: int,
    batch: int = 1,
    max_tile: int = 1024,
) -> int | None:
    """``None`` (whole image) when the padded image fits ``budget_bytes`` at batch 1, else the largest tile that fits.

    The tile is a multiple of 8 between 128 and ``max_tile``; when even 128 px windows do not fit, 128 is returned
    with a warning (the run may then run out of memory).
    """
    ph, pw = padded_size(height), padded_size(width)
    if estimate_forward_bytes(config, ph, pw, 1) <= budget_bytes:
        return None
    best = None
    for t in range(MIN_SIZE, max(MIN_SIZE, max_tile) + 1, SIZE_MULTIPLE):
        if estimate_forward_bytes(config, t, t, batch) <= budget_bytes:
            best = t
        else:
            break
    if best is None:
        log.warning(
            "even 128 px tiles (batch %d) exceed the memory budget of %.2f GiB; trying 128 anyway",
            batch, budget_bytes / 2**30,
        )
        return MIN_SIZE
    return best


def describe_budget(budget_bytes: int) -> str:
    """Human-readable memory size."""
    return f"{budget_bytes / 2**30:.2f} GiB" if budget_bytes >= 2**30 else f"{budget_bytes / 2**20:.0f} MiB"

