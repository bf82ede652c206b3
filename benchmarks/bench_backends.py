#!/usr/bin/env python
"""Per-tile latency and throughput of the SSC-HSR network on each backend, same tile, same weights, same device.

Backends: PyTorch eager (the op layer's automatic kernel choice: native C++/CUDA where built, else Triton on CUDA, else
the reference), ``torch.compile`` (where it compiles), ONNX Runtime (CPU here; CUDA where ``onnxruntime-gpu`` can
use a GPU — the session's providers are asserted, never a silent CPU fallback) and TensorRT (where installed; an
engine built from the same ONNX file). Writes ``backends_<device>.json`` and ``.png`` (into ``results/local/``;
``--publish``: ``results/``) and prints the ONNX Runtime / eager latency ratio.

    python benchmarks/bench_backends.py                       # tiny, 128×128, batch 1, CPU (or CUDA if present)
    python benchmarks/bench_backends.py --preset official --tile 256 256 --device cuda --batch 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_output_arguments, bar_chart, environment, time_fn, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy.engine import onnx as ex  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("tiny", "official"), default="tiny")
    p.add_argument("--tile", nargs=2, type=int, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raft-iters", type=int, help="RAFT iterations (default: the preset's)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch and ORT)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--onnx", help="reuse this exported ONNX file (must match preset/tile/iters); default: export")
    p.add_argument("--engine", help="TensorRT engine built from the same ONNX (default: build one if TensorRT is "
                                    "installed)")
    add_output_arguments(p)
    args = p.parse_args(argv)
    use_output_arguments(args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = ex.build_model(args.preset, raft_iters=args.raft_iters, seed=0)
    iters = model.config.raft.iters
    tile = tuple(args.tile)
    xs = ex.example_inputs(model.config.bands, args.batch, tile, seed=0)
    net = ex.TileNetwork(model.to(dev)).eval()
    xs_dev = tuple(x.to(dev) for x in xs)
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    pixels = args.batch * tile[0] * tile[1]

    def record(name: str, fn) -> None:
        try:
            with torch.no_grad():
                stats = time_fn(fn, args.device, warmup=args.warmup, repeat=args.repeat)
            stats["tiles_per_s"] = args.batch / (stats["median_ms"] / 1e3)
            stats["megapixels_per_s"] = pixels / 1e6 / (stats["median_ms"] / 1e3)
            results[name] = stats
            print(f"{name:>16}: {stats['median_ms']:9.1f} ms/batch  ({stats['tiles_per_s']:.2f} tiles/s)")
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"{name:>16}: unavailable ({errors[name][:160]})")

    # 1. eager
    record("torch_eager", lambda: net(*xs_dev))

    # 2. torch.compile
    if args.no_compile:
        errors["torch_compile"] = "skipped (--no-compile)"
    else:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(net)
            with torch.no_grad():
                compiled(*xs_dev)
            compile_s = time.perf_counter() - t0
            record("torch_compile", lambda: compiled(*xs_dev))
            if "torch_compile" in results:
                results["torch_compile"]["compile_seconds"] = compile_s
        except Exception as exc:
            errors["torch_compile"] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"   torch_compile: unavailable ({errors['torch_compile'][:160]})")
            traceback.print_exc(limit=2)

    # 3./4. ONNX Runtime
    export_info = None
    tmp = tempfile.TemporaryDirectory()
    onnx_path = Path(args.onnx) if args.onnx else Path(tmp.name) / "model.onnx"
    try:
        if not args.onnx:
            res = ex.export_onnx(model.cpu(), onnx_path, tile=tile, batch_range=(args.batch, args.batch),
                                 preset=args.preset)
            export_info = {"export_seconds": round(res.export_seconds, 1), "parity_rel_l2": res.parity.rel_l2}
            model.to(dev)
        import onnxruntime as ort

        feeds = None
        for prov in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            name = "ort_cpu" if prov == "CPUExecutionProvider" else "ort_cuda"
            if prov == "CUDAExecutionProvider" and (prov not in ort.get_available_providers()
                                                    or not torch.cuda.is_available()):
                errors[name] = "CUDAExecutionProvider or a CUDA device not available"
                continue
            try:
                sess = ex.make_session(onnx_path, providers=[prov], threads=args.threads)  # asserts providers
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"{name:>16}: unavailable ({errors[name][:160]})")
                continue
            feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}
            record(name, lambda s=sess, f=feeds: s.run(None, f))
            if name in results:
                results[name]["providers"] = sess.get_providers()
    except Exception as exc:
        errors["ort_cpu"] = f"{type(exc).__name__}: {exc}"[:500]
        print(f"         ort_cpu: unavailable ({errors['ort_cpu'][:160]})")

    # 5. TensorRT
    from sschsr_deploy.engine.tensorrt import EngineRunner, build_engine, load_engine, tensorrt_available

    if not tensorrt_available() or not torch.cuda.is_available():
        errors["tensorrt"] = "TensorRT or a CUDA device not available"
    else:
        try:
            engine = Path(args.engine) if args.engine else Path(tmp.name) / "model.engine"
            if not args.engine:
                build_engine(onnx_path, engine)
            runner = EngineRunner(load_engine(engine))
            cuda_xs = tuple(x.cuda() for x in xs)
            record("tensorrt", lambda: runner(*cuda_xs))
        except Exception as exc:
            errors["tensorrt"] = f"{type(exc).__name__}: {exc}"[:500]
    tmp.cleanup()

    ratio = None
    if "ort_cpu" in results and "torch_eager" in results and args.device == "cpu":
        ratio = results["ort_cpu"]["median_ms"] / results["torch_eager"]["median_ms"]
        print(f"ONNX Runtime (CPU) / eager latency ratio: {ratio:.2f}  (< 1: ONNX Runtime faster)")
    if "ort_cuda" in results and "torch_eager" in results and args.device == "cuda":
        ratio = results["ort_cuda"]["median_ms"] / results["torch_eager"]["median_ms"]
        print(f"ONNX Runtime (CUDA) / eager latency ratio: {ratio:.2f}")

    payload = {
        "benchmark": "backends", "environment": environment(args.device),
        "config": {"preset": args.preset, "tile": list(tile), "batch": args.batch, "raft_iters": iters,
                   "threads": args.threads, "repeat": args.repeat, "warmup": args.warmup},
        "baseline": "torch_eager", "results": results, "unavailable": errors,
        "ort_over_eager_latency_ratio": ratio, "export": export_info,
    }
    name = f"backends_{args.device}" + ("" if args.preset == "tiny" else f"_{args.preset}")
    path = write_json(name, payload)
    names = list(results)
    bar_chart(name, f"SSC-HSR {args.preset} per-tile latency, {tile[0]}×{tile[1]}, batch {args.batch} "
                    f"({args.device})", names, {"median ms": [results[n]["median_ms"] for n in names]}, "ms / batch")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
