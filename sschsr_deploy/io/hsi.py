"""Read and write hyperspectral cubes: .npy/.npz, MATLAB .mat v5 and v7.3, HDF5, ENVI (.hdr + raw) and TIFF.

Reading returns an :class:`HSICube`: a view of the file that reads H x W x C regions on demand. Formats that allow it
are read lazily, so scenes larger than memory can be processed tile by tile:

========== ========================================== =====================================================
format     reader                                     lazy?
========== ========================================== =====================================================
npy        ``np.load(mmap_mode="r")``                 yes (memory map)
npz        ``np.load`` (zip members)                  no: the selected array is loaded
mat (v5)   ``scipy.io.loadmat`` in a child process    no: the selected variable is loaded
mat73      ``h5py`` (MATLAB v7.3 is HDF5)             yes (HDF5 dataset; MATLAB's column-major axes undone)
h5         ``h5py``                                   yes (HDF5 dataset)
envi       header parsed here, data ``np.memmap``     yes (memory map; bsq, bil and bip interleaves)
tiff       ``tifffile.memmap`` / ``tifffile.imread``  yes when uncompressed and contiguous, else loaded
========== ========================================== =====================================================

Every reader fills :attr:`HSICube.metadata` (:class:`~sschsr_deploy.io.metadata.CubeMetadata`: band centres, FWHM,
band names, georeference, nodata) from what its format holds (ENVI header keys, GeoTIFF tags through rasterio, HDF5 /
MAT attributes and named vector variables, .npz members); fields that do not fit the band count are dropped with a
warning. :class:`HSIWriter` writes the ``metadata`` it is given in the same forms (TIFF: a GeoTIFF through rasterio
when there is something GDAL should know; .npy: nothing, the JSON sidecar carries it).

Band order: ENVI's interleave and TIFF's sample axis say it; otherwise it is given (``layout="hwc"|"chw"``) or
detected with :func:`detect_layout` (the axis equal to the model's band count, else a clearly smallest first or last
axis), and an ambiguous shape raises :class:`~sschsr_deploy.errors.InputValidationError` asking for the layout.

Writing goes through :class:`HSIWriter`, which streams rows into a temp file beside the target (written through with
``pwrite`` into a preallocated file for .npy / ENVI / TIFF, HDF5 datasets for .h5 and MAT v7.3) and renames it into
place, with its sidecar, only when complete (see :mod:`sschsr_deploy.io.atomic`). .npz and MAT v5 cannot be written in
pieces: their rows are buffered in a temp .npy and the whole array is written at commit (so these two formats need the
output in memory once and twice its size on disk).

One module per format holds its reader and writer (:mod:`.npy` for npy/npz, :mod:`.hdf5`, :mod:`.mat` for MAT v5 and
v7.3, :mod:`.envi`, :mod:`.tiff`); the cube view and band order are in :mod:`.cube`, the writers' shared row sink in
:mod:`.sink`. This module picks the format (by extension, ``.mat`` files sniffed for v7.3) and holds the public entry
points.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io import envi, hdf5, mat, npy, tiff
from sschsr_deploy.io.atomic import (
    _remove_quietly,
    check_writable,
    clean_stale_temps,
    commit_files,
    describe_files,
    sidecar_meta,
    sidecar_path,
    temp_path_for,
    write_json_file,
)
from sschsr_deploy.io.cube import LAYOUTS, HSICube, _check_layout, _require_file, _writer_layout, as_cube, detect_layout
from sschsr_deploy.io.metadata import CubeMetadata
from sschsr_deploy.io.signals import deferred_signals, fault_point, terminate_on_signals
from sschsr_deploy.io.sink import RowSink
from sschsr_deploy.io.space import check_space

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "LAYOUTS",
    "HSICube",
    "HSIWriter",
    "as_cube",
    "check_output_space",
    "detect_layout",
    "format_from_path",
    "list_variables",
    "load_hsi",
    "read_hsi",
    "write_hsi",
]

PathLike = str | os.PathLike

FORMATS = ("npy", "npz", "mat", "mat73", "h5", "envi", "tiff")
EXTENSIONS = {
    ".npy": "npy",
    ".npz": "npz",
    ".mat": "mat",
    ".h5": "h5",
    ".hdf5": "h5",
    ".hdr": "envi",
    ".img": "envi",
    ".raw": "envi",
    ".dat": "envi",
    ".bsq": "envi",
    ".bil": "envi",
    ".bip": "envi",
    ".tif": "tiff",
    ".tiff": "tiff",
}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# the reader and the writer's sink of each format
_READERS = {"npy": npy.read_npy, "npz": npy.read_npz, "mat": mat.read_mat5, "mat73": mat.read_mat73,
            "h5": hdf5.read_h5, "envi": envi.read_envi, "tiff": tiff.read_tiff}
_SINKS: dict[str, Callable[..., RowSink]] = {"npy": npy.NpySink, "npz": npy.NpzSink, "mat": mat.Mat5Sink,
                                             "mat73": mat.Mat73Sink, "h5": hdf5.Hdf5Sink, "envi": envi.EnviSink,
                                             "tiff": tiff.tiff_sink}


def format_from_path(path: PathLike, format: str | None = None) -> str:
    """The format name for ``path``: ``format`` when given (validated), else from the extension."""
    if format is not None:
        fmt = format.lower().replace(".", "").replace("-", "")
        fmt = {"tif": "tiff", "hdf5": "h5", "matv73": "mat73", "mat7.3": "mat73", "matv5": "mat"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise InputValidationError(f"unknown hyperspectral format {format!r}; supported: {', '.join(FORMATS)}")
        return fmt
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise InputValidationError(
            f"cannot tell the format of {path}: unknown extension {ext or '(none)'!r}; supported extensions: "
            f"{', '.join(sorted(EXTENSIONS))} (or pass the format explicitly)"
        )
    return EXTENSIONS[ext]


def _is_hdf5(path: Path) -> bool:
    """HDF5 files start with the signature at offset 0 or, with a user block (MAT v7.3: 512 bytes), at 512, 1024, …"""
    try:
        with open(path, "rb") as f:
            for off in (0, 512, 1024, 2048):
                f.seek(off)
                if f.read(8) == _HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


# ---------------------------------------------------------------------------------------------------------------------
# readers


def read_hsi(
    path: PathLike,
    *,
    variable: str | None = None,
    layout: str | None = None,
    bands: int | None = None,
    format: str | None = None,
) -> HSICube:
    """Open a hyperspectral cube file lazily where the format allows (see the module table).

    Args:
        path: the file (for ENVI, the header or the data file).
        variable: array name in .npz / .mat / .h5 files (default: the only 3-D array; otherwise an error lists them).
        layout: ``"hwc"`` or ``"chw"`` when the band order cannot be read from the file; detected when omitted.
        bands: the band count the model expects; helps the band-order detection.
        format: override the extension-based format (one of :data:`FORMATS`; ``mat`` files are sniffed for v7.3).
    """
    p = Path(path)
    fmt = format_from_path(p, format)
    layout = _check_layout(layout)
    if fmt != "envi":
        _require_file(p)
    elif not p.exists():
        raise InputValidationError(f"file not found: {p}")
    if fmt == "mat" and _is_hdf5(p):
        fmt = "mat73"
    elif fmt == "mat73" and not _is_hdf5(p):
        fmt = "mat"
    return _READERS[fmt](p, variable, layout, bands)


def load_hsi(path: PathLike, **kwargs: Any) -> np.ndarray:
    """Read a whole cube into memory as an H x W x C numpy array (keyword arguments as :func:`read_hsi`)."""
    with read_hsi(path, **kwargs) as cube:
        return np.array(cube.read())


def list_variables(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the arrays in an .npz, .mat or .h5 file (for error messages and ``--variable`` help)."""
    p = _require_file(path)
    fmt = format_from_path(p)
    if fmt == "npz":
        return npy.list_npz(p)
    if fmt in ("mat", "mat73", "h5") and _is_hdf5(p):
        return hdf5.list_hdf5(p)
    if fmt == "mat":
        return mat.list_mat5(p)
    return {}


