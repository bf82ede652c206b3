"""ENVI files: a text header (``.hdr``) beside a raw data file; read as a memory map (bsq, bil and bip interleaves,
either byte order), written as bip (``layout="hwc"``), bsq (``"chw"``) or bil, little-endian, the header committed last.

The header's other keys are the cube's metadata (:func:`~sschsr_deploy.io.metadata.metadata_from_envi` /
:func:`~sschsr_deploy.io.metadata.envi_fields`: wavelength, fwhm, band names, map info, coordinate system string,
data ignore value, passed-through keys), written so that SPy and GDAL (rasterio) read them as well."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _require_file
from sschsr_deploy.io.metadata import ENVI_LAYOUT_KEYS, envi_fields, metadata_from_envi
from sschsr_deploy.io.sink import RowSink

log = logging.getLogger(__name__)

_ENVI_DATA_EXTS = ("", ".img", ".raw", ".dat", ".bsq", ".bil", ".bip")
# ENVI "data type" codes <-> numpy dtypes (byte order applied separately)
_ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
_ENVI_CODES = {np.dtype(v).str[1:]: k for k, v in _ENVI_DTYPES.items()}


def _parse_envi_header(text: str, path: Path) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "ENVI":
        raise InputValidationError(f"{path} is not an ENVI header (the first line must be 'ENVI')")
    out: dict[str, str] = {}
    body = "\n".join(lines[1:])
    # [ \t]*, not \s*: an empty value ("header offset =") must not swallow the next line
    for m in re.finditer(r"^[ \t]*([^=\n]+?)[ \t]*=[ \t]*(\{[^}]*\}|[^\n]*)", body, flags=re.MULTILINE):
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


def read_envi(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """An ENVI file given by its header or data file, as a memory map (``variable`` does not apply).

    The header is checked against the data, since a wrong header would otherwise run on garbage: the data file's size
    must be exactly what the header describes, and a sample of the values must be plausible for the declared data type
    and byte order (:func:`_check_plausible`)."""
    header, data = _envi_paths(path)
    _require_file(data)
    hdr = _parse_envi_header(header.read_text(errors="replace"), header)
    try:
        samples, lines, nbands = int(hdr["samples"]), int(hdr["lines"]), int(hdr["bands"])
        code = int(hdr["data type"])
        offset = int(hdr.get("header offset") or 0)
    except KeyError as exc:
        raise InputValidationError(f"ENVI header {header} lacks the required field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise InputValidationError(f"ENVI header {header} has a malformed number: {exc}") from None
    for field, value in (("samples", samples), ("lines", lines), ("bands", nbands)):
        if value < 1:
            raise InputValidationError(f"ENVI header {header}: {field} = {value} (must be at least 1)")
    if offset < 0:
        raise InputValidationError(f"ENVI header {header}: header offset = {offset} (must be 0 or more)")
    if code not in _ENVI_DTYPES:
        raise InputValidationError(f"ENVI header {header}: unsupported data type {code}")
    interleave = hdr.get("interleave", "bsq").lower()
    byte_order = hdr.get("byte order", "0").strip() or "0"
    if byte_order not in ("0", "1"):
        raise InputValidationError(f"ENVI header {header}: byte order = {byte_order!r} (must be 0 or 1)")
    dtype = np.dtype((">" if byte_order == "1" else "<") + _ENVI_DTYPES[code])
    shapes = {"bsq": (nbands, lines, samples), "bil": (lines, nbands, samples), "bip": (lines, samples, nbands)}
    perms = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}
    if interleave not in shapes:
        raise InputValidationError(f"ENVI header {header}: unknown interleave {interleave!r} (bsq, bil or bip)")
    need = offset + samples * lines * nbands * dtype.itemsize
    have = data.stat().st_size
    if have != need:
        what = "truncated" if have < need else "larger than its header describes"
        raise InputValidationError(
            f"ENVI data file {data} is {what}: {have} bytes, the header {header.name} describes {need} bytes "
            f"(header offset {offset} + {lines} lines x {samples} samples x {nbands} bands of {dtype.name}); "
            "check the header's samples, lines, bands, data type and header offset"
        )
    arr = np.memmap(data, dtype=dtype, mode="r", offset=offset, shape=shapes[interleave])
    _check_plausible(arr.reshape(-1), code, header, data)
    lay = "chw" if interleave == "bsq" else "hwc"
    if layout is not None and layout != lay and interleave != "bil":
        log.warning("ignoring layout=%r for %s: the ENVI header says interleave = %s", layout, data, interleave)
    try:
        meta = metadata_from_envi(hdr, source=str(header))
    except InputValidationError as exc:  # an unreadable map info / list: name the header (the messages may not)
        msg = str(exc)
        raise InputValidationError(msg if str(header) in msg else f"ENVI header {header}: {msg}") from None
    meta = meta.validated(nbands, str(header))  # warnings name the header (the cube would name the data file)
    return HSICube(arr, perms[interleave], path=data, format="envi", layout=interleave, lazy=True, metadata=meta)


_SAMPLE = 4096  # values sampled (evenly spread over the file) by the plausibility check


def _float_share(values: np.ndarray, lo: float, hi: float) -> tuple[int, float]:
    """(how many of ``values`` are non-zero and not NaN, the share of those whose magnitude lies in [lo, hi])."""
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.abs(values.astype(np.float64))
    counted = (a != 0) & ~np.isnan(a)
    n = int(counted.sum())
    return n, float(((a >= lo) & (a <= hi) & counted).sum() / n) if n else 0.0


def _pairs_as(flat: np.ndarray, at: np.ndarray, kind: str) -> np.ndarray:
    """The values of type ``kind`` (twice the item size) that ``flat[at]``, ``flat[at + 1]`` make together (in the
    file's byte order)."""
    two = np.ascontiguousarray(np.stack([np.asarray(flat[at]), np.asarray(flat[at + 1])], axis=1))
    return two.view((">" if flat.dtype.byteorder == ">" else "<") + kind)[:, 0]


def _check_plausible(flat: np.ndarray, code: int, header: Path, data: Path) -> None:
    """Refuse data that cannot be what the header's data type and byte order say (a wrong header runs on garbage).

    Floats: the non-zero, non-NaN values of measured data lie within 1e-20 .. 1e20; float data read in the wrong
    byte order, or integers read as floats, spread over the whole exponent range (subnormal, inf, 1e±38): refused
    when more than 20 % of a sample lie outside. The wrong float width: float64 values whose halves are 99 % float32
    within 1e-10 .. 1e10, and under 10 % zero (float64 halves are mantissa noise, or zero for round values); float32
    values whose pairs make 99 % such float64 while the pairs shifted by one value do not (float32 data in a narrow
    range, e.g. reflectances of 0.3 .. 0.7, make plausible float64 in both pairings: the upper half's exponent
    decides). Integers over float data: 4- and 8-byte integers whose bytes, read as floats of the same size, are 99
    % within 1e-10 .. 1e10 (measured integers would have to be all near 2**30 or 2**62); 2-byte integers whose pairs
    read as such float32, while the pairs shifted by one value do not (the low halves of floats are noise; measured
    integers look alike in both pairings).
    Each decision needs 64 non-zero values in the sample.
    """
    n = flat.shape[0]
    dtype = flat.dtype
    idx = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE)).astype(np.int64))
    vals = np.asarray(flat[idx])
    declared = f"data type = {code} ({dtype.name}, {'big' if dtype.byteorder == '>' else 'little'}-endian)"
    fix = f"check 'data type', 'byte order' and 'interleave' in {header}"
    order = ">" if dtype.byteorder == ">" else "<"
    like: str | None = None
    if dtype.kind == "f":
        counted, ok = _float_share(vals, 1e-20, 1e20)
        if counted >= 64 and ok < 0.8:
            raise InputValidationError(
                f"ENVI data file {data} does not hold the {declared} its header says: {100 * (1 - ok):.0f}% of "
                f"sampled values are inf, subnormal or beyond 1e+-20; {fix}"
            )
        if dtype.itemsize == 8:  # float32 data: both halves of each value are plausible float32 (and rarely 0)
            halves = vals.view(order + "f4")
            counted, ok = _float_share(halves, 1e-10, 1e10)
            if counted >= 64 and ok >= 0.99 and np.count_nonzero(halves == 0) < 0.1 * halves.size:
                like = "float32"
        elif n >= 4:  # float64 data: pairs of values make plausible float64, pairs shifted by one value do not
            start = idx[idx <= n - 3] & ~np.int64(1)
            counted, ok = _float_share(_pairs_as(flat, start, "f8"), 1e-10, 1e10)
            _, ok_shifted = _float_share(_pairs_as(flat, start + 1, "f8"), 1e-10, 1e10)
            if counted >= 64 and ok >= 0.99 and ok_shifted < 0.5:
                like = "float64"
    elif dtype.itemsize in (4, 8):
        as_float = vals.view(order + f"f{dtype.itemsize}")
        counted, ok = _float_share(as_float, 1e-10, 1e10)
        if counted >= 64 and ok >= 0.99:
            like = f"float{8 * dtype.itemsize}"
    elif dtype.itemsize == 2 and n >= 4:
        start = idx[idx <= n - 3] & ~np.int64(1)  # even positions: pairs aligned with the data start
        counted, ok = _float_share(_pairs_as(flat, start, "f4"), 1e-10, 1e10)
        _, ok_shifted = _float_share(_pairs_as(flat, start + 1, "f4"), 1e-10, 1e10)
        if counted >= 64 and ok >= 0.99 and ok_shifted < 0.5:
            like = "float32"
    if like:
        raise InputValidationError(
            f"ENVI data file {data} holds {like} values, not the {declared} its header says; {fix}"
        )


