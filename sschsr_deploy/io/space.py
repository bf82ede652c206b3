"""Room for an output: free space and the file size limit checked before compute, space reserved before writing, and
writes that turn a full disk into :class:`~sschsr_deploy.errors.OutputSpaceError` (never a SIGBUS from a memory map).
Part of the commit protocol described in :mod:`sschsr_deploy.io.atomic`."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import OutputSpaceError

__all__ = ["check_space", "folder_of", "pwrite_all", "reserve_space", "space_errors"]

PathLike = str | os.PathLike


def _size(n: int) -> str:
    return f"{n} bytes" if n < 10 * 2**20 else f"{n / 2**30:.2f} GiB ({n} bytes)"


def _file_size_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def folder_of(path: PathLike) -> Path:
    p = Path(path)
    return p.parent if str(p.parent) else Path(".")


def _space_error(path: PathLike, need: int, why: str | None = None) -> OutputSpaceError:
    limit = _file_size_limit()
    if why == "limit" or (why is None and limit is not None and need > limit):
        return OutputSpaceError(f"not enough space for {path}: need {_size(need)}, have {_size(limit or 0)} "
                                "(the file size limit, ulimit -f)")
    try:
        free = shutil.disk_usage(folder_of(path)).free
    except OSError:
        return OutputSpaceError(f"not enough space for {path}: need {_size(need)} (the file system is full)")
    return OutputSpaceError(f"not enough space for {path}: need {_size(need)}, have {_size(free)} free in "
                            f"{folder_of(path)}")


def check_space(path: PathLike, need: int) -> None:
    """Raise :class:`OutputSpaceError` when ``need`` bytes will not fit beside ``path``: more than the free space of
    its file system, or than the file size limit (``ulimit -f``). Run before any compute, so a run does not fail at
    its end (a file being replaced counts as used: its space is freed only by the final rename)."""
    limit = _file_size_limit()
    if limit is not None and need > limit:
        raise _space_error(path, need, "limit")
    try:
        free = shutil.disk_usage(folder_of(path)).free
    except OSError:
        return
    if need > free:
        raise _space_error(path, need, "free")


_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def reserve_space(fd: int, size: int, path: PathLike) -> None:
    """Allocate ``size`` bytes for the open temp file ``fd`` of the output ``path`` now, so writing it cannot run out of
    space later (and a memory map of it could never SIGBUS). A file system without ``fallocate`` gets a free-space
    check instead and a sparse file of the size."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno in _SPACE_ERRNOS:
            raise _space_error(path, size, "limit" if exc.errno == errno.EFBIG else "free") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    check_space(path, size)
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)


@contextlib.contextmanager
def space_errors(path: PathLike, need: int) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) or the file size limit (EFBIG) inside the block into
    :class:`OutputSpaceError` for the output ``path`` of ``need`` bytes (for writes done by libraries)."""
    try:
        yield
    except OutputSpaceError:
        raise
    except OSError as exc:
        if exc.errno not in _SPACE_ERRNOS:
            raise
        raise _space_error(path, need, "limit" if exc.errno == errno.EFBIG else "free") from None


def pwrite_all(fd: int, data: Any, offset: int, path: PathLike) -> None:
    """Write the C-contiguous buffer ``data`` at ``offset`` of ``fd`` in full (``pwrite`` may write less); a full
    disk or the file size limit raises :class:`OutputSpaceError` naming the output ``path``."""
    view = memoryview(data).cast("B")
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as exc:
            if exc.errno in _SPACE_ERRNOS:
                raise _space_error(path, offset + len(view), "limit" if exc.errno == errno.EFBIG else "free") from None
            raise
        view = view[n:]
        offset += n