# ---------------------------------------------------------------------------------------------------------------------
# writer


def _make_sink(path: Path, shape_hwc: tuple[int, int, int], dtype: np.dtype, format: str | None, layout: str,
               variable: str, temp: Any, metadata: CubeMetadata | None = None) -> RowSink:
    """The sink of ``path``'s format; ``metadata`` is checked against the band count first (a clear error)."""
    fmt = format_from_path(path, format)
    meta = (metadata or CubeMetadata()).check(shape_hwc[2], str(path))
    return _SINKS[fmt](path, shape_hwc, dtype, _writer_layout(layout, fmt), variable, temp, meta)


def check_output_space(path: PathLike, shape_hwc: Sequence[int], dtype: Any = np.float32, *, format: str | None = None,
                       layout: str = "hwc", metadata: CubeMetadata | None = None) -> int:
    """Raise :class:`~sschsr_deploy.errors.OutputSpaceError` unless an H x W x C output in ``format`` fits beside
    ``path`` (free space and file size limit); returns the bytes it needs. Cheap: for before a run's compute. Also
    refuses, as :class:`HSIWriter` would, a ``layout`` the format cannot write and ``metadata`` it cannot hold."""
    p = Path(path)
    h, w, c = (int(v) for v in shape_hwc)
    sink = _make_sink(p, (h, w, c), np.dtype(dtype), format, layout, "hsi", temp_path_for, metadata)
    need = sink.space_needed()
    check_space(p, need)
    return need


