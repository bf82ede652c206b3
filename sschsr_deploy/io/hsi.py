"""Read and write hyperspectral cubes: .npy/.npz, MATLAB .mat v5 and v7.3, HDF5, ENVI (.hdr + raw) and TIFF.

Reading returns an :class:`HSICube`: a view of the file that reads H x W x C regions on demand. Formats that allow it
are read lazily, so scenes larger than memory can be processed tile by tile:

========== ========================================== =====================================================
format     reader                                     lazy?
========== ========================================== =====================================================
npy        ``np.load(mmap_mode="r")``                 yes (memory map)
npz        ``np.load`` (zip members)                  no: the selected array is loaded
mat (v5)   ``scipy.io.loadmat``                       no: the selected variable is loaded
mat73      ``h5py`` (MATLAB v7.3 is HDF5)             yes (HDF5 dataset; MATLAB's column-major axes undone)
h5         ``h5py``                                   yes (HDF5 dataset)
envi       header parsed here, data ``np.memmap``     yes (memory map; bsq, bil and bip interleaves)
tiff       ``tifffile.memmap`` / ``tifffile.imread``  yes when uncompressed and contiguous, else loaded
========== ========================================== =====================================================

Band order: ENVI's interleave and TIFF's sample axis say it; otherwise it is given (``layout="hwc"|"chw"``) or
detected with :func:`detect_layout` (the axis equal to the model's band count, else a clearly smallest first or last
axis), and an ambiguous shape raises :class:`~sschsr_deploy.errors.InputValidationError` asking for the layout.

Writing goes through :class:`HSIWriter`, which streams rows into a temp file beside the target (memory-mapped .npy /
ENVI / TIFF, HDF5 datasets for .h5 and MAT v7.3) and renames it into place only when complete (see
:mod:`sschsr_deploy.io.atomic`). .npz and MAT v5 cannot be written in pieces: their rows are buffered in a temp .npy
memory map and the whole array is written at commit (so these two formats need the output in memory once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import _remove_quietly, check_writable, commit, temp_path_for

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "LAYOUTS",
    "HSICube",
    "HSIWriter",
    "as_cube",
    "detect_layout",
    "format_from_path",
    "list_variables",
    "load_hsi",
    "read_hsi",
    "write_hsi",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

FORMATS = ("npy", "npz", "mat", "mat73", "h5", "envi", "tiff")
LAYOUTS = ("hwc", "chw")
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
_ENVI_DATA_EXTS = ("", ".img", ".raw", ".dat", ".bsq", ".bil", ".bip")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAT73_USERBLOCK = 512
# ENVI "data type" codes <-> numpy dtypes (byte order applied separately)
_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
_ENVI_CODES = {np.dtype(v).str[1:]: k for k, v in _ENVI_DTYPES.items()}


# ---------------------------------------------------------------------------------------------------------------------
# formats and band order


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


def _check_numeric(dtype: np.dtype, what: str) -> None:
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputValidationError(f"{what} has dtype {dtype}; a real numeric (integer or float) cube is required")


# ---------------------------------------------------------------------------------------------------------------------
# the cube view


class HSICube:
    """A hyperspectral cube (in memory or in a file) that hands out H x W x C regions as numpy arrays.

    ``perm`` gives, for the H, W and C axes, the axis of the underlying array (numpy array, memory map or HDF5 dataset)
    that holds them; reads slice the source and transpose only the region. ``lazy`` tells whether the data stay on
    disk until read.
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

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "hyperspectral cube"

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def bands(self) -> int:
        return self.shape[2]

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
        except (OSError, ValueError) as exc:
            raise InputValidationError(f"cannot read {self._name()}: {exc} (truncated or corrupt file?)") from exc
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
    array: Any, layout: str | None = None, bands: int | None = None, name: str = "hyperspectral cube"
) -> HSICube:
    """Wrap an in-memory 3-D array (numpy or torch, H x W x C or C x H x W) as an :class:`HSICube`.

    An :class:`HSICube` is returned unchanged. Torch tensors are moved to the CPU and viewed as numpy.
    """
    if isinstance(array, HSICube):
        return array
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor without importing torch here
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise InputValidationError(f"{name} must be a numpy array or torch tensor; got {type(array).__name__}")
    if array.ndim != 3:
        raise InputValidationError(f"{name} must be a 3-D cube (H x W x C or C x H x W); got shape {array.shape}")
    lay = _check_layout(layout) or detect_layout(array.shape, bands, name)
    return HSICube(array, _perm_for(lay), layout=lay, lazy=False)


