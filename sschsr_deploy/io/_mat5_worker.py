"""Child process that parses a MATLAB v5 file for :func:`sschsr_deploy.io.mat.read_mat5`.

SciPy's MAT v5 parser (compiled code) can crash the process (SIGSEGV / SIGBUS) on corrupt files, so it runs here, in
a process of its own, started by file path with ``python -P`` (only numpy and scipy are imported, not this package).

Protocol, on stdout: one JSON line ``{"vars": [[name, shape, class], ...]}`` (or ``{"error": "..."}``); then the
parent may ask for small metadata variables with a JSON line ``{"meta": [names]}`` on stdin, answered by one JSON line
``{"meta": {name: value}}`` (numbers as a flat list, a char array as a string, a cell of char arrays as a list of
strings; variables that cannot be read are left out), any number of times; then it writes the name of the variable to
load as a JSON line (``null``: none), and this process answers with one JSON line
``{"shape": [...], "dtype": "<f4", "fortran": bool}`` and the raw bytes, or ``{"error": ...}``, and exits.
"""

import json
import sys


def _reply(obj: dict) -> None:
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


def main(path: str) -> int:
    try:
        import numpy as np
        import scipy.io
    except Exception as exc:  # not the file's fault: the parent reports an internal error
        _reply({"fatal": f"{type(exc).__name__}: {exc}"})
        return 4
    try:
        found = [[name, [int(s) for s in shape], cls] for name, shape, cls in scipy.io.whosmat(path)]
    except Exception as exc:  # every parser error is a fact about the file: reported to the parent
        _reply({"error": f"{type(exc).__name__}: {exc}"})
        return 3
    _reply({"vars": found})
    name = json.loads(sys.stdin.readline() or "null")
    while isinstance(name, dict):
        _reply({"meta": {n: v for n in name.get("meta", []) if (v := _small_value(path, n)) is not None}})
        name = json.loads(sys.stdin.readline() or "null")
    if not name:
        return 0
    try:
        arr = np.asarray(scipy.io.loadmat(path, variable_names=[name])[name])
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"variable {name!r} is not a numeric array (a MATLAB char, cell, struct or object)")
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr)
        fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    except Exception as exc:
        _reply({"error": f"{type(exc).__name__}: {exc}"})
        return 3
    _reply({"shape": list(arr.shape), "dtype": arr.dtype.str, "fortran": fortran})
    flat = memoryview(arr.reshape(-1, order="F" if fortran else "C")).cast("B")
    for start in range(0, len(flat), 1 << 24):
        sys.stdout.buffer.write(flat[start:start + (1 << 24)])
    sys.stdout.buffer.flush()
    return 0


def _text(value):
    """A MATLAB char array (loadmat: an array of row strings) as one string, else None."""
    if getattr(value, "dtype", None) is not None and value.dtype.kind == "U":
        return "\n".join(str(row) for row in value.reshape(-1))
    return None


def _small_value(path: str, name: str):
    """The variable ``name`` as JSON-able data: numbers (a flat list), text, or a list of texts (a cell array of char
    arrays); None when it is none of these or cannot be read."""
    import scipy.io

    try:
        value = scipy.io.loadmat(path, variable_names=[name]).get(name)
        if value is None:
            return None
        if value.dtype.kind in "biuf":
            return [float(v) for v in value.reshape(-1, order="F")]
        if value.dtype.kind == "U":
            return _text(value)
        if value.dtype.kind == "O":  # a cell array: each cell a char array
            texts = [_text(v) if getattr(v, "size", 0) else "" for v in value.reshape(-1, order="F")]
            return texts if all(t is not None for t in texts) else None
    except Exception:  # noqa: BLE001 - metadata is optional; a damaged file is reported when the cube is loaded
        return None
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