class EnviSink(RowSink):
    """Writes the raw data file (little-endian, written through), then its header; the header is renamed last."""

    def targets(self) -> tuple[Path, Path]:
        """(header, data) of the output, named by either."""
        if self.path.suffix.lower() == ".hdr":
            return self.path, self.path.with_suffix(".img")
        return self.path.with_suffix(".hdr"), self.path

    def open(self) -> None:
        header, data = self.targets()
        if self.dtype.str[1:] not in _ENVI_CODES:
            raise InputValidationError(f"ENVI cannot store dtype {self.dtype}")
        self.file_dtype = self.dtype.newbyteorder("<")
        self.open_raw(data)

    def finish(self) -> list[tuple[Path, Path]]:
        self._close_fd(sync=True)
        header, data = self.targets()
        hdr_tmp = self.temp(header)
        with open(hdr_tmp, "w") as f:
            f.write(self.header_text())
            f.flush()
            os.fsync(f.fileno())
        return [(self.buffer, data), (hdr_tmp, header)]  # the header last: data without a header is no output

    def header_text(self) -> str:
        """The layout keys, then the metadata's (:func:`envi_fields`); values made safe for the one-line / braced
        syntax every ENVI reader parses (no newline outside braces, no brace inside)."""
        h, w, c = self.shape_hwc
        fields = envi_fields(self.metadata)
        description = fields.pop("description", "{written by sschsr-deploy}")
        lines = [
            "ENVI",
            f"description = {description}",
            f"samples = {w}",
            f"lines = {h}",
            f"bands = {c}",
            "header offset = 0",
            "file type = ENVI Standard",
            f"data type = {_ENVI_CODES[self.dtype.str[1:]]}",
            f"interleave = {_INTERLEAVE[self.layout]}",
            "byte order = 0",
        ]
        for key, value in fields.items():
            key = " ".join(key.split())
            if not key or "=" in key or "{" in key or "}" in key or key.lower() in ENVI_LAYOUT_KEYS:
                continue
            lines.append(f"{key} = {_envi_value(str(value))}")
        return "\n".join(lines) + "\n"


_INTERLEAVE = {"hwc": "bip", "chw": "bsq", "bil": "bil"}


def _envi_value(value: str) -> str:
    """``value`` as one header value: a braced list stays as it is (its inner braces turned into parentheses); text
    with a line break or brace gets braces of its own."""
    text = value.strip()
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1]
    elif "\n" in text or "{" in text or "}" in text:
        inner = text
    else:
        return text
    return "{" + inner.replace("{", "(").replace("}", ")") + "}"
