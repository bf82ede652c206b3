"""What the format writers share: a sink that takes rows of an H x W x C output into an on-disk array in the file's
band order, inside temp files that :class:`~sschsr_deploy.io.hsi.HSIWriter` renames into place on commit.

Rows are written through (``pwrite`` at computed offsets into a temp file whose space was reserved when it was
opened), not into a memory map: a full disk is an error instead of a SIGBUS, and the process does not hold the
output's pages (its memory does not grow with the scene). See :mod:`sschsr_deploy.io.atomic` for the protocol.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.io.metadata import CubeMetadata
from sschsr_deploy.io.space import pwrite_all, reserve_space, space_errors

#: bytes allowed beyond the array's for headers and metadata when checking the free space before a run
HEADER_ALLOWANCE = 1 << 16


class RowSink:
    """One output file being written: :meth:`open` creates its temp file(s) (each path taken from ``temp``, which
    registers it for deletion), :meth:`store` writes rows, :meth:`finish` completes and fsyncs the temp file(s) and
    returns the (temp, target) pairs to rename in that order, :meth:`close` drops open handles (the writer deletes the
    temp files). ``disk_shape`` is the on-disk array's shape: H x W x C for ``layout="hwc"``, C x H x W for ``"chw"``,
    H x C x W for ``"bil"`` (ENVI only). ``metadata`` (already checked against the band count by the writer) is for
    the sink to write in whatever form its format holds.

    The default implementation writes a raw array after a header: :meth:`open` calls :meth:`open_raw` with the header
    bytes; the array starts at ``self.data_offset`` of the file ``self.buffer`` (open as ``self.fd``)."""

    file_dtype: np.dtype

    def __init__(self, path: Path, shape_hwc: tuple[int, int, int], dtype: np.dtype, layout: str, variable: str,
                 temp: Callable[[Path], Path], metadata: CubeMetadata | None = None) -> None:
        h, w, c = shape_hwc
        self.path = path
        self.shape_hwc = shape_hwc
        self.disk_shape = {"hwc": (h, w, c), "chw": (c, h, w), "bil": (h, c, w)}[layout]
        self.metadata = metadata if metadata is not None else CubeMetadata()
        self.dtype = dtype
        self.file_dtype = dtype
        self.layout = layout
        self.variable = variable
        self.temp = temp
        self.arr: Any = None
        self.fd: int | None = None
        self.buffer: Path | None = None
        self.data_offset = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.disk_shape)) * self.dtype.itemsize

    def space_needed(self) -> int:
        """Bytes the output needs on disk while it is written (checked before a run)."""
        return self.nbytes + HEADER_ALLOWANCE

    def open(self) -> None:
        raise NotImplementedError

    def open_raw(self, like: Path, header: bytes = b"", *, existing: bool = False) -> None:
        """Create the temp file for ``like`` (or, ``existing``, open the one a library just wrote at ``self.buffer``),
        reserve header + array bytes, write ``header`` at 0; the array then starts at ``self.data_offset``."""
        if not existing:
            self.buffer = self.temp(like)
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (0 if existing else os.O_CREAT | os.O_EXCL)
        self.fd = os.open(self.buffer, flags, 0o666)
        if not existing:
            self.data_offset = len(header)
        reserve_space(self.fd, self.data_offset + self.nbytes, self.path)
        if header:
            pwrite_all(self.fd, header, 0, self.path)

    def store(self, y0: int, block: np.ndarray) -> None:
        """Rows ``y0 .. y0 + n`` from an n x W x C block (already in the output dtype)."""
        h, w, c = self.shape_hwc
        size = self.file_dtype.itemsize
        data = block.astype(self.file_dtype, copy=False)
        if self.layout == "hwc":
            pwrite_all(self.fd, np.ascontiguousarray(data), self.data_offset + y0 * w * c * size, self.path)
        elif self.layout == "bil":  # each row: its line of every band in turn, so n rows are one contiguous run
            pwrite_all(self.fd, np.ascontiguousarray(data.transpose(0, 2, 1)), self.data_offset + y0 * c * w * size,
                       self.path)
        else:
            bands = np.ascontiguousarray(data.transpose(2, 0, 1))
            for b in range(c):
                pwrite_all(self.fd, bands[b], self.data_offset + (b * h + y0) * w * size, self.path)

    def finish(self) -> list[tuple[Path, Path]]:
        """Complete and fsync the temp file; returns ``[(temp, target)]``."""
        self._close_fd(sync=True)
        return [(self.buffer, self.path)]

    def _close_fd(self, sync: bool) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.arr = None
        with contextlib.suppress(OSError):
            self._close_fd(sync=False)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header ``np.save`` / ``np.lib.format.open_memmap`` write for a C-ordered array (version 1.0, else 2.0
    when the header is too long for 1.0)."""
    import io

    fmt = np.lib.format
    d = {"descr": fmt.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    buf = io.BytesIO()
    try:
        fmt.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        fmt.write_array_header_2_0(buf, d)
    return buf.getvalue()


class BufferedSink(RowSink):
    """For formats that cannot be written in pieces (.npz, MAT v5): rows go to a temp .npy beside the target (written
    through, like :class:`~sschsr_deploy.io.npy.NpySink`) and the whole array is written at commit by
    :meth:`save_whole` (so the output is in memory once, and on disk twice while it is written)."""

    def space_needed(self) -> int:
        return 2 * self.nbytes + HEADER_ALLOWANCE

    def open(self) -> None:
        self.open_raw(self.path.with_name(self.path.name + ".npy"), npy_header(self.dtype, self.disk_shape))

    def finish(self) -> list[tuple[Path, Path]]:
        self._close_fd(sync=False)
        data = np.load(self.buffer, mmap_mode="r")
        final_tmp = self.temp(self.path)
        with space_errors(self.path, self.space_needed()):
            self.save_whole(final_tmp, data)
        del data
        with open(final_tmp, "rb+") as f:
            os.fsync(f.fileno())
        return [(final_tmp, self.path)]

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        """Write the whole array ``data`` (in the on-disk band order) to ``tmp`` in the file's format."""
        raise NotImplementedError
