"""MATLAB files: v5 ``.mat`` (``scipy.io``; a variable read whole, written whole at commit, 2 GiB per variable) and
v7.3 (HDF5 with MATLAB's header in the user block and the column-major axes reversed; read lazily, written by rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _pick_variable
from sschsr_deploy.io.hdf5 import Hdf5Sink, read_dataset
from sschsr_deploy.io.sink import BufferedSink

_MAT73_USERBLOCK = 512


def read_mat5(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A MATLAB v5 file's variable ``variable`` (default: the only 3-D one), loaded."""
    import scipy.io

    try:
        info = {name: (tuple(shape), _MAT_CLASSES.get(cls, "O")) for name, shape, cls in scipy.io.whosmat(path)}
        name = _pick_variable(path, info, variable)
        arr = scipy.io.loadmat(path, variable_names=[name])[name]
    except InputValidationError:
        raise
    except Exception as exc:  # scipy raises many types (OSError, ValueError, TypeError, MatReadError) on bad files
        raise _corrupt(path, "MATLAB v5 .mat", exc) from exc
    return _cube_from_array(np.asarray(arr), path, "mat", name, layout, bands, lazy=False)


_MAT_CLASSES = {
    "double": "f8", "single": "f4", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
    "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8", "logical": "?",
}


def list_mat5(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a MATLAB v5 file's variables."""
    import scipy.io

    return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(path)}


class Mat5Sink(BufferedSink):
    """Writes the whole array as the variable ``variable`` of a MATLAB v5 file at commit (refused from 2 GiB)."""

    def open(self) -> None:
        if self.dtype.itemsize * int(np.prod(self.disk_shape)) >= 2**31:
            raise InputValidationError(
                f"output of {np.prod(self.disk_shape) * self.dtype.itemsize / 2**30:.1f} GiB is too large for a "
                "MATLAB v5 .mat file (2 GiB per variable); use --format mat73 (MATLAB v7.3)"
            )
        super().open()

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        import scipy.io

        scipy.io.savemat(tmp, {self.variable: data}, do_compression=False, appendmat=False)


def read_mat73(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A MATLAB v7.3 file's variable ``variable`` (default: the only 3-D one), lazily (an HDF5 dataset)."""
    return read_dataset(path, variable, layout, bands, "mat73", "MATLAB v7.3 .mat", matlab_order=True)


def _mat73_header() -> bytes:
    """The 128-byte MATLAB header MATLAB writes into the HDF5 user block of a v7.3 file."""
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    head = text.encode("ascii")[:116].ljust(116, b" ")
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"


class Mat73Sink(Hdf5Sink):
    """Writes a MATLAB v7.3 file: an HDF5 dataset with MATLAB's axes reversed, its class attribute and the MATLAB
    header in the user block."""

    userblock = _MAT73_USERBLOCK

    def dataset_shape(self) -> tuple[int, ...]:
        return self.disk_shape[::-1]

    def chunks(self, shape: tuple[int, ...]) -> Any:
        return True

    def open(self) -> None:
        super().open()
        self.arr.attrs["MATLAB_class"] = np.bytes_(
            {"f4": "single", "f8": "double", "u1": "uint8", "u2": "uint16", "i2": "int16"}.get(
                self.dtype.str[1:], "single"
            )
        )

    def store(self, y0: int, block: np.ndarray) -> None:
        n = block.shape[0]
        # MATLAB's column-major array = the reversed axes in HDF5
        if self.layout == "hwc":
            self.arr[:, :, y0:y0 + n] = block.transpose(2, 1, 0)
        else:
            self.arr[:, y0:y0 + n, :] = block.transpose(1, 0, 2)

    def finish(self, tmp: Path) -> None:
        with open(tmp, "r+b") as f:
            f.write(_mat73_header())
