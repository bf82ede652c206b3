"""HDF5 files (``.h5``/``.hdf5``): a dataset read lazily through ``h5py``, written as a row-chunked dataset. MATLAB
v7.3 files are HDF5 too (:mod:`sschsr_deploy.io.mat` builds on this module)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sschsr_deploy.io.atomic import commit
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _pick_variable
from sschsr_deploy.io.sink import RowSink


def _h5_datasets(f: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    import h5py

    found: dict[str, tuple[tuple[int, ...], Any]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith("#"):
            found[name] = (tuple(obj.shape), obj.dtype)

    f.visititems(visit)
    return found


def read_dataset(path: Path, variable: str | None, layout: str | None, bands: int | None, fmt: str = "h5",
                 what: str = "HDF5", matlab_order: bool = False) -> HSICube:
    """The dataset ``variable`` of an HDF5 file (default: the only 3-D one), lazily: the cube keeps the file open until
    closed. ``fmt`` and ``what`` name the format in the cube and in errors; ``matlab_order``: the dataset holds MATLAB's
    column-major array (its axes reversed)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _corrupt(path, what, exc) from exc
    try:
        name = _pick_variable(path, _h5_datasets(f), variable)
        ds = f[name]
        return _cube_from_array(ds, path, fmt, name, layout, bands, lazy=True, closer=f.close,
                                matlab_order=matlab_order)
    except BaseException:
        f.close()
        raise


def read_h5(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """An HDF5 file's dataset ``variable`` (default: the only 3-D one), lazily."""
    return read_dataset(path, variable, layout, bands)


def list_hdf5(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an HDF5 file's datasets (MATLAB v7.3 files included)."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: s for k, (s, _) in _h5_datasets(f).items()}


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

    def commit(self) -> None:
        self.h5.close()
        self.h5 = None
        self.finish(self.buffer)
        commit(self.buffer, self.path)

    def finish(self, tmp: Path) -> None:
        """Last touches to the closed temp file before it moves into place (none for plain HDF5)."""

    def close(self) -> None:
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
            self.h5 = None
        self.arr = None
