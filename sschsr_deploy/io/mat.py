"""MATLAB files: v5 ``.mat`` (``scipy.io``; a variable read whole, written whole at commit, 2 GiB per variable) and
v7.3 (HDF5 with MATLAB's header in the user block and the column-major axes reversed; read lazily, written by rows).

Metadata: v7.3 files as HDF5 (:mod:`.hdf5`: attributes of the dataset, band-centre vectors); v5 files hold it as
variables beside the cube, named as in :data:`~sschsr_deploy.io.metadata.ATTRIBUTE_NAMES` (``wavelength``,
``fwhm``, ``nodata``, ``geotransform`` numeric; ``crs``, ``description``, ``wavelength_units`` char; ``band_names``
a cell), read in the same child process as the cube.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _cube_from_array, _pick_variable
from sschsr_deploy.io.hdf5 import Hdf5Sink, read_dataset
from sschsr_deploy.io.metadata import VARIABLE_NAMES, metadata_from_variables, variables_from_metadata
from sschsr_deploy.io.sink import BufferedSink

_MAT73_USERBLOCK = 512


def read_mat5(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A MATLAB v5 file's variable ``variable`` (default: the only 3-D one), loaded.

    SciPy parses the file in a child process (:mod:`._mat5_worker`), which sends the array back through a pipe: its
    compiled parser can crash the process (SIGSEGV / SIGBUS) on corrupt files (a few in a thousand randomly mutated
    files), and a crashed child is reported as a corrupt file. The cost is the child's start and its import of
    SciPy, once per file. Measured on 2 CPU cores, 256 x 256 x 31 files: float32 (8 MiB) 0.27 s when idle, 0.44-0.70 s
    under full load, instead of 0.002 s in-process; float32 zlib-compressed 0.70 s instead of 0.07 s (loaded);
    512 x 512 x 31 float64 (62 MiB) 0.84 s instead of 0.05 s (loaded). The array is held twice while it is handed over
    (once in each process).
    """
    with _Mat5Process(path) as worker:
        listing = worker.variables()
        info = {name: (tuple(shape), _MAT_CLASSES.get(cls, "O")) for name, shape, cls in listing}
        name = _pick_variable(path, info, variable)
        wanted = [n for n, shape, _ in listing
                  if n != name and n in VARIABLE_NAMES and int(np.prod(shape)) <= _META_MAX]
        values = worker.small_values(wanted) if wanted else {}
        arr = worker.load(name)
    meta = metadata_from_variables({k: np.asarray(v) if isinstance(v, list) and not any(isinstance(x, str) for x in v)
                                    else v for k, v in values.items()}, str(path))
    return _cube_from_array(arr, path, "mat", name, layout, bands, lazy=False, metadata=meta)


_META_MAX = 1 << 16  # elements of a variable read as metadata


_WORKER = Path(__file__).with_name("_mat5_worker.py")