# ---------------------------------------------------------------------------------------------------------------------
# readers


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


def _cube_from_array(arr: Any, path: Path, fmt: str, variable: str | None, layout: str | None, bands: int | None,
                     lazy: bool, closer: Any = None, matlab_order: bool = False) -> HSICube:
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
    return HSICube(arr, perm, path=path, format=fmt, variable=variable, layout=lay, lazy=lazy, closer=closer)


def _read_npy(path: Path, layout: str | None, bands: int | None) -> HSICube:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _corrupt(path, "npy", exc) from exc
    return _cube_from_array(arr, path, "npy", None, layout, bands, lazy=isinstance(arr, np.memmap))


def _read_npz(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
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


def _read_mat5(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
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


def _h5_datasets(f: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    import h5py

    found: dict[str, tuple[tuple[int, ...], Any]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith("#"):
            found[name] = (tuple(obj.shape), obj.dtype)

    f.visititems(visit)
    return found


def _read_hdf5(path: Path, variable: str | None, layout: str | None, bands: int | None, fmt: str) -> HSICube:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _corrupt(path, "HDF5" if fmt == "h5" else "MATLAB v7.3 .mat", exc) from exc
    try:
        name = _pick_variable(path, _h5_datasets(f), variable)
        ds = f[name]
        return _cube_from_array(ds, path, fmt, name, layout, bands, lazy=True, closer=f.close,
                                matlab_order=fmt == "mat73")
    except BaseException:
        f.close()
        raise


def _parse_envi_header(text: str, path: Path) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "ENVI":
        raise InputValidationError(f"{path} is not an ENVI header (the first line must be 'ENVI')")
    out: dict[str, str] = {}
    body = "\n".join(lines[1:])
    for m in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", body, flags=re.MULTILINE):
        out[m.group(1).strip().lower()] = m.group(2).strip()
    return out


def _envi_paths(path: Path) -> tuple[Path, Path]:
    """(header, data) for an ENVI file given by either name (``x.hdr`` + ``x.img`` or ``x.img.hdr`` + ``x.img``)."""
    if path.suffix.lower() == ".hdr":
        header = path
        base = path.with_suffix("")
        for ext in _ENVI_DATA_EXTS:
            cand = base.with_name(base.name + ext) if ext else base
            if cand.exists() and cand.is_file() and cand != header:
                return header, cand
        raise InputValidationError(
            f"ENVI header {header} found but no data file beside it (looked for {base.name} with extensions "
            f"{', '.join(e or '(none)' for e in _ENVI_DATA_EXTS)})"
        )
    data = path
    for header in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if header.exists():
            return header, data
    raise InputValidationError(f"ENVI data file {data} has no header ({data.with_suffix('.hdr').name} not found)")


def _read_envi(path: Path, layout: str | None, bands: int | None) -> HSICube:
    header, data = _envi_paths(path)
    _require_file(data)
    hdr = _parse_envi_header(header.read_text(errors="replace"), header)
    try:
        samples, lines, nbands = int(hdr["samples"]), int(hdr["lines"]), int(hdr["bands"])
        code = int(hdr["data type"])
    except KeyError as exc:
        raise InputValidationError(f"ENVI header {header} lacks the required field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise InputValidationError(f"ENVI header {header} has a malformed number: {exc}") from None
    if code not in _ENVI_DTYPES:
        raise InputValidationError(f"ENVI header {header}: unsupported data type {code}")
    interleave = hdr.get("interleave", "bsq").lower()
    order = ">" if hdr.get("byte order", "0").strip() == "1" else "<"
    offset = int(hdr.get("header offset", "0") or 0)
    dtype = np.dtype(order + _ENVI_DTYPES[code])
    shapes = {"bsq": (nbands, lines, samples), "bil": (lines, nbands, samples), "bip": (lines, samples, nbands)}
    perms = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}
    if interleave not in shapes:
        raise InputValidationError(f"ENVI header {header}: unknown interleave {interleave!r} (bsq, bil or bip)")
    need = offset + samples * lines * nbands * dtype.itemsize
    have = data.stat().st_size
    if have < need:
        raise InputValidationError(
            f"ENVI data file {data} is truncated: {have} bytes, the header describes {need} bytes "
            f"({lines} lines x {samples} samples x {nbands} bands of {dtype.name})"
        )
    arr = np.memmap(data, dtype=dtype, mode="r", offset=offset, shape=shapes[interleave])
    lay = "chw" if interleave == "bsq" else "hwc"
    if layout is not None and layout != lay and interleave != "bil":
        log.warning("ignoring layout=%r for %s: the ENVI header says interleave = %s", layout, data, interleave)
    return HSICube(arr, perms[interleave], path=data, format="envi", layout=interleave, lazy=True)


def _read_tiff(path: Path, layout: str | None, bands: int | None) -> HSICube:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes = tuple(series.shape), series.axes
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors … on bad files
        raise _corrupt(path, "TIFF", exc) from exc
    if len(shape) != 3:
        raise InputValidationError(f"{path} is not a 3-D cube (H x W x C or C x H x W); TIFF series shape {shape}")
    lazy = True
    try:
        arr = tifffile.memmap(path, mode="r")
    except Exception:  # compressed or non-contiguous: load it
        lazy = False
        try:
            arr = tifffile.imread(path)
        except Exception as exc:
            raise _corrupt(path, "TIFF", exc) from exc
        log.info("%s is compressed or not contiguous: loaded into memory (not memory-mapped)", path)
    if layout is None and "S" in axes:  # real samples per pixel: the file says where the bands are
        layout = "hwc" if axes.index("S") == 2 else "chw" if axes.index("S") == 0 else None
    return _cube_from_array(arr, path, "tiff", None, layout, bands, lazy=lazy)


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
    if fmt == "npy":
        return _read_npy(p, layout, bands)
    if fmt == "npz":
        return _read_npz(p, variable, layout, bands)
    if fmt == "mat":
        return _read_mat5(p, variable, layout, bands)
    if fmt in ("mat73", "h5"):
        return _read_hdf5(p, variable, layout, bands, fmt)
    if fmt == "envi":
        return _read_envi(p, layout, bands)
    return _read_tiff(p, layout, bands)


def load_hsi(path: PathLike, **kwargs: Any) -> np.ndarray:
    """Read a whole cube into memory as an H x W x C numpy array (keyword arguments as :func:`read_hsi`)."""
    with read_hsi(path, **kwargs) as cube:
        return np.array(cube.read())


def list_variables(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the arrays in an .npz, .mat or .h5 file (for error messages and ``--variable`` help)."""
    p = _require_file(path)
    fmt = format_from_path(p)
    if fmt == "npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: _npz_member_shape(z, k)[0] for k in z.files}
    if fmt in ("mat", "mat73", "h5") and _is_hdf5(p):
        import h5py

        with h5py.File(p, "r") as f:
            return {k: s for k, (s, _) in _h5_datasets(f).items()}
    if fmt == "mat":
        import scipy.io

        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(p)}
    return {}


# ---------------------------------------------------------------------------------------------------------------------
# writer


def _mat73_header() -> bytes:
    """The 128-byte MATLAB header MATLAB writes into the HDF5 user block of a v7.3 file."""
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    head = text.encode("ascii")[:116].ljust(116, b" ")
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"


class HSIWriter:
    """Stream an H x W x C cube into a file, atomically: rows go to a temp file that replaces ``path`` on commit.

    Use as a context manager (commits on success, deletes the temp file on any exception) or call :meth:`commit` /
    :meth:`abort`. ``layout`` is the on-disk band order (``"hwc"`` or ``"chw"``; ENVI: bip / bsq; TIFF: contiguous
    samples / planar). ``variable`` names the array in .npz / .mat / .h5 files.
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
    ) -> None:
        self.path = check_writable(path)
        self.format = format_from_path(self.path, format)
        self.layout = _check_layout(layout) or "hwc"
        self.variable = variable
        self.dtype = np.dtype(dtype)
        h, w, c = (int(s) for s in shape_hwc)
        self.shape_hwc = (h, w, c)
        self.disk_shape = (h, w, c) if self.layout == "hwc" else (c, h, w)
        self._temps: list[Path] = []
        self._h5 = None
        self._done = False
        self._rows_written = 0
        try:
            self._open()
        except BaseException:
            self.abort()
            raise

    # -- setup
    def _temp(self, like: Path) -> Path:
        tmp = temp_path_for(like)
        self._temps.append(tmp)
        return tmp

    def _open(self) -> None:
        fmt = self.format
        if fmt == "mat" and self.dtype.itemsize * int(np.prod(self.disk_shape)) >= 2**31:
            raise InputValidationError(
                f"output of {np.prod(self.disk_shape) * self.dtype.itemsize / 2**30:.1f} GiB is too large for a "
                "MATLAB v5 .mat file (2 GiB per variable); use --format mat73 (MATLAB v7.3)"
            )
        if fmt in ("npy", "npz", "mat"):
            buf_target = self.path if fmt == "npy" else self.path.with_name(self.path.name + ".npy")
            self._buf_tmp = self._temp(buf_target)
            self._arr = np.lib.format.open_memmap(self._buf_tmp, mode="w+", dtype=self.dtype, shape=self.disk_shape)
        elif fmt == "tiff":
            import tifffile

            self._buf_tmp = self._temp(self.path)
            self._arr = tifffile.memmap(
                self._buf_tmp, shape=self.disk_shape, dtype=self.dtype, photometric="minisblack",
                planarconfig="contig" if self.layout == "hwc" else "separate",
            )
        elif fmt == "envi":
            header, data = self._envi_targets()
            self._buf_tmp = self._temp(data)
            dt = self.dtype.newbyteorder("<")
            if self.dtype.str[1:] not in _ENVI_CODES:
                raise InputValidationError(f"ENVI cannot store dtype {self.dtype}")
            self._arr = np.memmap(self._buf_tmp, dtype=dt, mode="w+", shape=self.disk_shape)
        else:  # h5, mat73
            import h5py

            self._buf_tmp = self._temp(self.path)
            shape = self.disk_shape[::-1] if fmt == "mat73" else self.disk_shape
            kwargs = {"userblock_size": _MAT73_USERBLOCK} if fmt == "mat73" else {}
            self._h5 = h5py.File(self._buf_tmp, "w", **kwargs)
            row_chunk = (1, shape[1], shape[2]) if self.layout == "hwc" and fmt == "h5" else True
            self._arr = self._h5.create_dataset(self.variable, shape=shape, dtype=self.dtype, chunks=row_chunk)
            if fmt == "mat73":
                self._arr.attrs["MATLAB_class"] = np.bytes_(
                    {"f4": "single", "f8": "double", "u1": "uint8", "u2": "uint16", "i2": "int16"}.get(
                        self.dtype.str[1:], "single"
                    )
                )

    def _envi_targets(self) -> tuple[Path, Path]:
        if self.path.suffix.lower() == ".hdr":
            return self.path, self.path.with_suffix(".img")
        return self.path.with_suffix(".hdr"), self.path

    # -- writing
    def write_rows(self, y0: int, block_hwc: np.ndarray) -> None:
        """Write rows ``y0 .. y0 + n`` (all columns) from an n x W x C block."""
        if self._done:
            raise RuntimeError("HSIWriter is already committed or aborted")
        h, w, c = self.shape_hwc
        block = np.asarray(block_hwc)
        n = block.shape[0]
        if block.shape[1:] != (w, c) or y0 < 0 or y0 + n > h:
            raise ValueError(f"block of shape {block.shape} at row {y0} does not fit an output of {self.shape_hwc}")
        block = block.astype(self.dtype, copy=False)
        if self.format == "mat73":  # MATLAB's column-major array = the reversed axes in HDF5
            if self.layout == "hwc":
                self._arr[:, :, y0:y0 + n] = block.transpose(2, 1, 0)
            else:
                self._arr[:, y0:y0 + n, :] = block.transpose(1, 0, 2)
        elif self.layout == "hwc":
            self._arr[y0:y0 + n] = block
        else:
            self._arr[:, y0:y0 + n] = block.transpose(2, 0, 1)
        self._rows_written += n

    def write(self, cube_hwc: np.ndarray) -> None:
        """Write a whole H x W x C cube."""
        self.write_rows(0, cube_hwc)

    # -- finishing
    def commit(self) -> Path:
        """Flush, fsync and rename the temp file(s) into place; returns the output path."""
        if self._done:
            raise RuntimeError("HSIWriter is already committed or aborted")
        try:
            fmt = self.format
            if fmt in ("h5", "mat73"):
                self._h5.close()
                self._h5 = None
                if fmt == "mat73":
                    with open(self._buf_tmp, "r+b") as f:
                        f.write(_mat73_header())
                commit(self._buf_tmp, self.path)
            elif fmt in ("npy", "tiff"):
                self._arr.flush()
                self._arr = None
                commit(self._buf_tmp, self.path)
            elif fmt == "envi":
                self._arr.flush()
                self._arr = None
                header, data = self._envi_targets()
                hdr_tmp = self._temp(header)
                hdr_tmp.write_text(self._envi_header_text())
                commit(self._buf_tmp, data)
                commit(hdr_tmp, header)  # the header last: a data file without header is not a usable output
            else:  # npz / mat v5 from the buffer
                self._arr.flush()
                data = np.asarray(self._arr)
                final_tmp = self._temp(self.path)
                if fmt == "npz":
                    with open(final_tmp, "wb") as f:
                        np.savez(f, **{self.variable: data})
                else:
                    import scipy.io

                    scipy.io.savemat(final_tmp, {self.variable: data}, do_compression=False, appendmat=False)
                del data
                self._arr = None
                commit(final_tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        self._done = True
        return self.path

    def _envi_header_text(self) -> str:
        h, w, c = self.shape_hwc
        lines = [
            "ENVI",
            "description = {written by sschsr-deploy}",
            f"samples = {w}",
            f"lines = {h}",
            f"bands = {c}",
            "header offset = 0",
            "file type = ENVI Standard",
            f"data type = {_ENVI_CODES[self.dtype.str[1:]]}",
            f"interleave = {'bip' if self.layout == 'hwc' else 'bsq'}",
            "byte order = 0",
        ]
        return "\n".join(lines) + "\n"

    def _cleanup(self) -> None:
        for tmp in self._temps:
            _remove_quietly(tmp)
        self._temps = []

    def abort(self) -> None:
        """Drop everything written so far (temp files deleted; the target is left untouched)."""
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
            self._h5 = None
        self._arr = None
        self._cleanup()
        self._done = True

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
) -> Path:
    """Write a whole cube (``layout_in`` order, H x W x C by default) atomically in ``format`` / on-disk ``layout``."""
    arr = np.asarray(cube)
    if arr.ndim != 3:
        raise InputValidationError(f"cube must be 3-D; got shape {arr.shape}")
    if _check_layout(layout_in) == "chw":
        arr = arr.transpose(1, 2, 0)
    with HSIWriter(path, arr.shape, dtype or arr.dtype, format=format, layout=layout, variable=variable) as w:
        w.write(arr)
    return Path(path)
