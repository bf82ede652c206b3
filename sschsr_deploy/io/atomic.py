"""Atomic outputs: temp files beside the target with their space reserved, written through, fsynced, then renamed
under a folder lock, the JSON sidecar last. Exit codes are those of :mod:`sschsr_deploy.cli`.

The commit protocol of an output ``out.npy`` (:class:`~sschsr_deploy.io.hsi.HSIWriter`, ``Pipeline.run_files``):

1. Before any compute (``run_files`` knows the output's shape from the inputs' headers) and again when the writer
   opens: temp files of dead earlier runs in the output folder are removed (:func:`clean_stale_temps`) and the
   output's size is checked against the free space and the file size limit (:mod:`sschsr_deploy.io.space`):
   :class:`~sschsr_deploy.errors.OutputSpaceError` ``not enough space for out.npy: need N, have M`` (CLI exit 1).
2. The data go to a hidden temp file ``.out.<pid>-<host>-<random>.partial.npy`` in the same folder (same file system,
   so the renames are atomic). Its full size is reserved first (``posix_fallocate``; where the file system refuses,
   the free space is checked instead), the header written, then the rows with ``pwrite`` at their offsets: no
   memory map, so a full disk is an error (never a SIGBUS) and the output's pages are not held by the process.
   HDF5 / MAT v7.3: the library writes, into space reserved under it (trimmed at the end); .npz / MAT v5: a temp .npy
   as above, then the whole file at step 3. An output with NaN / inf values is refused here
   (:class:`~sschsr_deploy.errors.NonFiniteOutputError`, CLI exit 2), so it is never committed.
3. Every temp file is completed and fsynced; then the sidecar is written completely to its own temp file (fsynced),
   recording a ``run_id`` and each output file's name, size and SHA-256 (``output_files``). Any failure up to here --
   an error, a failed sidecar write, SIGINT / SIGTERM / SIGHUP -- removes the temp files and leaves the previous
   output and its sidecar untouched.
4. Under an exclusive ``flock`` on the output folder (two runs committing to one output cannot interleave: the last
   one wins with its own sidecar) and with SIGINT / SIGTERM / SIGHUP held until the end: the output temp file(s) are
   renamed onto the target(s) (ENVI: data, then header), then the sidecar; then the folder is fsynced. A signal that
   came during step 4 is acted on right after it (the new pair is then complete).

What a crash leaves (SIGKILL, power loss, a failing disk):

- before step 4: the previous output and sidecar, untouched, plus hidden temp files. The next run (or writer) in that
  folder removes them: their name records the owner's pid and host, and a temp file whose owner process no longer
  exists on this host is stale; one whose owner cannot be told (another host, an older name) and older than an hour
  is reported in a warning.
- inside step 4 (a window of a few renames): the new output beside the previous run's sidecar (or none). The
  sidecar's recorded sizes and SHA-256 then do not match the output, which :func:`verify_sidecar` reports. ENVI: a
  crash between its two renames leaves the new data under the previous header.
- after step 4: the new output and its sidecar.

Writing without a sidecar (``write_hsi``, ``commit()`` without ``sidecar``, ``run_files(sidecar=False)``) leaves an
existing sidecar of that name as it is: it then no longer matches, which :func:`verify_sidecar` reports.

Signals (:mod:`sschsr_deploy.io.signals`): the CLI turns SIGTERM / SIGHUP into ``Terminated`` (exit 143 / 129),
like SIGINT (KeyboardInterrupt, exit 130). Without the CLI, an open ``HSIWriter`` does the same for SIGTERM / SIGHUP
while they have their default action (main thread only): the temp files are removed and, uncaught, ``Terminated`` (a
``SystemExit``) ends the process with status 128 + the signal number. An application with its own handlers keeps
them; it should raise in them (or use ``terminate_on_signals``) to get the cleanup.

Testing hook: with the environment variable ``SSCHSR_DEPLOY_FAULT_POINT`` set to ``before-output`` (inputs read, no
temp file yet), ``writing`` (the first rows written) or ``renamed`` (inside step 4, output renamed, sidecar not yet),
the process stops itself there (SIGSTOP) so a test can signal it at that point (tests/faults/test_faults_output.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.signals import deferred_signals, fault_point
from sschsr_deploy.io.space import folder_of

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_writable",
    "clean_stale_temps",
    "commit_files",
    "file_sha256",
    "fsync_file",
    "sidecar_meta",
    "sidecar_path",
    "temp_path_for",
    "verify_sidecar",
    "write_sidecar",
]

log = logging.getLogger(__name__)

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


# .<stem>.<pid>-<host>-<random>.partial<ext>; the older .<stem>.<random 8 hex>.partial<ext> is recognised too
_TEMP_RE = re.compile(
    r"^\.(?P<stem>.+)\.(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{4})-[0-9a-f]{6}|[0-9a-f]{8})\.partial(?P<ext>\.[^.]+)?$"
)
_REPORT_UNKNOWN_AFTER_S = 3600.0


def _host_tag() -> str:
    """4 hex digits naming this host in temp names: a pid means something only on the host that wrote it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]


