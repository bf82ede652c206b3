"""What the format writers share: a sink that takes rows of an H x W x C output into an on-disk array in the file's
band order, inside temp files that :class:`~sschsr_deploy.io.hsi.HSIWriter` renames into place on commit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.io.atomic import commit


class RowSink:
    """One output file being written: :meth:`open` creates its temp file(s) (each path taken from ``temp``, which
    registers it for deletion), :meth:`store` writes rows, :meth:`commit` finishes the file and moves it into place,
    :meth:`close` drops open handles (the writer deletes the temp files). ``disk_shape`` is the on-disk array's shape:
    H x W x C for ``layout="hwc"``, C x H x W for ``"chw"``. By default :meth:`open` must set ``self.buffer`` (the
    temp file) and ``self.arr`` (a memory map of it), which :meth:`commit` then moves into place."""

    def __init__(self, path: Path, shape_hwc: tuple[int, int, int], dtype: np.dtype, layout: str, variable: str,
                 temp: Callable[[Path], Path]) -> None:
        h, w, c = shape_hwc
        self.path = path
        self.shape_hwc = shape_hwc
        self.disk_shape = (h, w, c) if layout == "hwc" else (c, h, w)
        self.dtype = dtype
        self.layout = layout
        self.variable = variable
        self.temp = temp
        self.arr: Any = None

    def open(self) -> None:
        raise NotImplementedError

    def store(self, y0: int, block: np.ndarray) -> None:
        """Rows ``y0 .. y0 + n`` from an n x W x C block (already in the output dtype)."""
        n = block.shape[0]
        if self.layout == "hwc":
            self.arr[y0:y0 + n] = block
        else:
            self.arr[:, y0:y0 + n] = block.transpose(2, 0, 1)

    def commit(self) -> None:
        """Flush the memory map written in place (``self.buffer``, a temp file) and rename it onto the target."""
        self.arr.flush()
        self.arr = None
        commit(self.buffer, self.path)

    def close(self) -> None:
        self.arr = None


class BufferedSink(RowSink):
    """For formats that cannot be written in pieces (.npz, MAT v5): rows go to a temp .npy memory map beside the target
    and the whole array is written at commit by :meth:`save_whole` (so the output is in memory once)."""

    def open(self) -> None:
        self.buffer = self.temp(self.path.with_name(self.path.name + ".npy"))
        self.arr = np.lib.format.open_memmap(self.buffer, mode="w+", dtype=self.dtype, shape=self.disk_shape)

    def commit(self) -> None:
        self.arr.flush()
        data = np.asarray(self.arr)
        final_tmp = self.temp(self.path)
        self.save_whole(final_tmp, data)
        del data
        self.arr = None
        commit(final_tmp, self.path)

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        """Write the whole array ``data`` (in the on-disk band order) to ``tmp`` in the file's format."""
        raise NotImplementedError
