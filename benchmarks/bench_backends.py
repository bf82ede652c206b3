#!/usr/bin/env python
"""Per-tile latency and throughput of the SSC-HSR network on each backend, same tile, same weights, same device.

Backends: PyTorch eager (the op layer's automatic kernel choice: native C++/CUDA where built, else Triton on CUDA, else
the reference), ``torch.compile`` (where it compiles), ONNX Runtime (CPU here; CUDA where ``onnxruntime-gpu`` can
use a GPU — the session's providers are asserted, never a silent CPU fallback) and TensorRT (where installed; an
engine built from the same ONNX file). Writes ``backends_<device>.json`` and ``.png`` (into ``results/local/``;
``--publish``: ``results/``) and prints the ONNX Runtime / eager latency ratio.

The timing, peak memory and statistics are those of ``sschsr-deploy bench`` (:func:`sschsr_deploy.bench.run_benchmark`:
``Backend.run`` on the same generated input); this script adds the preset-built model (seeded random weights), the
ONNX export when no ``--onnx`` is given, the TensorRT engine build where TensorRT is installed, and the results files.
A backend that cannot run here (or a failed compile) is listed under ``unavailable``, not fatal.

    python benchmarks/bench_backends.py                       # tiny, 128×128, batch 1, CPU (or CUDA if present)
    python benchmarks/bench_backends.py --preset official --tile 256 256 --device cuda --batch 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_output_arguments, bar_chart, environment, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy.bench import BackendSpec, run_benchmark, summary_lines  # noqa: E402
from sschsr_deploy.engine import onnx as ex  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("tiny", "official"), default="tiny")
    p.add_argument("--tile", nargs=2, type=int, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raft-iters", type=int, help="RAFT iterations (default: the preset's)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per backend")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (torch.compile compiles in the first)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch and ORT)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (the torch-compile backend)")
    p.add_argument("--onnx", help="reuse this exported ONNX file (must match preset/tile/iters); default: export")
    p.add_argument("--engine", help="TensorRT engine built from the same ONNX (default: build one if TensorRT is "
                                    "installed)")
    add_output_arguments(p)
    args = p.parse_args(argv)
    use_output_arguments(args)
    return args


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _result(row: dict, runs: int) -> dict:
    """The per-backend fields of the earlier result files (median / min ms, runs, tiles/s, MPix/s), then the row."""
    lat, thr = row["latency_ms"], row["throughput"]
    return {"median_ms": lat["p50"], "min_ms": lat["min"], "runs": runs, "tiles_per_s": thr["tiles_per_s"],
            "megapixels_per_s": thr["hr_mpix_per_s"], **row}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ex.build_model(args.preset, raft_iters=args.raft_iters, seed=0)
    iters = model.config.raft.iters
    tile = tuple(args.tile)
    source = f"random:seed=0 ({args.preset} preset)"
    unavailable: dict[str, str] = {}

    # 1./2. eager and torch.compile (the torch-compile backend of sschsr-deploy bench) on the same module
    specs = [BackendSpec("torch_eager", "torch", source, model=model)]
    if args.no_compile:
        unavailable["torch_compile"] = "skipped (--no-compile)"
    else:
        specs.append(BackendSpec("torch_compile", "torch", source, compile=True, model=model))

    # 3./4. ONNX Runtime on the exported file: on the CPU always, on CUDA where a CUDA provider and device exist
    tmp = tempfile.TemporaryDirectory()
    onnx_path: Path | None = Path(args.onnx) if args.onnx else Path(tmp.name) / "model.onnx"
    export_info = None
    try:
        if not args.onnx:
            res = ex.export_onnx(model.cpu(), onnx_path, tile=tile, batch_range=(args.batch, args.batch),
                                 preset=args.preset)
            export_info = {"export_seconds": round(res.export_seconds, 1), "parity_rel_l2": res.parity.rel_l2}
        import onnxruntime as ort

        specs.append(BackendSpec("ort_cpu", "onnxruntime", str(onnx_path), device="cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
            specs.append(BackendSpec("ort_cuda", "onnxruntime", str(onnx_path), device="cuda"))
        else:
            unavailable["ort_cuda"] = "CUDAExecutionProvider or a CUDA device not available"
    except Exception as exc:
        unavailable["ort_cpu"] = _error(exc)
        onnx_path = None
        print(f"         ort_cpu: unavailable ({unavailable['ort_cpu'][:160]})")

    # 5. TensorRT: an engine built from the same ONNX file (or --engine)
    from sschsr_deploy.engine.tensorrt import build_engine, tensorrt_available

    if not tensorrt_available() or not torch.cuda.is_available():
        unavailable["tensorrt"] = "TensorRT or a CUDA device not available"
    elif onnx_path is None and not args.engine:
        unavailable["tensorrt"] = "no ONNX file to build an engine from (see ort_cpu)"
    else:
        try:
            engine = Path(args.engine) if args.engine else Path(tmp.name) / "model.engine"
            if not args.engine:
                build_engine(onnx_path, engine)
            specs.append(BackendSpec("tensorrt", "tensorrt", str(engine), device="cuda"))
        except Exception as exc:
            unavailable["tensorrt"] = _error(exc)

    try:
        report = run_benchmark(specs, tile=tile, batch=args.batch, iters=args.repeat, warmup=args.warmup,
                               device=args.device, threads=args.threads, keep_going=True,
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        tmp.cleanup()
    print("\n".join(summary_lines(report)))
    results: dict[str, dict] = {}
    for row in report["backends"]:
        if "error" in row:
            unavailable[row["label"]] = row["error"]
        else:
            results[row["label"]] = _result(row, args.repeat)

    ratio = None
    ort_name = "ort_cpu" if args.device == "cpu" else "ort_cuda"
    if ort_name in results and "torch_eager" in results:
        ratio = results[ort_name]["median_ms"] / results["torch_eager"]["median_ms"]
        print(f"ONNX Runtime ({args.device.upper()}) / eager latency ratio: {ratio:.2f}  (< 1: ONNX Runtime faster)")

    payload = {
        "benchmark": "backends", "environment": environment(args.device),
        "config": {"preset": args.preset, "tile": list(tile), "batch": args.batch, "raft_iters": iters,
                   "threads": report["config"]["threads"], "repeat": args.repeat, "warmup": args.warmup},
        "timing": "sschsr_deploy.bench.run_benchmark (Backend.run per tile, as sschsr-deploy bench)",
        "baseline": "torch_eager", "results": results, "unavailable": unavailable,
        "ort_over_eager_latency_ratio": ratio, "export": export_info,
    }
    if "warning" in report:
        payload["warning"] = report["warning"]
    name = f"backends_{args.device}" + ("" if args.preset == "tiny" else f"_{args.preset}")
    path = write_json(name, payload)
    names = list(results)
    bar_chart(name, f"SSC-HSR {args.preset} per-tile latency, {tile[0]}×{tile[1]}, batch {args.batch} "
                    f"({args.device})", names, {"median ms": [results[n]["median_ms"] for n in names]}, "ms / batch")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