class HSIWriter:
    """Stream an H x W x C cube into a file, atomically: rows go to a temp file that replaces ``path`` on commit.

    Use as a context manager (commits on success, deletes the temp file on any exception) or call :meth:`commit` /
    :meth:`abort`. ``layout`` is the on-disk band order (``"hwc"`` or ``"chw"``, or ENVI's names ``"bip"`` (= hwc) /
    ``"bsq"`` (= chw); ENVI also ``"bil"``, H x C x W; TIFF: contiguous samples / planar). ``variable`` names the array
    in .npz / .mat / .h5 files. ``metadata`` is written where the format can hold it (see the module docstring); it
    must fit the band count (:meth:`CubeMetadata.check`).

    Opening removes stale temp files of dead runs beside ``path``, checks the free space (``OutputSpaceError``) and
    reserves the file's size. While the writer is open, SIGTERM / SIGHUP raise
    :class:`~sschsr_deploy.io.signals.Terminated` in the main thread if they still have their default action, so the
    temp files are removed (see :mod:`sschsr_deploy.io.atomic`). :meth:`commit` with ``sidecar`` renames the output and
    its JSON sidecar together.
    """

    def __init__(
        self,
        path: PathLike,
        shape_hwc: Sequence[int],
        dtype: Any = np.float32,
        *,
        format: str | None = None,
        layout: str = "hwc",
        variable: str = "hsi",
        metadata: CubeMetadata | None = None,
    ) -> None:
        self.path = check_writable(path)
        self.format = format_from_path(self.path, format)
        self.layout = _writer_layout(layout, self.format)
        self.variable = variable
        self.dtype = np.dtype(dtype)
        h, w, c = (int(s) for s in shape_hwc)
        self.shape_hwc = (h, w, c)
        self.metadata = metadata if metadata is not None else CubeMetadata()
        self._sink = _make_sink(self.path, self.shape_hwc, self.dtype, self.format, self.layout, variable, self._temp,
                                self.metadata)
        self.disk_shape = self._sink.disk_shape
        self._temps: list[Path] = []
        self._pairs: list[tuple[Path, Path]] | None = None
        self._done = False
        self.committed = False  # True once the output (and sidecar) are in place, even if a signal then interrupts
        self._rows_written = 0
        self._signals = contextlib.ExitStack()
        clean_stale_temps(self.path.parent)
        check_space(self.path, self._sink.space_needed())
        try:
            self._signals.enter_context(terminate_on_signals())
            self._sink.open()
        except BaseException:
            self.abort()
            raise

    # -- setup
    def _temp(self, like: Path) -> Path:
        tmp = temp_path_for(like)
        self._temps.append(tmp)
        return tmp

    # -- writing
    def write_rows(self, y0: int, block_hwc: np.ndarray) -> None:
        """Write rows ``y0 .. y0 + n`` (all columns) from an n x W x C block."""
        if self._done or self._pairs is not None:
            raise RuntimeError("HSIWriter is already finished, committed or aborted")
        h, w, c = self.shape_hwc
        block = np.asarray(block_hwc)
        n = block.shape[0]
        if block.shape[1:] != (w, c) or y0 < 0 or y0 + n > h:
            raise ValueError(f"block of shape {block.shape} at row {y0} does not fit an output of {self.shape_hwc}")
        self._sink.store(y0, block.astype(self.dtype, copy=False))
        if not self._rows_written:
            fault_point("writing")
        self._rows_written += n

    def write(self, cube_hwc: np.ndarray) -> None:
        """Write a whole H x W x C cube."""
        self.write_rows(0, cube_hwc)

    # -- finishing
    def finish(self) -> None:
        """Complete and fsync the temp file(s) without moving them into place yet (:meth:`commit` does; it calls this
        when needed). Split out so the time it takes can be measured before the sidecar is made."""
        if self._done:
            raise RuntimeError("HSIWriter is already committed or aborted")
        if self._pairs is not None:
            return
        try:
            self._pairs = self._sink.finish()
        except BaseException:
            self.abort()
            raise

    def commit(self, sidecar: dict[str, Any] | None = None) -> Path:
        """Finish the temp file(s), write the sidecar (when ``sidecar``, the info to record; see
        :func:`~sschsr_deploy.io.atomic.sidecar_meta`) to its own temp file, then rename them all into place, the
        sidecar last; returns the output path. On any failure before the renames, nothing changes under the final
        names (the previous output and sidecar are kept)."""
        self.finish()
        try:
            pairs = list(self._pairs or [])
            side = None
            if sidecar is not None:
                meta = sidecar_meta(self.path, sidecar, describe_files(pairs))
                target = sidecar_path(self.path)
                tmp = self._temp(target)
                write_json_file(tmp, meta)
                side = (tmp, target)
        except BaseException:
            self.abort()
            raise
        try:
            with deferred_signals():  # a signal now is acted on once the pair is in place and the temp files are gone
                try:
                    commit_files(pairs, side)
                except BaseException:
                    self.abort()
                    raise
                self.committed = True
                self._cleanup()
                self._done = True
        finally:
            self._signals.close()  # after the held signals are restored (the held handler is not the one kept)
        return self.path

    def _cleanup(self) -> None:
        for tmp in self._temps:
            _remove_quietly(tmp)
        self._temps = []

    def abort(self) -> None:
        """Drop everything written so far (temp files deleted; the target is left untouched)."""
        self._sink.close()
        self._cleanup()
        self._done = True
        self._signals.close()

    def __enter__(self) -> HSIWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_hsi(
    path: PathLike,
    cube: np.ndarray,
    *,
    layout_in: str = "hwc",
    format: str | None = None,
    layout: str = "hwc",
    variable: str = "hsi",
    dtype: Any = None,
    metadata: CubeMetadata | None = None,
) -> Path:
    """Write a whole cube (``layout_in`` order, H x W x C by default) atomically in ``format`` / on-disk ``layout``
    (see :class:`HSIWriter`), with ``metadata``."""
    arr = np.asarray(cube)
    if arr.ndim != 3:
        raise InputValidationError(f"cube must be 3-D; got shape {arr.shape}")
    if _check_layout(layout_in) == "chw":
        arr = arr.transpose(1, 2, 0)
    with HSIWriter(path, arr.shape, dtype or arr.dtype, format=format, layout=layout, variable=variable,
                   metadata=metadata) as w:
        w.write(arr)
    return Path(path)
