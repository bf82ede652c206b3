"""Fuzzing of every model file the package reads (issue #22): seeded mutations of small valid files -- zip- and
legacy-format ``.pth`` (raw bytes, and the pickle inside the zip), ``.safetensors`` (mostly its JSON header), a tiny
``.onnx`` tile network and a TensorRT engine sidecar -- each loaded through the public loaders in a child process
under an address-space limit. Each outcome must be a clean load or our ``SSCHSRError``: never another exception, a
crash (signal), a hang, or an allocation the limit stops (a ``MemoryError``, even one wrapped in our error).

One child loads a batch of files and prints a JSON line per case; a child that dies or hangs names the case it was
loading, and the rest of the batch goes to a new child. Re-run one case alone with
``PYTHONPATH=.:tests/faults python tests/faults/test_faults_fuzz_models.py --child KIND FILE``; explore beyond the CI
cases with ``SSCHSR_FUZZ_SEED=1 SSCHSR_FUZZ_SCALE=10``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from model_file_builders import (
    rewrite_zip_record,
    save_pth,
    save_safetensors_file,
    small_state_dict,
    tiny_onnx,
    training_checkpoint,
    write_engine,
)

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
#: seed and case-count multiplier: CI runs the defaults; SSCHSR_FUZZ_SEED / SSCHSR_FUZZ_SCALE explore further by hand
SEED = int(os.environ.get("SSCHSR_FUZZ_SEED", "20261204"))
_SCALE = float(os.environ.get("SSCHSR_FUZZ_SCALE", "1"))
#: cases per kind (about 400 in all; the whole test takes under a minute on 2 cores)
CASES = {k: max(1, round(n * _SCALE)) for k, n in
         {"pth_zip": 40, "pth_zip_pickle": 90, "pth_legacy": 90, "safetensors": 70, "onnx": 70, "sidecar": 40}.items()}
BATCH = 80
CHILD_TIMEOUT_S = 120
#: address space a child may add after its imports: a loader asking for more fails loudly instead of swapping
HEADROOM = 4 << 30


# ---------------------------------------------------------------------------------------------------------------------
# the child


def _steps(*steps) -> None:
    """Run every step; raise the first exception that is not ours, else the first of ours."""
    from sschsr_deploy.errors import SSCHSRError

    errors = []
    for step in steps:
        try:
            step()
        except BaseException as exc:  # noqa: B036 - sorted below
            errors.append(exc)
    foreign = [e for e in errors if not isinstance(e, SSCHSRError)]
    if foreign or errors:
        raise (foreign or errors)[0]


def _load(kind: str, path: str) -> None:
    """Load one file through the public loaders of its kind (what the CLI and Pipeline call)."""
    from sschsr_deploy.checkpoint import load_official_checkpoint, load_safetensors, read_checkpoint
    from sschsr_deploy.weights import load_model

    if kind.startswith("pth"):
        def read() -> None:
            sd = read_checkpoint(path)
            assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())
            for v in sd.values():  # touch every value: a tensor larger than its storage would surface here
                v.float().sum()

        # a small state dict does not fit the model: load_model ends in CheckpointError after its reads and checks
        _steps(read, lambda: load_official_checkpoint(path), lambda: load_model("tiny", path))
    elif kind == "safetensors":
        _steps(lambda: load_safetensors(path), lambda: load_model(path))
    elif kind == "onnx":
        from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, threads=1)
        b = backend.spec.batch_min
        h, w = backend.preferred_tile or (8, 8)
        inputs = [torch.rand(b, backend.bands, h, w)] + [torch.rand(b, 3, h, w) for _ in range(4)]
        backend.run(*inputs)
    elif kind == "sidecar":
        from sschsr_deploy.engine.sidecar import SystemInfo, check_compatible, read_sidecar, sha256_file
        from sschsr_deploy.runtime.backend_base import ExportSpec

        side = read_sidecar(path)
        system = SystemInfo("10.0.0", "NVIDIA H100", "9.0", {})
        # check_compatible, then what the TensorRT backend reads from the sidecar once the engine is deserialized
        _steps(lambda: check_compatible(side, system, engine_sha256=sha256_file(path)),
               lambda: ExportSpec.from_export(side.get("onnx") or {}, [-1, 31, 8, 8], 31, "engine").config())
    else:
        raise ValueError(kind)


def _child_main(args: list[str]) -> int:
    import resource
    import traceback

    import onnxruntime  # noqa: F401 - imported before the limit is set, like torch
    import safetensors  # noqa: F401

    from sschsr_deploy.errors import SSCHSRError

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.RLIM_INFINITY))
    cases = json.loads(Path(args[0]).read_text()) if len(args) == 1 else [[args[0], args[1]]]
    for kind, path in cases:
        print(json.dumps({"begin": path}), flush=True)
        t0 = time.perf_counter()
        try:
            _load(kind, path)
            result = {"outcome": "ok"}
        except SSCHSRError as exc:
            chain, e = [], exc
            while e is not None:
                chain.append(type(e).__name__)
                e = e.__cause__ or e.__context__
            memory = "MemoryError" in chain or "MemoryError" in str(exc) or "out of memory" in str(exc).lower()
            result = {"outcome": "memory" if memory else "error", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}
        except BaseException as exc:  # the defect this test looks for
            tb = traceback.format_exc().strip().splitlines()
            result = {"outcome": "other", "detail": f"{type(exc).__name__}: {str(exc)[:300]}", "where": tb[-4:]}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps({"case": path, **result}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# valid sources and mutations

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 31, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]


def _mutate(data: bytes, rng: random.Random, hot: int) -> tuple[str, bytes]:
    """One seeded mutation; ``hot``: the length of the part holding structure (headers, pickles), where most land."""
    b = bytearray(data)
    op = rng.choice(["bitflip", "overwrite", "truncate", "int", "int", "insert", "dup", "append"])

    def pos() -> int:
        return rng.randrange(min(hot, len(b)) if rng.random() < 0.8 else len(b))

    if op == "bitflip":
        for _ in range(rng.randint(1, 8)):
            p = pos()
            b[p] ^= 1 << rng.randrange(8)
    elif op == "overwrite":
        p, k = pos(), rng.randint(1, 16)
        b[p:p + k] = rng.randbytes(len(b[p:p + k]))
    elif op == "truncate":
        b = b[:rng.randrange(len(b))]
    elif op == "int":  # sizes, counts, offsets: a 1/2/4/8-byte field overwritten with an extreme value
        width = rng.choice([1, 2, 4, 8])
        p = pos()
        b[p:p + width] = (rng.choice(_INTERESTING) & ((1 << 8 * width) - 1)).to_bytes(width, "little")
    elif op == "insert":
        p = pos()
        b[p:p] = rng.randbytes(rng.randint(1, 64))
    elif op == "dup":
        p = pos()
        k = rng.randint(1, 256)
        b[p:p] = b[p:p + k] * rng.randint(1, 8)
    else:
        b += rng.randbytes(rng.randint(1, 4096))
    return op, bytes(b)


#: pickle fragments a hostile file would carry, inserted after the PROTO opcode (so they run, and leave their result
#: under what the pickle returns): allocations by argument, a deeply nested key, a huge memo index, codec tricks
_PICKLE_INJECTIONS = [
    b"c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\x00\x02\x85R",  # bytearray(8 GiB)
    b"ctorch\nTensor\n\x8a\x05\x00\x00\x00\x80\x00\x85R",  # torch.Tensor(2**31): 8 GiB
    b"ctorch\nFloatStorage\n\x8a\x05\x00\x00\x00\x80\x00\x85R",
    b"}N" + b"\x85" * 100_000 + b"K\x01s",  # {(((...),),): 1}, 100000 deep
    b"(N" + b"\x85" * 100_000 + b"\x91",  # frozenset({deep tuple})
    b"Nr\xff\xff\xff\x7f",  # LONG_BINPUT 2**31-1 (the C unpickler sizes its memo table by it)
    b"c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R",
    b"c__builtin__\nset\n]N" + b"\x85" * 100_000 + b"a\x85R",  # set([deep tuple])
]


def _inject(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    i = rng.randrange(len(_PICKLE_INJECTIONS))
    return f"inject {i}", data[:2] + _PICKLE_INJECTIONS[i] + data[2:]


def _json_mutation(text: str, rng: random.Random) -> str:
    """Replace one value of the sidecar with a value of another type (or deep nesting)."""
    side = json.loads(text)
    where = side if rng.random() < 0.5 else rng.choice([side["onnx"], side["build"], side])
    key = rng.choice(sorted(where))
    where[key] = rng.choice([None, -1, 0, 2**63, "x", [], {}, [[0, 1, 2]], {"a": 1}, "[" * 3, 1.5, True,
                             json.loads("[" * 50 + "]" * 50)])
    return json.dumps(side)


def _cases(d: Path) -> list[tuple[str, Path, str]]:
    """The mutated files: (kind, path, how it was made)."""
    import zipfile

    src = d / "src"
    src.mkdir()
    sd = small_state_dict()
    zip_pth = save_pth(training_checkpoint(sd), src / "zip.pth")
    legacy_pth = save_pth(training_checkpoint(sd), src / "legacy.pth", zip_format=False)
    meta = {"format": "pt", "preset": "tiny", "scale": "4", "bands": "31", "rgb_bands": "20,10,2",
            "batchnorm_mode": "running"}
    st = save_safetensors_file({**sd, "hsi_encoder.ConvBlock1.conv11.weight": torch.randn(4, 31, 1, 1)},
                               src / "w.safetensors", meta)
    onnx_path = tiny_onnx(src / "m.onnx")
    engine = write_engine(src / "m.engine")
    with zipfile.ZipFile(zip_pth) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
    st_bytes = st.read_bytes()
    sources = {
        "pth_zip": (zip_pth.read_bytes(), 1 << 30),
        "pth_zip_pickle": (pkl, len(pkl)),
        "pth_legacy": (legacy_pth.read_bytes(), 1 << 30),
        "safetensors": (st_bytes, 8 + int.from_bytes(st_bytes[:8], "little")),
        "onnx": (onnx_path.read_bytes(), 1 << 30),
        "sidecar": (engine.with_name(engine.name + ".json").read_bytes(), 1 << 30),
    }
    out = []
    for kind, n in CASES.items():
        data, hot = sources[kind]
        for i in range(n):
            rng = random.Random(f"{SEED}-{kind}-{i}")
            if kind == "sidecar" and rng.random() < 0.4:
                how, mutated = "json", _json_mutation(data.decode(), rng).encode()
            elif kind in ("pth_zip_pickle", "pth_legacy") and rng.random() < 0.2:
                how, mutated = _inject(data, rng)
            else:
                how, mutated = _mutate(data, rng, hot)
            if kind == "pth_zip_pickle":
                path = rewrite_zip_record(zip_pth, d / f"{kind}_{i:03d}.pth", "data.pkl", mutated)
            elif kind == "sidecar":
                path = d / f"{kind}_{i:03d}.engine"
                path.write_bytes(engine.read_bytes())
                path.with_name(path.name + ".json").write_bytes(mutated)
            else:
                ext = {"pth_zip": ".pth", "pth_legacy": ".pth", "safetensors": ".safetensors", "onnx": ".onnx"}[kind]
                path = d / f"{kind}_{i:03d}{ext}"
                path.write_bytes(mutated)
            out.append((kind, path, f"{kind} #{i} ({how}, seed '{SEED}-{kind}-{i}')"))
    # the valid sources themselves must load (the harness works, and the checks do not refuse real files)
    out += [("pth_zip", zip_pth, "valid zip"), ("pth_legacy", legacy_pth, "valid legacy"),
            ("safetensors", st, "valid safetensors"), ("onnx", onnx_path, "valid onnx"),
            ("sidecar", engine, "valid sidecar")]
    return out


def _run_children(cases: list[tuple[str, Path, str]], d: Path) -> dict[str, dict]:
    """Every case's result line; a case that killed or hung its child gets outcome 'crash' / 'hang'."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    results: dict[str, dict] = {}
    pending = [(k, str(p)) for k, p, _ in cases]
    n = 0
    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        listing = d / f"batch_{n}.json"
        n += 1
        listing.write_text(json.dumps(batch))
        begun = None
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", str(listing)], capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT_S, env=env, cwd=ROOT)
            out, died = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            died = "hang"
            proc = None
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if "begin" in rec:
                begun = rec["begin"]
            else:
                results[rec["case"]] = rec
                begun = None
        if died != 0:
            stderr = proc.stderr[-1500:] if proc is not None else ""
            if begun is None:  # died before its first case (import error): report the batch
                raise AssertionError(f"fuzz child failed before loading any case (exit {died}):\n{stderr}")
            results[begun] = {"case": begun, "outcome": "hang" if died == "hang" else "crash",
                              "detail": f"child exit status {died}", "where": stderr.splitlines()[-6:]}
            done = {c for c in results}
            pending = [c for c in batch if c[1] not in done] + pending
    return results


