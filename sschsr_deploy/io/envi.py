"""ENVI files: a text header (``.hdr``) beside a raw data file; read as a memory map (bsq, bil and bip interleaves,
either byte order), written as bip (``layout="hwc"``) or bsq (``"chw"``), little-endian, the header committed last."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import commit
from sschsr_deploy.io.cube import HSICube, _require_file
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


def read_envi(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """An ENVI file given by its header or data file, as a memory map (``variable`` does not apply)."""
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


class EnviSink(RowSink):
    """Writes the raw data file as a memory map, then its header."""

    def targets(self) -> tuple[Path, Path]:
        """(header, data) of the output, named by either."""
        if self.path.suffix.lower() == ".hdr":
            return self.path, self.path.with_suffix(".img")
        return self.path.with_suffix(".hdr"), self.path

    def open(self) -> None:
        header, data = self.targets()
        self.buffer = self.temp(data)
        dt = self.dtype.newbyteorder("<")
        if self.dtype.str[1:] not in _ENVI_CODES:
            raise InputValidationError(f"ENVI cannot store dtype {self.dtype}")
        self.arr = np.memmap(self.buffer, dtype=dt, mode="w+", shape=self.disk_shape)

    def commit(self) -> None:
        self.arr.flush()
        self.arr = None
        header, data = self.targets()
        hdr_tmp = self.temp(header)
        hdr_tmp.write_text(self.header_text())
        commit(self.buffer, data)
        commit(hdr_tmp, header)  # the header last: a data file without header is not a usable output

    def header_text(self) -> str:
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
