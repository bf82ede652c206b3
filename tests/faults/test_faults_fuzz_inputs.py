"""Fuzzing of every input format the package reads: seeded mutations (bit flips, byte overwrites, truncation, header
edits, appended garbage) of small valid files, each read in a child process, must give a clean read or our
InputValidationError -- never another exception, a crash (signal) or a hang.

One child reads a whole batch of files and prints a line per case; a child that dies or hangs names the case it was
reading, and the rest of the batch is read by a new child. Re-run one case alone (it prints its outcome) with
``python tests/faults/test_faults_fuzz_inputs.py [--rgb] FILE``; more cases with ``SSCHSR_FUZZ_SEED=1
SSCHSR_FUZZ_SCALE=10``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: seed and case-count multiplier: CI runs the defaults; SSCHSR_FUZZ_SEED / SSCHSR_FUZZ_SCALE explore further by hand
SEED = int(os.environ.get("SSCHSR_FUZZ_SEED", "20261204"))
_SCALE = float(os.environ.get("SSCHSR_FUZZ_SCALE", "1"))
HSI_SHAPE = (12, 10, 5)  # H x W x C: the band axis clearly the smallest, so the band order is detected

# cases per source file; the MAT v5 reader starts a process per file, so its cases cost most
CASES = {"npy": 60, "npz": 50, "mat5": 20, "mat5z": 10, "mat73": 50, "h5": 50, "envi_hdr": 60, "envi_img": 40,
         "tiff": 40, "tiff_zlib": 40, "tiff_pages": 40, "png": 40, "jpg": 40, "rgb_tif": 40}
CASES = {k: max(1, round(v * _SCALE)) for k, v in CASES.items()}
HEADER_BYTES = {"mat73": 2048, "h5": 2048}  # where "header" mutations land (default: the first 512 bytes)
CHILD_TIMEOUT_S = 90


# ---------------------------------------------------------------------------------------------------------------------
# the child: reads files, one JSON line per case (run as a script; imports only sschsr_deploy.io, not torch)


def _child_main(args: list[str]) -> int:
    import traceback
    import types

    pkg = types.ModuleType("sschsr_deploy")  # the package's __init__ imports torch: not needed to read files
    pkg.__path__ = [str(ROOT / "sschsr_deploy")]
    sys.modules.setdefault("sschsr_deploy", pkg)
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.io.hsi import read_hsi
    from sschsr_deploy.io.rgb import read_rgb

    rgb = args[0] == "--rgb"
    for path in args[1:] if rgb else args:
        print(json.dumps({"begin": path}), flush=True)
        try:
            if rgb:
                img = read_rgb(path)
                assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape) > 0, img.shape
                assert img.dtype in (np.uint8, np.uint16) or img.dtype.kind == "f", img.dtype
            else:
                with read_hsi(path) as cube:
                    h, w, c = cube.shape
                    assert min(cube.shape) > 0 and cube.dtype.kind in "iuf", (cube.shape, cube.dtype)
                    block = cube.read(slice(0, 32), slice(0, 32), slice(0, 64))  # bounded, whatever the header says
                    assert block.shape == (min(h, 32), min(w, 32), min(c, 64)), (block.shape, cube.shape)
            result = {"outcome": "ok"}
        except InputValidationError as exc:
            result = {"outcome": "error", "detail": str(exc)[:200]}
        except BaseException as exc:  # the defect this test looks for
            tb = traceback.format_exc().strip().splitlines()
            result = {"outcome": "other", "detail": f"{type(exc).__name__}: {str(exc)[:200]}", "where": tb[-3:]}
        print(json.dumps({"case": path, **result}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# valid sources


def _sources(d: Path) -> dict[str, Path]:
    import scipy.io
    import tifffile

    from sschsr_deploy.io import write_hsi, write_rgb

    rng = np.random.default_rng(0)
    cube = rng.random(HSI_SHAPE).astype(np.float32)
    out = {}
    np.save(d / "src.npy", cube)
    out["npy"] = d / "src.npy"
    np.savez(d / "src.npz", hsi=cube, other=np.arange(4))
    out["npz"] = d / "src.npz"
    scipy.io.savemat(d / "src5.mat", {"hsi": cube})
    out["mat5"] = d / "src5.mat"
    scipy.io.savemat(d / "src5z.mat", {"hsi": cube, "note": np.arange(3.0)}, do_compression=True)
    out["mat5z"] = d / "src5z.mat"
    write_hsi(d / "src73.mat", cube, format="mat73")
    out["mat73"] = d / "src73.mat"
    with h5py.File(d / "src.h5", "w") as f:
        f.create_dataset("hsi", data=cube, chunks=(4, 10, 5), compression="gzip")
        f.create_dataset("wavelengths", data=np.linspace(400, 700, 5))
    out["h5"] = d / "src.h5"
    write_hsi(d / "src_envi.img", cube, format="envi")
    out["envi"] = d / "src_envi.img"
    tifffile.imwrite(d / "src.tif", cube, photometric="minisblack", planarconfig="contig")
    out["tiff"] = d / "src.tif"
    tifffile.imwrite(d / "src_zlib.tif", cube, photometric="minisblack", planarconfig="contig", compression="zlib",
                     rowsperstrip=4)
    out["tiff_zlib"] = d / "src_zlib.tif"
    tifffile.imwrite(d / "src_pages.tif", cube.transpose(2, 0, 1), photometric="minisblack", compression="zlib")
    out["tiff_pages"] = d / "src_pages.tif"
    img = (rng.random((24, 20, 3)) * 255).astype(np.uint8)
    for ext in ("png", "jpg"):
        write_rgb(d / f"src.{ext}", img)
        out[ext] = d / f"src.{ext}"
    write_rgb(d / "src_rgb.tif", img.astype(np.uint16) * 257)
    out["rgb_tif"] = d / "src_rgb.tif"
    return out


# ---------------------------------------------------------------------------------------------------------------------
# mutations


def _mutate(data: bytes, rng: random.Random, header: int) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = rng.choice(["bitflip", "overwrite", "truncate", "header", "append"])
    if kind == "bitflip":
        for _ in range(rng.randint(1, 8)):
            p = rng.randrange(len(b))
            b[p] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        p, k = rng.randrange(len(b)), rng.randint(1, 16)
        b[p:p + k] = rng.randbytes(len(b[p:p + k]))
    elif kind == "truncate":
        b = b[:rng.randrange(len(b))]
    elif kind == "header":  # fields near the start: sizes, offsets, type codes
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(min(header, len(b)))
            b[p] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
    else:
        b += rng.randbytes(rng.randint(1, 4096))
    return kind, bytes(b)


_ENVI_VALUES = ["-1", "0", "", "abc", "99999999999", "1e3", "2.5", "{", "bil", "bsq", "bip", "7", "12", "5", "1",
                "2", "3", "4", "-5", "\x00", "\u00e9"]


def _mutate_envi_header(text: str, rng: random.Random) -> tuple[str, bytes]:
    lines = text.splitlines()
    kind = rng.choice(["value", "value", "drop", "dup", "bytes"])
    i = rng.randrange(1, len(lines))
    if kind == "value":
        key = lines[i].split("=")[0]
        lines[i] = f"{key}= {rng.choice(_ENVI_VALUES)}"
    elif kind == "drop":
        del lines[i]
    elif kind == "dup":
        lines.insert(rng.randrange(1, len(lines)), lines[i].split("=")[0] + "= " + rng.choice(_ENVI_VALUES))
    else:
        return _mutate(text.encode(), rng, 512)
    return kind, ("\n".join(lines) + "\n").encode()


def _cases(src: dict[str, Path], d: Path) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str, Path]]]:
    """Writes the mutated files; returns (hsi cases, rgb cases) as (source kind, mutation, path)."""
    rng = random.Random(SEED)
    hsi, rgb = [], []
    for kind, n in CASES.items():
        for i in range(n):
            if kind.startswith("envi"):
                hdr_text = src["envi"].with_suffix(".hdr").read_text()
                data = src["envi"].read_bytes()
                if kind == "envi_hdr":
                    how, hdr_bytes = _mutate_envi_header(hdr_text, rng)
                else:
                    how, data = _mutate(data, rng, 512)
                    hdr_bytes = hdr_text.encode()
                path = d / f"{kind}_{i:03d}.img"
                path.write_bytes(data)
                path.with_suffix(".hdr").write_bytes(hdr_bytes)
                hsi.append((kind, how, path.with_suffix(".hdr")))
                continue
            source = src[kind]
            how, data = _mutate(source.read_bytes(), rng, HEADER_BYTES.get(kind, 512))
            path = d / f"{kind}_{i:03d}{source.suffix}"
            path.write_bytes(data)
            (rgb if kind in ("png", "jpg", "rgb_tif") else hsi).append((kind, how, path))
    return hsi, rgb


# ---------------------------------------------------------------------------------------------------------------------
# the parent: batches, resumes after a dead child


def _run_batch(paths: list[str], rgb: bool) -> tuple[dict[str, dict], list[str]]:
    """Read ``paths`` in child processes; returns (outcome per path, failures: crashes and hangs)."""
    results: dict[str, dict] = {}
    failures: list[str] = []
    todo = list(paths)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while todo:
        cmd = [sys.executable, "-P", __file__, *(["--rgb"] if rgb else []), *todo]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
            out, err, rc, hung = proc.stdout, proc.stderr, proc.returncode, False
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err, rc, hung = "", None, True
        current = None
        for line in out.splitlines():
            msg = json.loads(line)
            if "begin" in msg:
                current = msg["begin"]
            else:
                results[msg.pop("case")] = msg
                current = None
        if rc == 0 and not hung:
            break
        if current is None:  # died before the first case or after the last
            failures.append(f"reader child exited with {rc} outside a case; stderr: {err[-500:]}")
            break
        why = "hung" if hung or rc is None else f"was killed by signal {-rc}" if rc < 0 else f"exited with {rc}"
        failures.append(f"{current}: the reader {why} (re-run it alone: see this file's docstring)")
        results[current] = {"outcome": "crash"}
        todo = todo[todo.index(current) + 1:]
    return results, failures


@pytest.mark.faults
def test_fuzzed_inputs_read_cleanly_or_raise_input_validation_error(tmp_path):
    t0 = time.perf_counter()
    src = _sources(tmp_path)
    hsi, rgb = _cases(src, tmp_path)
    results, failures = _run_batch([str(p) for _, _, p in hsi], rgb=False)
    rgb_results, rgb_failures = _run_batch([str(p) for _, _, p in rgb], rgb=True)
    results.update(rgb_results)
    failures += rgb_failures
    tally: dict[str, dict[str, int]] = {}
    for kind, how, path in hsi + rgb:
        r = results.get(str(path), {"outcome": "missing"})
        tally.setdefault(kind, {}).setdefault(r["outcome"], 0)
        tally[kind][r["outcome"]] += 1
        if r["outcome"] not in ("ok", "error", "crash"):
            failures.append(f"{path} ({kind}, {how}): {r['outcome']}: {r.get('detail')} at {r.get('where')}")
    print(f"{len(hsi) + len(rgb)} cases in {time.perf_counter() - t0:.1f} s: {tally}")
    assert not failures, "\n".join(failures)
    # the mutations do reach the parsers: most formats see both clean reads and refusals
    assert sum(t.get("error", 0) for t in tally.values()) > len(hsi + rgb) // 4, tally


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
