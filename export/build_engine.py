#!/usr/bin/env python
"""Build a TensorRT engine (+ its sidecar JSON) from an ONNX file made by export_onnx.py.

    python export/build_engine.py tiny_128.onnx --out tiny_128.engine
    python export/build_engine.py official_256_fp16.onnx --out official_256_fp16.engine \\
        --profile 1 4 8 --workspace-gib 8 --timing-cache trt.cache --deform-conv plugin

Unverified: no TensorRT was available where this was written (see sschsr_deploy/engine/tensorrt.py). Exit status:
0 on success, 1 when TensorRT is missing or the build fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("onnx", help="ONNX file from export/export_onnx.py")
    p.add_argument("--out", required=True, help="engine path (the sidecar goes to <out>.json)")
    p.add_argument("--profile", nargs=3, type=int, action="append", metavar=("MIN", "OPT", "MAX"),
                   help="batch optimisation profile (repeatable); default: the ONNX batch bounds, opt = max")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="workspace memory pool limit (GiB)")
    p.add_argument("--timing-cache", help="timing cache file: read when present, written back after the build")
    p.add_argument("--deform-conv", choices=("stock", "plugin"), default="stock",
                   help="stock: TensorRT's DeformConv; plugin: our AOT Triton plugin")
    p.add_argument("--opt-level", type=int, help="builder optimisation level (0-5)")
    p.add_argument("--tf32", action="store_true",
                   help="let TensorRT run fp32 layers in TF32 (faster, ~1e-3 relative error; off by default)")
    p.add_argument("--parity", action="store_true",
                   help="after the build, compare the engine with the PyTorch model (random weights of the preset "
                        "recorded in the ONNX metadata, or --weights)")
    p.add_argument("--weights", help="official checkpoint for --parity")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from sschsr_deploy.engine.tensorrt import TensorRTUnavailableError, build_engine, engine_parity, require_tensorrt
    from sschsr_deploy.errors import SSCHSRError

    try:
        require_tensorrt()
    except TensorRTUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not Path(args.onnx).is_file():
        print(f"error: {args.onnx} does not exist", file=sys.stderr)
        return 2
    try:
        result = build_engine(
            args.onnx, args.out, batch_profiles=[tuple(p) for p in args.profile] if args.profile else None,
            workspace_bytes=int(args.workspace_gib * (1 << 30)), timing_cache=args.timing_cache,
            deform_conv=args.deform_conv, builder_optimization_level=args.opt_level, tf32=args.tf32,
            verbose=args.verbose,
        )
        report = {"engine": str(result.engine_path), "sidecar": str(result.sidecar_path),
                  "build_seconds": round(result.build_seconds, 1)}
        if args.parity:
            from sschsr_deploy.engine.onnx import build_model

            meta = result.sidecar["onnx"]
            source = meta.get("weights_source", "random:seed=0")
            if args.weights is None and not source.startswith("random:"):
                print(f"error: --parity needs --weights (the ONNX was exported from {source})", file=sys.stderr)
                return 2
            seed = int(source.split("seed=")[1]) if source.startswith("random:") else 0
            model = build_model(meta.get("preset", "tiny"), args.weights, int(meta["raft_iters"]),
                                meta.get("batchnorm_mode", "running"), seed, bands=int(meta["bands"]))
            report["parity"] = engine_parity(result.engine_path, model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SSCHSRError, AssertionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
