"""The cube view every reader returns (:class:`HSICube`: H x W x C regions on demand, with the file's
:class:`~sschsr_deploy.io.metadata.CubeMetadata`), band order (H x W x C or C x H x W, given or detected; writers also
take ENVI's names and bil) and the helpers the format readers share to build a cube from what a file holds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.metadata import CubeMetadata

__all__ = ["LAYOUTS", "WRITER_LAYOUTS", "CubeView", "HSICube", "as_cube", "detect_layout", "nodata_mask"]

PathLike = str | os.PathLike

LAYOUTS = ("hwc", "chw")
#: on-disk band orders a writer accepts → the canonical name: ENVI's bip / bsq are hwc / chw; bil (H x C x W, a line
#: of each band in turn) has no reader-side equivalent and only ENVI can write it
WRITER_LAYOUTS = {"hwc": "hwc", "chw": "chw", "bip": "hwc", "bsq": "chw", "bil": "bil"}


def detect_layout(shape: Sequence[int], bands: int | None = None, name: str = "cube") -> str:
    """Decide whether a 3-D ``shape`` is H x W x C (``"hwc"``) or C x H x W (``"chw"``).

    With ``bands`` (the model's band count): the one of the first / last axes that equals it. Otherwise, and when
    both or neither match: the first or last axis when it is strictly the smallest of the three. Anything else is
    ambiguous and raises, asking for an explicit layout.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputValidationError(f"{name} must be a 3-D cube (H x W x C or C x H x W); got shape {shape}")
    if bands is not None:
        hits = [ax for ax in (0, 2) if shape[ax] == bands]
        if len(hits) == 1:
            return "chw" if hits[0] == 0 else "hwc"
    first, mid, last = shape
    if last < first and last < mid:
        return "hwc"
    if first < mid and first < last:
        return "chw"
    hint = f" (the model expects {bands} bands)" if bands is not None else ""
    raise InputValidationError(
        f"ambiguous band order for {name} of shape {shape}{hint}: cannot tell H x W x C from C x H x W; pass the "
        "layout explicitly (layout='hwc' or 'chw', CLI --hsi-layout)"
    )


def _check_layout(layout: str | None) -> str | None:
    if layout is None:
        return None
    lay = layout.lower()
    if lay not in LAYOUTS:
        raise InputValidationError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return lay


def _writer_layout(layout: str | None, fmt: str) -> str:
    """The canonical on-disk band order (``hwc``, ``chw`` or ``bil``) for a writer of format ``fmt``; ``None`` → hwc.
    Kept apart from :func:`_check_layout` so that readers' ``layout=`` still only takes hwc / chw."""
    if layout is None:
        return "hwc"
    lay = WRITER_LAYOUTS.get(layout.lower())
    if lay is None:
        raise InputValidationError(f"output layout must be one of {', '.join(WRITER_LAYOUTS)}; got {layout!r}")
    if lay == "bil" and fmt != "envi":
        raise InputValidationError(
            f"layout 'bil' (band-interleaved by line) is an ENVI interleave; {fmt} outputs take hwc (bip) or chw (bsq)")
    return lay


def _check_numeric(dtype: np.dtype, what: str) -> None:
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputValidationError(f"{what} has dtype {dtype}; a real numeric (integer or float) cube is required")


def nodata_mask(block: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """The no-data pixels of an H x W x C block: those holding ``nodata`` in any band (or NaN in any band for a NaN
    ``nodata``; their spectrum is incomplete) as an H x W bool array; ``None`` when there are none."""
    if nodata is None:
        return None
    if np.isnan(nodata):
        mask = np.isnan(block).any(axis=2) if np.issubdtype(block.dtype, np.floating) else None
    else:
        mask = (block == nodata).any(axis=2)
    return mask if mask is not None and mask.any() else None


class CubeView:
    """What every cube view has: an H x W x C ``shape`` (and its parts); :class:`HSICube` reads a source, other views
    (e.g. :class:`~sschsr_deploy.bands.BandMappedCube`) compute regions from another cube."""

    shape: tuple[int, int, int]

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def bands(self) -> int:
        return self.shape[2]


class HSICube(CubeView):
    """A hyperspectral cube (in memory or in a file) that hands out H x W x C regions as numpy arrays.

    ``perm`` gives, for the H, W and C axes, the axis of the underlying array (numpy array, memory map or HDF5 dataset)
    that holds them; reads slice the source and transpose only the region. ``lazy`` tells whether the data stay on
    disk until read. ``metadata``: what the file says about the cube (band centres, georeference, nodata …), checked
    against the band count with :meth:`CubeMetadata.validated` (fields that do not fit are dropped with a warning).
    """

    def __init__(
        self,
        source: Any,
        perm: tuple[int, int, int],
        *,
        path: PathLike | None = None,
        format: str = "array",
        variable: str | None = None,
        layout: str = "hwc",
        lazy: bool = False,
        closer: Any = None,
        metadata: CubeMetadata | None = None,
    ) -> None:
        self._src = source
        self.perm = tuple(int(p) for p in perm)
        self.path = Path(path) if path is not None else None
        self.format = format
        self.variable = variable
        self.layout = layout
        self.lazy = lazy
        self._closer = closer
        src_shape = tuple(int(s) for s in source.shape)
        self.shape: tuple[int, int, int] = (src_shape[self.perm[0]], src_shape[self.perm[1]], src_shape[self.perm[2]])
        self.dtype = np.dtype(source.dtype)
        _check_numeric(self.dtype, self._name())
        if min(self.shape) < 1:
            raise InputValidationError(f"{self._name()} is empty (shape {self.shape})")
        self.metadata: CubeMetadata = (metadata or CubeMetadata()).validated(self.bands, self._name())

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "hyperspectral cube"

    @property
    def source(self) -> Any:
        """The underlying array, memory map or HDF5 dataset (for inspection; use :meth:`read` for data)."""
        return self._src

    def read(
        self,
        rows: slice | None = None,
        cols: slice | None = None,
        bands: Sequence[int] | slice | None = None,
    ) -> np.ndarray:
        """Read a region as a numpy H x W x C array (a copy for lazy sources, possibly a view for in-memory ones)."""
        rows = rows if rows is not None else slice(None)
        cols = cols if cols is not None else slice(None)
        select = None
        if bands is None:
            bsl = slice(None)
        elif isinstance(bands, slice):
            bsl = bands
        else:
            idx = [int(b) for b in bands]
            lo, hi = min(idx), max(idx) + 1
            bsl = slice(lo, hi)
            select = [b - lo for b in idx]
        index: list[slice] = [slice(None)] * 3
        index[self.perm[0]], index[self.perm[1]], index[self.perm[2]] = rows, cols, bsl
        try:
            block = np.asarray(self._src[tuple(index)])
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            # h5py raises all of these on damaged files; from arrays and memory maps only OSError / ValueError are
            if not isinstance(exc, (OSError, ValueError)) and not type(self._src).__module__.startswith("h5py"):
                raise
            raise InputValidationError(
                f"cannot read {self._name()}: {type(exc).__name__}: {exc} (truncated or corrupt file?)"
            ) from exc
        block = block.transpose(self.perm)
        if select is not None:
            block = block[:, :, select]
        return block

    def to_numpy(self) -> np.ndarray:
        """The whole cube as an H x W x C numpy array."""
        return self.read()

    def close(self) -> None:
        """Release the file (HDF5 handle, memory map)."""
        if self._closer is not None:
            with contextlib.suppress(Exception):
                self._closer()
            self._closer = None

    def __enter__(self) -> HSICube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return (
            f"HSICube({self.height}x{self.width}x{self.bands} {self.dtype}{where}, format={self.format}, "
            f"layout={self.layout}, lazy={self.lazy})"
        )


def _perm_for(layout: str) -> tuple[int, int, int]:
    return (0, 1, 2) if layout == "hwc" else (1, 2, 0)


def as_cube(
    array: Any, layout: str | None = None, bands: int | None = None, name: str = "hyperspectral cube",
    metadata: CubeMetadata | None = None,
) -> HSICube:
    """Wrap an in-memory 3-D array (numpy or torch, H x W x C or C x H x W) as an :class:`HSICube` with ``metadata``.

    An :class:`HSICube` is returned unchanged (its metadata replaced when ``metadata`` is given). Torch tensors are
    moved to the CPU and viewed as numpy.
    """
    if isinstance(array, HSICube):
        if metadata is not None:
            array.metadata = metadata.validated(array.bands, name)
        return array
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor without importing torch here
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise InputValidationError(f"{name} must be a numpy array or torch tensor; got {type(array).__name__}")
    if array.ndim != 3:
        raise InputValidationError(f"{name} must be a 3-D cube (H x W x C or C x H x W); got shape {array.shape}")
    lay = _check_layout(layout) or detect_layout(array.shape, bands, name)
    return HSICube(array, _perm_for(lay), layout=lay, lazy=False, metadata=metadata)


def _require_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputValidationError(f"file not found: {p}")
    if p.is_dir():
        raise InputValidationError(f"{p} is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise InputValidationError(f"file is not readable: {p}")
    return p


def _corrupt(path: Path, fmt: str, exc: BaseException) -> InputValidationError:
    return InputValidationError(
        f"cannot read {path} as {fmt}: {type(exc).__name__}: {exc} (truncated or corrupt file?)"
    )


def _pick_variable(path: Path, candidates: dict[str, tuple[tuple[int, ...], Any]], variable: str | None) -> str:
    """Choose a variable: the requested one (must exist), else the only 3-D numeric one."""
    listing = ", ".join(f"{k} {tuple(shape)}" for k, (shape, _) in candidates.items()) or "(none)"
    if variable is not None:
        if variable not in candidates:
            raise InputValidationError(f"variable {variable!r} not found in {path}; available: {listing}")
        return variable
    three_d = [k for k, (shape, dtype) in candidates.items() if len(shape) == 3 and _is_numeric(dtype)]
    if len(three_d) == 1:
        return three_d[0]
    if not three_d:
        raise InputValidationError(f"{path} holds no 3-D numeric array (a cube); available: {listing}")
    raise InputValidationError(
        f"{path} holds several 3-D arrays ({', '.join(three_d)}); choose one with variable= (CLI --variable)"
    )


def _is_numeric(dtype: Any) -> bool:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    return dt != np.bool_ and (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating))


def _cube_from_array(arr: Any, path: Path, fmt: str, variable: str | None, layout: str | None, bands: int | None,
                     lazy: bool, closer: Any = None, matlab_order: bool = False,
                     metadata: CubeMetadata | None = None) -> HSICube:
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) != 3:
        what = f"variable {variable!r} of {path}" if variable else str(path)
        raise InputValidationError(f"{what} is not a 3-D cube (H x W x C or C x H x W); got shape {shape}")
    if matlab_order:  # HDF5 holds MATLAB's column-major array with its axes reversed
        view_shape = shape[::-1]
        lay = layout or detect_layout(view_shape, bands, str(path))
        view_perm = _perm_for(lay)
        perm = tuple(2 - v for v in view_perm)
    else:
        lay = layout or detect_layout(shape, bands, str(path))
        perm = _perm_for(lay)
    return HSICube(arr, perm, path=path, format=fmt, variable=variable, layout=lay, lazy=lazy, closer=closer,
                   metadata=metadata)
