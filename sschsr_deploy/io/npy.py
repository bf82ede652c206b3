"""NumPy files: ``.npy`` (read as a memory map, written as one in place) and ``.npz`` (a selected member read whole,
written whole at commit).

Metadata: a .npy file has room for none (the pipeline's JSON sidecar carries it); an .npz file holds it as members
beside the cube, named as in :data:`~sschsr_deploy.io.metadata.ATTRIBUTE_NAMES` (0-d / 1-d numeric arrays, string
arrays for text; :func:`~sschsr_deploy.io.metadata.metadata_from_variables`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _pick_variable
from sschsr_deploy.io.metadata import VARIABLE_NAMES, metadata_from_variables, variables_from_metadata
from sschsr_deploy.io.sink import BufferedSink, RowSink, npy_header


def read_npy(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A .npy file as a memory map (``variable`` does not apply). The file must be exactly its header plus the data the
    header describes: a size that differs means a damaged header, and a memory map of it would read shifted data."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy's header parser raises many types (ValueError, SyntaxError, TokenError, …)
        raise _corrupt(path, "npy", exc) from exc
    if not isinstance(arr, np.ndarray):  # np.load opens a zip archive as an NpzFile
        arr.close()
        raise InputValidationError(f"{path} is an .npz archive, not a .npy file; rename it to .npz")
    if isinstance(arr, np.memmap):
        have = path.stat().st_size
        if have != arr.offset + arr.nbytes:
            raise InputValidationError(
                f"cannot read {path} as npy: its header describes {arr.offset + arr.nbytes} bytes "
                f"({arr.shape} {arr.dtype}) but the file has {have} bytes (truncated or corrupt file?)"
            )
    return _cube_from_array(arr, path, "npy", None, layout, bands, lazy=isinstance(arr, np.memmap))


def read_npz(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """The ``variable`` member of an .npz file (default: the only 3-D one), loaded."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile and numpy's header parser raise many types on damaged files
        raise _corrupt(path, "npz", exc) from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputValidationError(f"{path} is a .npy file, not an .npz archive; rename it to .npy")
    try:
        with z:
            shapes = {k: _npz_member_shape(z, k, path) for k in z.files}
            name = _pick_variable(path, shapes, variable)
            arr = z[name]
            values = {}
            for key, (shape, dtype) in shapes.items():
                if key != name and key in VARIABLE_NAMES and len(shape) <= 1 and np.prod(shape) <= _META_MAX \
                        and dtype.kind in "biufU":
                    values[key] = z[key]
    except InputValidationError:
        raise
    except Exception as exc:  # zlib.error, BadZipFile, NotImplementedError (compression), struct.error, …
        raise _corrupt(path, "npz", exc) from exc
    meta = metadata_from_variables(values, str(path))
    return _cube_from_array(arr, path, "npz", name, layout, bands, lazy=False, metadata=meta)


_META_MAX = 1 << 16  # elements of a member read as metadata (band centres of a few hundred bands, text)


def _npz_member_shape(z: Any, key: str, path: Path | str = "the archive") -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of an .npz member from its .npy header, without loading the data; the member's size must be
    its header plus the data the header describes (a damaged header would otherwise allocate what it claims)."""
    fname = key if key in z.zip.namelist() else f"{key}.npy"
    with z.zip.open(fname) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        size = f.tell() + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = z.zip.getinfo(fname).file_size
    if size != have:
        raise InputValidationError(
            f"cannot read member {key!r} of {path} as npz: its header describes "
            f"{size} bytes ({tuple(shape)} {dtype}) but it has {have} bytes (truncated or corrupt file?)"
        )
    return tuple(shape), dtype


def list_npz(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an .npz file's arrays (read from their headers)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: _npz_member_shape(z, k, path)[0] for k in z.files}
    except InputValidationError:
        raise
    except Exception as exc:
        raise _corrupt(path, "npz", exc) from exc


class NpySink(RowSink):
    """Writes a .npy file in place of the target: the header ``np.save`` writes, then the rows written through."""

    def open(self) -> None:
        self.open_raw(self.path, npy_header(self.dtype, self.disk_shape))


class NpzSink(BufferedSink):
    """Writes the whole array as the one member ``variable`` of an .npz file at commit."""

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        members = {k: (np.asarray(v, dtype=str) if isinstance(v, list) else np.asarray(v))
                   for k, v in variables_from_metadata(self.metadata).items() if k != self.variable}
        with open(tmp, "wb") as f:
            np.savez(f, **members, **{self.variable: data})
