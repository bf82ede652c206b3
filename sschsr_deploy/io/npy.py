"""NumPy files: ``.npy`` (read as a memory map, written as one in place) and ``.npz`` (a selected member read whole,
written whole at commit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _pick_variable
from sschsr_deploy.io.sink import BufferedSink, RowSink


def read_npy(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A .npy file as a memory map (``variable`` does not apply)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _corrupt(path, "npy", exc) from exc
    return _cube_from_array(arr, path, "npy", None, layout, bands, lazy=isinstance(arr, np.memmap))


def read_npz(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """The ``variable`` member of an .npz file (default: the only 3-D one), loaded."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            shapes = {}
            for k in z.files:
                shapes[k] = _npz_member_shape(z, k)
            name = _pick_variable(path, shapes, variable)
            arr = z[name]
    except InputValidationError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _corrupt(path, "npz", exc) from exc
    return _cube_from_array(arr, path, "npz", name, layout, bands, lazy=False)


def _npz_member_shape(z: Any, key: str) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of an .npz member from its .npy header, without loading the data."""
    fname = key if key.endswith(".npy") else f"{key}.npy"
    with z.zip.open(fname) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


def list_npz(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an .npz file's arrays (read from their headers)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: _npz_member_shape(z, k)[0] for k in z.files}


class NpySink(RowSink):
    """Writes a .npy memory map in place of the target."""

    def open(self) -> None:
        self.buffer = self.temp(self.path)
        self.arr = np.lib.format.open_memmap(self.buffer, mode="w+", dtype=self.dtype, shape=self.disk_shape)


class NpzSink(BufferedSink):
    """Writes the whole array as the one member ``variable`` of an .npz file at commit."""

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{self.variable: data})
