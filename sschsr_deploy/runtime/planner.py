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

Negotiation: :func:`resolve_tile` checks a tile request once against the backend's limits (:class:`TileLimits`) and
the geometry, before any image; :func:`negotiate_plan` turns it into the plan for one image (``"auto"`` from the memory
budget, padding up to an export's minimum window). The pipeline checks tiles nowhere else.
"""

from __future__ import annotations

import dataclasses
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
    "TileLimits",
    "TilePlan",
    "Window",
    "available_memory",
    "axis_starts",
    "axis_weights",
    "choose_tile",
    "estimate_forward_bytes",
    "negotiate_plan",
    "padded_size",
    "plan_tiles",
    "resolve_tile",
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



# ---------------------------------------------------------------------------------------------------------------------
# negotiation: what the caller asks for, what the backend takes, what memory allows -> one checked plan

Bounds = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class TileLimits:
    """What a backend accepts: window sizes within ``bounds`` (``None`` = any valid size), its ``preferred`` window
    (an export's traced tile) and a ``name`` for messages."""

    bounds: Bounds | None = None
    preferred: tuple[int, int] | None = None
    name: str = "the"


def _square(size: Sequence[int]) -> int | tuple[int, int]:
    """``(h, w)`` as an int when square (the common case, and what sidecars have always recorded)."""
    return int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))


def _fmt(tile: object) -> str:
    return f"{tile[0]}x{tile[1]}" if isinstance(tile, tuple | list) else str(tile)


def _clamp(t: Sequence[int], bounds: Bounds) -> int | tuple[int, int]:
    (lo_h, lo_w), (hi_h, hi_w) = bounds
    return _square((min(max(t[0], lo_h), hi_h), min(max(t[1], lo_w), hi_w)))


def resolve_tile(request: object, limits: TileLimits, overlap: int = DEFAULT_OVERLAP,
                 margin: int = DEFAULT_MARGIN) -> int | tuple[int, int] | str | None:
    """The tile setting, checked once, before any image: ``"default"`` becomes the backend's preferred window (or
    256 clamped into its bounds), a tile outside the bounds or a geometry that leaves no stride is refused.

    Returns an int / (h, w), ``None`` (whole image) or ``"auto"`` (decided per image by :func:`negotiate_plan`).
    """
    bounds, preferred = limits.bounds, limits.preferred
    if request == "default":
        if preferred is not None:
            request = _square(preferred)
        else:
            request = DEFAULT_TILE if bounds is None else _clamp((DEFAULT_TILE, DEFAULT_TILE), bounds)
    _check_multiple("overlap", overlap)
    _check_multiple("margin", margin)
    fixed = bounds is not None and bounds[0] == bounds[1]
    if request == "auto":
        if fixed:
            log.info("tile='auto': the exported model runs %dx%d windows only", *bounds[0])
            return _square(bounds[0])
        return "auto"
    if request is None:
        if fixed:
            raise InputValidationError(
                f"whole-image mode (tile=None) needs a model that takes any size, but the {limits.name} model runs "
                f"{_fmt(bounds[0])} windows only: use tile={_fmt(bounds[0])} (or 'auto'), export with "
                "tile_min/tile_max for a dynamic tile size, or use the torch backend"
            )
        return None  # a dynamic-tile export: the image size is checked against the bounds per image
    if isinstance(request, str) or isinstance(request, bool):
        raise InputValidationError(f"tile must be an integer, (h, w), 'auto', 'default' or None; got {request!r}")
    pair = tuple(request) if isinstance(request, tuple | list) else (request, request)
    if len(pair) != 2:
        raise InputValidationError(f"tile must be an integer or (h, w); got {request!r}")
    th = _check_multiple("tile height", pair[0], MIN_SIZE)
    tw = _check_multiple("tile width", pair[1], MIN_SIZE)
    if bounds is not None:
        (lo_h, lo_w), (hi_h, hi_w) = bounds
        if not (lo_h <= th <= hi_h and lo_w <= tw <= hi_w):
            allowed = _fmt(bounds[0]) if fixed else f"{_fmt(bounds[0])} .. {_fmt(bounds[1])}"
            hint = (f"use tile={_fmt(bounds[0])} (or 'auto' / leave the default)" if fixed
                    else f"use a tile within {allowed}")
            raise InputValidationError(
                f"tile {th}x{tw} does not fit the {limits.name} model, which runs {allowed} windows only (fixed at "
                f"export): {hint}, or export the model again for this tile size"
            )
    for name, t in (("height", th), ("width", tw)):
        if t - overlap - 2 * margin < SIZE_MULTIPLE:
            raise InputValidationError(
                f"tile {name} {t} leaves no stride for overlap {overlap} + 2 x margin {margin}; use a larger tile or "
                "a smaller overlap / margin (tile - overlap - 2 x margin must be ≥ 8)"
            )
    return _square((th, tw))


def negotiate_plan(
    height: int,
    width: int,
    tile: int | tuple[int, int] | str | None,
    limits: TileLimits,
    overlap: int = DEFAULT_OVERLAP,
    margin: int = DEFAULT_MARGIN,
    *,
    config: ModelConfig | str | None = None,
    budget: int | None = None,
    batch: int = 1,
) -> TilePlan:
    """The checked plan for one image: ``tile`` from :func:`resolve_tile`; ``"auto"`` picks whole image or the
    largest tile ``budget`` bytes allow (:func:`choose_tile`, 256 without a ``config``) within the backend's bounds;
    an image smaller than an export's minimum (or fixed) window is reflect-padded up to it, and a whole image beyond
    its maximum is refused."""
    bounds = limits.bounds
    if tile == "auto":
        chosen = DEFAULT_TILE if config is None or budget is None else choose_tile(config, height, width, budget,
                                                                                    batch)
        if bounds is not None:  # a dynamic-tile export: stay within its bounds
            (_, _), (hi_h, hi_w) = bounds
            fits = padded_size(height) <= hi_h and padded_size(width) <= hi_w
            if chosen is not None or not fits:
                t = chosen if chosen is not None else max(hi_h, hi_w)
                chosen = _clamp((t, t), bounds)
        if budget is not None:
            log.info("tile='auto' with a budget of %s: %s", describe_budget(budget),
                     "whole image" if chosen is None else f"{_fmt(chosen)} px tiles")
        tile = chosen
    plan = plan_tiles(height, width, tile, overlap, margin)
    if bounds is None:
        return plan
    (lo_h, lo_w), (hi_h, hi_w) = bounds
    if plan.tile_h > hi_h or plan.tile_w > hi_w:
        raise InputValidationError(
            f"windows of {plan.tile_h}x{plan.tile_w} exceed the largest the {limits.name} model takes "
            f"({hi_h}x{hi_w}): use a tile within its bounds instead of whole-image mode"
        )
    changes: dict[str, object] = {}
    if plan.tile_h < lo_h:  # only when the padded image is shorter than the tile: a single row of windows
        changes.update(padded_height=lo_h, tile_h=lo_h, row_starts=(0,))
    if plan.tile_w < lo_w:
        changes.update(padded_width=lo_w, tile_w=lo_w, col_starts=(0,))
    if changes:
        log.info("the %dx%d image is padded to the model's %dx%d windows (reflection; cropped afterwards)",
                 plan.height, plan.width, changes.get("tile_h", plan.tile_h), changes.get("tile_w", plan.tile_w))
        plan = dataclasses.replace(plan, **changes)
    return plan