def test_fuzzed_model_files_load_cleanly_or_raise_our_error(tmp_path):
    t0 = time.perf_counter()
    cases = _cases(tmp_path)
    results = _run_children(cases, tmp_path)
    bad, slow, counts = [], [], {}
    for kind, path, how in cases:
        rec = results.get(str(path), {"outcome": "missing"})
        counts[(kind, rec["outcome"])] = counts.get((kind, rec["outcome"]), 0) + 1
        # the valid small state dicts read fine, then do not fit the network (that is all load_model can say)
        valid_ok = rec["outcome"] == "ok" or any(m in str(rec.get("detail")) for m in
                                                 ("does not match the model", "unknown checkpoint layout"))
        if rec["outcome"] not in ("ok", "error") or (how.startswith("valid") and not valid_ok):
            bad.append(f"{how}: {path}\n    {rec['outcome']}: {rec.get('detail')}\n    {rec.get('where', '')}")
        if rec.get("seconds", 0) > 10:
            slow.append(f"{how}: {rec['seconds']} s")
    summary = ", ".join(f"{k}:{o}={c}" for (k, o), c in sorted(counts.items()))
    print(f"{len(cases)} cases in {time.perf_counter() - t0:.1f} s: {summary}")
    assert not bad, f"{len(bad)} of {len(cases)} fuzzed model files escaped our errors:\n" + "\n".join(bad[:20])
    assert not slow, "cases that took more than 10 s (a near-hang):\n" + "\n".join(slow)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    sys.exit("usage: test_faults_fuzz_models.py --child (LISTING.json | KIND FILE)")
