"""Blend overlapping tile outputs into one image: raised-cosine weights, fp32 accumulation, one division per pixel.

:class:`StreamingBlender` keeps only a band of rows as tall as one window: windows arrive in the plan's raster order,
so when a window starting at row ``y0`` arrives, every row above ``y0`` has received all its contributions. Those rows
are divided by their accumulated weight (once) and handed to a sink in blocks of about :data:`EMIT_BYTES`, which
writes them out (an in-memory array, a file written through, an HDF5 dataset). Memory is therefore
``(C + 1) x tile_h x padded_width`` float32, independent of the image height. The normalisation makes the effective
weights sum to one everywhere, including the borders and corners and around the shifted last window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from sschsr_deploy.runtime.planner import TilePlan, Window

__all__ = ["RowSink", "StreamingBlender", "blend"]

#: Receives finished rows: ``sink(y0, block)`` with ``block`` float32 C x n x width (already cropped to the image).
RowSink = Callable[[int, np.ndarray], None]


#: Largest block of finished rows handed to the sink at once (the normalised rows, the writer's contiguous copy and
#: the finiteness mask are each about this size; emitting a whole band at once cost ~3 x 50 MB at 4096 px wide).
EMIT_BYTES = 8 << 20


class StreamingBlender:
    """Accumulate weighted window outputs (C x tile_h x tile_w each) and emit finished rows to ``sink``."""

    def __init__(self, plan: TilePlan, channels: int, sink: RowSink) -> None:
        self.plan = plan
        self.channels = int(channels)
        self.sink = sink
        self._band = plan.tile_h
        self._acc = np.zeros((self.channels, self._band, plan.padded_width), dtype=np.float32)
        self._wsum = np.zeros((self._band, plan.padded_width), dtype=np.float32)
        self._base = 0  # padded-image row held in buffer row 0
        self._last_index = -1
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def _weight(self, window: Window) -> np.ndarray:
        key = (window.y0, window.x0)
        if key not in self._weights:
            wy, wx = self.plan.weights(window)
            self._weights[key] = np.outer(wy, wx).astype(np.float32)
        return self._weights.pop(key)

    def add(self, window: Window, tile: np.ndarray) -> None:
        """Accumulate one window's output (C x h x w, any float dtype; converted to float32)."""
        if window.index <= self._last_index:
            raise ValueError(f"windows must arrive in plan order; got {window.index} after {self._last_index}")
        if tile.shape != (self.channels, window.h, window.w):
            raise ValueError(f"tile of shape {tile.shape} does not match window {window} with {self.channels} channels")
        self._last_index = window.index
        self._flush_until(window.y0)
        w = self._weight(window)
        r0 = window.y0 - self._base
        acc = self._acc[:, r0:r0 + window.h, window.x0:window.x1]
        acc += np.asarray(tile, dtype=np.float32) * w
        self._wsum[r0:r0 + window.h, window.x0:window.x1] += w

    def add_many(self, items: Iterable[tuple[Window, np.ndarray]]) -> None:
        for window, tile in items:
            self.add(window, tile)

    def _flush_until(self, y: int) -> None:
        """Normalise rows ``base .. y`` (all contributions received) and send the ones inside the image to the sink."""
        n = y - self._base
        if n <= 0:
            return
        wsum = self._wsum[:n]
        if not np.all(wsum > 0):
            bad = np.argwhere(wsum <= 0)[0]
            raise RuntimeError(f"pixel ({self._base + bad[0]}, {bad[1]}) received no weight: the tile plan has a gap")
        h, w = self.plan.height, self.plan.width
        rows = min(n, h - self._base)
        if rows > 0:  # in chunks of about EMIT_BYTES: the sink's temporaries stay small however wide the scene
            step = max(1, EMIT_BYTES // (4 * self.channels * w))
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                self.sink(self._base + r0, self._acc[:, r0:r1, :w] / wsum[None, r0:r1, :w])
        keep = self._band - n
        if keep > 0:
            self._acc[:, :keep] = self._acc[:, n:]
            self._wsum[:keep] = self._wsum[n:]
        self._acc[:, max(keep, 0):] = 0.0
        self._wsum[max(keep, 0):] = 0.0
        self._base = y

    def finish(self) -> None:
        """Emit the remaining rows. Call once after the last window."""
        if self._last_index != len(self.plan) - 1:
            raise RuntimeError(f"blender finished after {self._last_index + 1} of {len(self.plan)} windows")
        self._flush_until(self.plan.padded_height)


def blend(plan: TilePlan, tiles: Iterable[np.ndarray], channels: int) -> np.ndarray:
    """Blend the plan's window outputs (in plan order) into a C x H x W float32 array (convenience for tests)."""
    out = np.empty((channels, plan.height, plan.width), dtype=np.float32)

    def sink(y0: int, block: np.ndarray) -> None:
        out[:, y0:y0 + block.shape[1]] = block

    blender = StreamingBlender(plan, channels, sink)
    for window, tile in zip(plan.windows, tiles, strict=True):
        blender.add(window, tile)
    blender.finish()
    return out
