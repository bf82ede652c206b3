"""HDF5 files (``.h5``/``.hdf5``): a dataset read lazily through ``h5py``, written as a row-chunked dataset. MATLAB
v7.3 files are HDF5 too (:mod:`sschsr_deploy.io.mat` builds on this module)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import fsync_file
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _pick_variable
from sschsr_deploy.io.sink import HEADER_ALLOWANCE, RowSink
from sschsr_deploy.io.space import reserve_space


def _h5_datasets(f: Any) -> tuple[dict[str, tuple[tuple[int, ...], Any]], dict[str, Any]]:
    """The datasets of an open file: (name -> (shape, dtype), name -> the key h5py opens it by). A name that is not
    UTF-8 (h5py gives it as bytes) is listed with its bad bytes escaped (``\\xff``) and opened by its bytes."""
    import h5py

    found: dict[str, tuple[tuple[int, ...], Any]] = {}
    keys: dict[str, Any] = {}

    def visit(name: str | bytes, obj: Any) -> None:
        text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
        if isinstance(obj, h5py.Dataset) and not text.startswith("#"):
            found[text] = (tuple(obj.shape), obj.dtype)
            keys[text] = name

    f.visititems(visit)
    return found, keys


# what h5py / HDF5 raise on damaged files: OSError mostly, also RuntimeError, KeyError, ValueError, TypeError …
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeError, OverflowError)


def read_dataset(path: Path, variable: str | None, layout: str | None, bands: int | None, fmt: str = "h5",
                 what: str = "HDF5", matlab_order: bool = False) -> HSICube:
    """The dataset ``variable`` of an HDF5 file (default: the only 3-D one), lazily: the cube keeps the file open until
    closed. ``fmt`` and ``what`` name the format in the cube and in errors; ``matlab_order``: the dataset holds MATLAB's
    column-major array (its axes reversed)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except _H5_ERRORS as exc:
        raise _corrupt(path, what, exc) from exc
    try:
        try:
            found, keys = _h5_datasets(f)
            name = _pick_variable(path, found, variable)
            return _cube_from_array(f[keys[name]], path, fmt, name, layout, bands, lazy=True, closer=f.close,
                                    matlab_order=matlab_order)
        except InputValidationError:
            raise
        except _H5_ERRORS as exc:
            raise _corrupt(path, what, exc) from exc
    except BaseException:
        f.close()
        raise


def read_h5(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """An HDF5 file's dataset ``variable`` (default: the only 3-D one), lazily."""
    return read_dataset(path, variable, layout, bands)


def list_hdf5(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an HDF5 file's datasets (MATLAB v7.3 files included)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: s for k, (s, _) in _h5_datasets(f)[0].items()}
    except _H5_ERRORS as exc:
        raise _corrupt(path, "HDF5", exc) from exc


def _trim_to_end_of_data(path: Path) -> None:
    """Cut the space reserved beyond the HDF5 file's end (the superblock's end-of-file address) off a closed file: the
    library truncates to it at close only when it sees a difference. Untouched when the superblock is not understood."""
    import struct

    with open(path, "rb+") as f:
        size = os.fstat(f.fileno()).st_size
        for off in (0, 512, 1024, 2048, 4096):
            f.seek(off)
            head = f.read(48)
            if head[:8] == b"\x89HDF\r\n\x1a\n":
                break
        else:
            return
        version = head[8]
        if version in (0, 1) and head[13] == 8:
            at = 24 + (4 if version == 1 else 0) + 16
        elif version in (2, 3) and head[9] == 8:
            at = 12 + 16
        else:
            return
        end = struct.unpack("<Q", head[at:at + 8])[0]
        if 0 < end < size:
            f.truncate(end)


class Hdf5Sink(RowSink):
    """Writes the dataset ``variable`` of a new HDF5 file (chunked by rows for ``layout="hwc"``)."""

    h5: Any = None
    userblock = 0  # bytes reserved before the HDF5 data (MATLAB v7.3 writes its header there)

    def dataset_shape(self) -> tuple[int, ...]:
        return self.disk_shape

    def chunks(self, shape: tuple[int, ...]) -> Any:
        return (1, shape[1], shape[2]) if self.layout == "hwc" else True

    def open(self) -> None:
        import h5py

        self.buffer = self.temp(self.path)
        shape = self.dataset_shape()
        kwargs = {"userblock_size": self.userblock} if self.userblock else {}
        self.h5 = h5py.File(self.buffer, "w", **kwargs)
        self.arr = self.h5.create_dataset(self.variable, shape=shape, dtype=self.dtype, chunks=self.chunks(shape))
        # Reserve the space under the library: HDF5 writes within it cannot fail (a full disk while HDF5 writes its
        # chunks crashes the process), and at close the library truncates the file to its own end.
        fd = os.open(self.buffer, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            reserve_space(fd, self.space_needed(), self.path)
        finally:
            os.close(fd)

    def store(self, y0: int, block: np.ndarray) -> None:
        n = block.shape[0]
        if self.layout == "hwc":
            self.arr[y0:y0 + n] = block
        else:
            self.arr[:, y0:y0 + n] = block.transpose(2, 0, 1)

    def space_needed(self) -> int:
        """The array plus room for the chunk index and metadata (reserved at open; the library trims the file)."""
        return self.nbytes + max(HEADER_ALLOWANCE, self.nbytes // 50)  # chunk index and metadata

    def finish(self) -> list[tuple[Path, Path]]:
        self.h5.close()
        self.h5 = None
        _trim_to_end_of_data(self.buffer)
        self.finalize_file(self.buffer)
        fsync_file(self.buffer)
        return [(self.buffer, self.path)]

    def finalize_file(self, tmp: Path) -> None:
        """Last touches to the closed temp file before it moves into place (none for plain HDF5)."""

    def close(self) -> None:
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
            self.h5 = None
        self.arr = None