def temp_path_for(path: PathLike) -> Path:
    """A fresh hidden temp name in the target's directory that keeps the target's extension (libraries look at it)
    and records the writer's pid and host (so a later run can tell a dead run's leftover from a live run's file)."""
    p = Path(path)
    suffix = p.suffix
    stem = p.name[: -len(suffix)] if suffix else p.name
    return p.with_name(f".{stem}.{os.getpid()}-{_host_tag()}-{secrets.token_hex(3)}.partial{suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: PathLike, *, older_than: float | None = None) -> list[Path]:
    """Remove the temp files of dead runs (SIGKILL, power loss) in ``folder``; returns the removed paths.

    Only names of our pattern (:func:`temp_path_for`) are considered. One is stale when it names this host and a pid
    that no longer exists (and, with ``older_than``, was last written before that time); it is removed with a warning.
    Where the owner cannot be told (another host on a shared file system, the older naming without a pid) a file older
    than an hour is only reported: a live run elsewhere may be writing it.
    """
    removed: list[Path] = []
    host, now = _host_tag(), time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if older_than is not None and mtime >= older_than:
            continue
        path = Path(entry.path)
        if m["pid"] is not None and m["host"] == host:
            pid = int(m["pid"])
            if pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove the stale temp file %s: %s", path, exc)
                continue
            log.warning("removed the stale temp file %s (left by process %d, which no longer runs)", path, pid)
            removed.append(path)
        elif now - mtime > _REPORT_UNKNOWN_AFTER_S:
            log.warning("found the leftover temp file %s, unchanged for %.1f h and written by %s: delete it if no run "
                        "is writing there", path, (now - mtime) / 3600,
                        "another host" if m["pid"] is not None else "an older version")
    return removed


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


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder: concurrent commits into it run one after the other (best effort: some
    network file systems refuse locks on folders; then there is no lock)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def commit_files(pairs: Sequence[tuple[PathLike, PathLike]], sidecar: tuple[PathLike, PathLike] | None = None) -> None:
    """Step 4 of the protocol: rename the complete, fsynced temp files onto their targets in order, then the sidecar's,
    under the folder lock and with SIGINT / SIGTERM / SIGHUP held; then fsync the folder."""
    moves = [(Path(t), Path(f)) for t, f in pairs]
    folder = folder_of(moves[-1][1] if moves else Path(sidecar[1]) if sidecar else ".")
    with deferred_signals(), _folder_lock(folder):
        for tmp, final in moves:
            os.replace(tmp, final)
        fault_point("renamed")
        if sidecar is not None:
            os.replace(sidecar[0], sidecar[1])
        _fsync_dir(folder)


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


def describe_files(pairs: Sequence[tuple[PathLike, PathLike]]) -> list[dict[str, Any]]:
    """``output_files`` of a sidecar: name (of the target), size and SHA-256 of each (temp file, target) pair."""
    return [{"name": Path(final).name, "bytes": os.stat(tmp).st_size, "sha256": file_sha256(tmp)}
            for tmp, final in pairs]


def sidecar_meta(output: PathLike, info: dict[str, Any], files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The sidecar of ``output``: ``info`` plus the producing environment, a fresh ``run_id`` and ``output_files``.

    Added keys: ``output`` (file name), ``package`` (sschsr-deploy version), ``created_utc``, ``python``,
    ``platform`` and, when importable, ``torch`` (keys in ``info`` win over these); then ``run_id`` and, when
    ``files`` is given, ``output_files`` (:func:`describe_files`), which let :func:`verify_sidecar` tell whether the
    sidecar belongs to the output beside it.
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
    meta["run_id"] = uuid.uuid4().hex
    if files is not None:
        meta["output_files"] = files
    return meta


def write_json_file(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (a temp file) completely and fsync it."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_sidecar(output: PathLike, info: dict[str, Any]) -> Path:
    """Write the JSON sidecar of an existing ``output`` atomically (:func:`sidecar_meta`, its ``output_files`` read
    from ``output``). The pipeline writes its sidecars through ``HSIWriter.commit(sidecar=...)`` instead, which
    renames output and sidecar together."""
    return atomic_write_json(sidecar_path(output), sidecar_meta(output, info, describe_files([(output, output)])))


def verify_sidecar(output: PathLike) -> list[str]:
    """What is wrong between ``output`` and its sidecar: ``[]`` when every file the sidecar lists exists with the
    recorded size and SHA-256 (the pair was committed together), else one line per problem."""
    out = Path(output)
    side = sidecar_path(out)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        return [f"{out.name} has no sidecar ({side.name})"]
    except (OSError, ValueError) as exc:
        return [f"{side.name} is unreadable: {exc}"]
    files = meta.get("output_files") if isinstance(meta, dict) else None
    if not files:
        return [f"{side.name} does not record the output's size and SHA-256"]
    problems = []
    for item in files:
        path = out.with_name(str(item.get("name")))
        if not path.is_file():
            problems.append(f"{path.name} is missing")
        elif path.stat().st_size != item.get("bytes") or file_sha256(path) != item.get("sha256"):
            problems.append(f"{path.name} does not match {side.name} (another run's output or sidecar)")
    return problems
