#!/usr/bin/env python
"""Export SSC-HSR (per-tile network or flow estimator) to ONNX, then check it (checker, shapes, ORT parity).

    python export/export_onnx.py --preset tiny --tile 128 128 --out tiny_128.onnx
    python export/export_onnx.py --preset official --weights model-best.pth --tile 256 256 --batch 4 \\
        --precision fp16 --ops custom --out official_256_fp16.onnx

Random weights are used (with a warning) when --weights is absent. Exit status: 0 when the export and every check
pass, 1 when a check fails (the file is left for inspection), 2 on bad arguments. A JSON report goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "official"), required=True)
    p.add_argument("--weights", help="official checkpoint (.pth/.safetensors); random weights when absent")
    p.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"), required=True,
                   help="HR tile size, multiples of 8, >= 128 (traced size; TensorRT's optimal size)")
    p.add_argument("--tile-min", nargs=2, type=int, metavar=("H", "W"),
                   help="smallest tile of a dynamic tile size (default: --tile, i.e. fixed)")
    p.add_argument("--tile-max", nargs=2, type=int, metavar=("H", "W"),
                   help="largest tile of a dynamic tile size (default: --tile, i.e. fixed)")
    p.add_argument("--batch", type=int, default=1, help="maximum batch (dynamic batch 1..N when N > 1)")
    p.add_argument("--min-batch", type=int, default=1, help="minimum batch (default 1)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--ops", choices=("standard", "custom"), default="standard")
    p.add_argument("--part", choices=("tile", "flow"), default="tile",
                   help="tile: the whole network; flow: RAFT alone")
    p.add_argument("--raft-iters", type=int, help="RAFT iterations unrolled in the graph (default: the preset's)")
    p.add_argument("--batchnorm-mode", choices=("running", "batch"), default="running",
                   help="RAFT context BN: running statistics, or batch statistics as the official test")
    p.add_argument("--opset", type=int, default=20)
    p.add_argument("--bands", type=int, help="band count override (default: the preset's 31)")
    p.add_argument("--scale", type=int,
                   help="scale the weights were trained for: read from a .safetensors file (checked when given), "
                        "set for an official .pth or random weights (default 4), picks the shipped tiny weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the check input")
    p.add_argument("--out", required=True, help="output .onnx path")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from sschsr_deploy.engine.onnx import ExportCheckError, build_model, export_onnx
    from sschsr_deploy.engine.sidecar import sha256_file
    from sschsr_deploy.errors import SSCHSRError

    if args.weights is None and args.preset == "tiny" and not args.bands:
        from sschsr_deploy.weights import resolve_shipped

        try:
            args.weights = str(resolve_shipped(f"tiny-x{args.scale or 4}"))
        except SSCHSRError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"no --weights: exporting the shipped tiny weights {Path(args.weights).name}", file=sys.stderr)
    if args.weights is None:
        warnings.warn("no --weights given: exporting RANDOM weights (fine for testing the pipeline, useless for "
                      "inference)", stacklevel=1)
    if args.batch < args.min_batch or args.min_batch < 1:
        print(f"error: need 1 <= --min-batch <= --batch, got {args.min_batch}, {args.batch}", file=sys.stderr)
        return 2
    try:
        model = build_model(args.preset, args.weights, args.raft_iters, args.batchnorm_mode, args.seed,
                            scale=args.scale, bands=args.bands)
        result = export_onnx(
            model, args.out, tile=tuple(args.tile), batch_range=(args.min_batch, args.batch),
            tile_min=tuple(args.tile_min) if args.tile_min else None,
            tile_max=tuple(args.tile_max) if args.tile_max else None,
            precision=args.precision, ops=args.ops, part=args.part, opset=args.opset, preset=args.preset,
            seed=args.seed,  # weights_sha256: the state-dict hash export_onnx computes, as load_model records it
            extra_metadata={"weights_source": f"file:{Path(args.weights).name}" if args.weights
                            else f"random:seed={args.seed}",
                            **({"weights_file_sha256": sha256_file(args.weights)} if args.weights else {})},
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportCheckError as exc:
        print(f"export check FAILED: {exc}", file=sys.stderr)
        return 1
    except SSCHSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
