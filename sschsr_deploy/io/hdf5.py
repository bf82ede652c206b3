"""HDF5 files (``.h5``/``.hdf5``): a dataset read lazily through ``h5py``, written as a row-chunked dataset. MATLAB
v7.3 files are HDF5 too (:mod:`sschsr_deploy.io.mat` builds on this module).

Metadata: the attributes of the root group and of the dataset (the dataset's win), named as in
:data:`~sschsr_deploy.io.metadata.ATTRIBUTE_NAMES`; files that keep the band centres / widths as vector datasets of
their own (``wavelength``, ``fwhm`` …; MATLAB's 1 x N matrices included) fill those when no attribute did. Written as
attributes of the dataset."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import fsync_file
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array, _is_numeric, _pick_variable
from sschsr_deploy.io.metadata import ATTRIBUTE_NAMES, CubeMetadata, attributes_from_metadata, metadata_from_attributes
from sschsr_deploy.io.sink import HEADER_ALLOWANCE, RowSink
from sschsr_deploy.io.space import reserve_space

log = logging.getLogger(__name__)


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
            ds = f[keys[name]]
            meta = _dataset_metadata(f, ds, found, keys, path)
            return _cube_from_array(ds, path, fmt, name, layout, bands, lazy=True, closer=f.close,
                                    matlab_order=matlab_order, metadata=meta)
        except InputValidationError:
            raise
        except _H5_ERRORS as exc:
            raise _corrupt(path, what, exc) from exc
    except BaseException:
        f.close()
        raise


def _attributes(obj: Any) -> dict[str, Any]:
    """The attributes of an HDF5 object that can be read (a damaged or exotic one is skipped, not an error)."""
    out: dict[str, Any] = {}
    for key in list(obj.attrs.keys()):
        try:
            out[key.decode("utf-8", "replace") if isinstance(key, bytes) else key] = obj.attrs[key]
        except _H5_ERRORS:
            continue
    return out


_VECTOR_MAX = 1 << 16  # a band-centre vector longer than this is not one


def _vector_datasets(f: Any, found: dict[str, tuple[tuple[int, ...], Any]], keys: dict[str, Any]) -> dict[str, Any]:
    """Numeric vectors (N, 1 x N or N x 1) named as band centres / widths in :data:`ATTRIBUTE_NAMES`, by name (the
    last part of their path); MATLAB char / cell arrays skipped (MATLAB stores text as uint16)."""
    wanted = set(ATTRIBUTE_NAMES["wavelengths"]) | set(ATTRIBUTE_NAMES["fwhm"])
    out: dict[str, Any] = {}
    for name, (shape, dtype) in found.items():
        base = name.rsplit("/", 1)[-1]
        if base not in wanted or base in out or not _is_numeric(dtype):
            continue
        if not (len(shape) == 1 or (len(shape) == 2 and 1 in shape)) or not 0 < int(np.prod(shape)) <= _VECTOR_MAX:
            continue
        ds = f[keys[name]]
        cls = ds.attrs.get("MATLAB_class", b"")
        if (cls.decode("ascii", "replace") if isinstance(cls, bytes) else str(cls)) in ("char", "cell"):
            continue
        out[base] = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    return out


def _dataset_metadata(f: Any, ds: Any, found: dict[str, tuple[tuple[int, ...], Any]], keys: dict[str, Any],
                      path: Path) -> CubeMetadata:
    """The cube's metadata: root attributes updated by the dataset's, then vector datasets for missing band centres /
    widths. Attributes that do not read as the field they name are a warning (the pixels do not depend on them)."""
    try:
        attrs = {**_attributes(f), **_attributes(ds)}
        meta = metadata_from_attributes(attrs, str(path))
        vectors = _vector_datasets(f, found, keys)
    except (InputValidationError, *_H5_ERRORS) as exc:
        log.warning("%s: ignoring its metadata attributes: %s", path, exc)
        return CubeMetadata()
    for field in ("wavelengths", "fwhm"):
        if getattr(meta, field) is None:
            hit = next((vectors[n] for n in ATTRIBUTE_NAMES[field] if n in vectors), None)
            if hit is not None:
                setattr(meta, field, tuple(float(v) for v in hit))
    return meta


def write_attributes(ds: Any, meta: CubeMetadata) -> None:
    """``meta`` as attributes of the dataset ``ds`` (lists of text as variable-length UTF-8 strings)."""
    import h5py

    for key, value in attributes_from_metadata(meta).items():
        if key.startswith("MATLAB_"):
            continue  # MATLAB's own attributes are the writer's
        if isinstance(value, list):
            ds.attrs.create(key, data=[str(v) for v in value], dtype=h5py.string_dtype())
        else:
            ds.attrs[key] = value


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
        write_attributes(self.arr, self.metadata)
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
