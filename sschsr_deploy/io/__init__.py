"""Readers and writers: hyperspectral cubes (:mod:`.hsi`), RGB images (:mod:`.rgb`), atomic outputs (:mod:`.atomic`)."""

from .atomic import atomic_path, atomic_write_json, check_writable, file_sha256, sidecar_path, write_sidecar
from .hsi import (
    FORMATS,
    LAYOUTS,
    HSICube,
    HSIWriter,
    as_cube,
    detect_layout,
    format_from_path,
    list_variables,
    load_hsi,
    read_hsi,
    write_hsi,
)
from .rgb import read_rgb, to_uint8, write_rgb

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "HSICube",
    "HSIWriter",
    "as_cube",
    "atomic_path",
    "atomic_write_json",
    "check_writable",
    "detect_layout",
    "file_sha256",
    "format_from_path",
    "list_variables",
    "load_hsi",
    "read_hsi",
    "read_rgb",
    "sidecar_path",
    "to_uint8",
    "write_hsi",
    "write_rgb",
    "write_sidecar",
]
