"""Atomic output files: write to a temp file beside the target, fsync, then ``os.replace``; plus the JSON sidecar.

A reader never sees a half-written output under the final name: the data go to a hidden
``.<name>.<random>.partial<ext>`` file in the target directory (same file system, so the final rename is atomic), which
is flushed to disk and renamed only when complete. On any error the temp file is removed. The sidecar ``<output>.json``
records what produced the output (package version, model preset, weights hash, backend, tile/overlap, timings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_writable",
    "file_sha256",
    "fsync_file",
    "sidecar_path",
    "temp_path_for",
    "write_sidecar",
]

PathLike = str | os.PathLike


def check_writable(path: PathLike) -> Path:
    """Return ``path`` as a Path, or raise ``InputValidationError`` when an output cannot be created there.

    Checked: the parent directory exists and is a writable directory, and ``path`` itself is not a directory. The
    check runs before any computation, so a long run does not fail at the very end.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputValidationError(f"output path {p} is a directory; give a file name (e.g. {p / 'output.npy'})")
    if not parent.exists():
        raise InputValidationError(f"output directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputValidationError(f"output directory {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputValidationError(f"output directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
        raise InputValidationError(f"output file {p} exists and cannot be replaced")
    return p


def temp_path_for(path: PathLike) -> Path:
    """A fresh hidden temp name in the target's directory that keeps the target's extension (libraries look at it)."""
    p = Path(path)
    suffix = p.suffix
    stem = p.name[: -len(suffix)] if suffix else p.name
    return p.with_name(f".{stem}.{secrets.token_hex(4)}.partial{suffix}")


def fsync_file(path: PathLike) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on directories)."""
    with contextlib.suppress(OSError):
        fsync_file(path)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def commit(tmp: PathLike, final: PathLike) -> Path:
    """fsync ``tmp`` and rename it to ``final`` (atomic on one file system); returns ``final``."""
    tmp, final = Path(tmp), Path(final)
    fsync_file(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent if str(final.parent) else Path("."))
    return final


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; write it completely inside the block; it becomes ``path`` on success.

    On an exception (including KeyboardInterrupt) the temp file is deleted and ``path`` is left untouched.
    """
    final = check_writable(path)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to the temp file for {final}")
        commit(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, paths and tuples JSON-serialisable."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: PathLike) -> Path:
    """``out.npy`` -> ``out.npy.json``: the sidecar lives beside the output and names it in full."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def write_sidecar(output: PathLike, info: dict[str, Any]) -> Path:
    """Write the JSON sidecar of ``output`` atomically: ``info`` plus the producing environment.

    Added keys: ``output`` (file name), ``package`` (sschsr-deploy version), ``created_utc``, ``python``,
    ``platform`` and, when importable, ``torch``. Keys in ``info`` win over these.
    """
    from sschsr_deploy._version import __version__

    meta: dict[str, Any] = {
        "output": Path(output).name,
        "package": "sschsr-deploy",
        "package_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None:
        meta["torch"] = torch_mod.__version__
    meta.update(info)
    return atomic_write_json(sidecar_path(output), meta)