class _Mat5Process:
    """One run of :mod:`._mat5_worker` on ``path``: lists the variables, then loads one (or none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stderr = tempfile.TemporaryFile()
        # -P: the worker's folder (this package) is not put on sys.path; only numpy and scipy are imported there
        self.proc = subprocess.Popen([sys.executable, "-P", str(_WORKER), str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr)

    def variables(self) -> list[tuple[str, tuple[int, ...], str]]:
        return [(str(n), tuple(int(s) for s in shape), str(c)) for n, shape, c in self._message()["vars"]]

    def small_values(self, names: list[str]) -> dict[str, Any]:
        """The metadata variables ``names`` as the worker sends them (numbers as lists, text, lists of text)."""
        self._send({"meta": names})
        values = self._message().get("meta")
        return values if isinstance(values, dict) else {}

    def load(self, name: str) -> np.ndarray:
        self._send(name)
        head = self._message()
        dtype, shape = np.dtype(head["dtype"]), tuple(int(s) for s in head["shape"])
        arr = np.empty(shape[::-1] if head["fortran"] else shape, dtype)
        buf = memoryview(arr).cast("B") if arr.size else memoryview(b"")
        got = 0
        while got < len(buf):
            n = self.proc.stdout.readinto(buf[got:])  # type: ignore[union-attr]
            if not n:
                raise self._died()
            got += n
        if self.proc.wait() != 0:
            raise self._died()
        return arr.T if head["fortran"] else arr

    def _send(self, name: str | dict[str, Any] | None) -> None:
        try:
            self.proc.stdin.write(json.dumps(name).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError:  # the worker is gone
            raise self._died() from None

    def _message(self) -> dict[str, Any]:
        line = self.proc.stdout.readline(1 << 24)  # type: ignore[union-attr]
        try:
            msg = json.loads(line)
        except ValueError:
            raise self._died() from None
        if "fatal" in msg:  # the worker could not start its parser: not the file's fault
            raise RuntimeError(f"the MATLAB v5 reader process failed: {msg['fatal']}")
        if "error" in msg:
            raise InputValidationError(
                f"cannot read {self.path} as MATLAB v5 .mat: {msg['error']} (truncated or corrupt file?)"
            )
        return msg

    def _died(self) -> InputValidationError:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if rc < 0:
            sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            what = f"SciPy's MAT v5 parser crashed ({sig})"
        else:
            self.stderr.seek(0)
            tail = self.stderr.read()[-300:].decode(errors="replace").strip().splitlines()
            what = f"the MAT v5 reader process exited with status {rc}" + (f" ({tail[-1]})" if tail else "")
        return InputValidationError(f"cannot read {self.path} as MATLAB v5 .mat: {what} (corrupt file?)")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def __enter__(self) -> _Mat5Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_MAT_CLASSES = {
    "double": "f8", "single": "f4", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
    "int32": "i4", "uint32": "u4", "int64": "i8", "uint64": "u8", "logical": "?",
}


def list_mat5(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a MATLAB v5 file's variables (parsed in a child process, as :func:`read_mat5`)."""
    with _Mat5Process(path) as worker:
        return {name: shape for name, shape, _ in worker.variables()}


class Mat5Sink(BufferedSink):
    """Writes the whole array as the variable ``variable`` of a MATLAB v5 file at commit (refused from 2 GiB)."""

    def open(self) -> None:
        if self.dtype.itemsize * int(np.prod(self.disk_shape)) >= 2**31:
            raise InputValidationError(
                f"output of {np.prod(self.disk_shape) * self.dtype.itemsize / 2**30:.1f} GiB is too large for a "
                "MATLAB v5 .mat file (2 GiB per variable); use --format mat73 (MATLAB v7.3)"
            )
        super().open()

    def save_whole(self, tmp: Path, data: np.ndarray) -> None:
        import scipy.io

        variables = {k: (np.array(v, dtype=object) if isinstance(v, list) else v)  # a list of text: a cell array
                     for k, v in variables_from_metadata(self.metadata).items() if k != self.variable}
        scipy.io.savemat(tmp, {**variables, self.variable: data}, do_compression=False, appendmat=False)


def read_mat73(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A MATLAB v7.3 file's variable ``variable`` (default: the only 3-D one), lazily (an HDF5 dataset)."""
    return read_dataset(path, variable, layout, bands, "mat73", "MATLAB v7.3 .mat", matlab_order=True)


def _mat73_header() -> bytes:
    """The 128-byte MATLAB header MATLAB writes into the HDF5 user block of a v7.3 file."""
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    head = text.encode("ascii")[:116].ljust(116, b" ")
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"


class Mat73Sink(Hdf5Sink):
    """Writes a MATLAB v7.3 file: an HDF5 dataset with MATLAB's axes reversed, its class attribute and the MATLAB
    header in the user block."""

    userblock = _MAT73_USERBLOCK

    def dataset_shape(self) -> tuple[int, ...]:
        return self.disk_shape[::-1]

    def chunks(self, shape: tuple[int, ...]) -> Any:
        return True

    def open(self) -> None:
        super().open()
        self.arr.attrs["MATLAB_class"] = np.bytes_(
            {"f4": "single", "f8": "double", "u1": "uint8", "u2": "uint16", "i2": "int16"}.get(
                self.dtype.str[1:], "single"
            )
        )

    def store(self, y0: int, block: np.ndarray) -> None:
        n = block.shape[0]
        # MATLAB's column-major array = the reversed axes in HDF5
        if self.layout == "hwc":
            self.arr[:, :, y0:y0 + n] = block.transpose(2, 1, 0)
        else:
            self.arr[:, y0:y0 + n, :] = block.transpose(1, 0, 2)

    def finalize_file(self, tmp: Path) -> None:
        with open(tmp, "r+b") as f:
            f.write(_mat73_header())
