"""``sschsr-deploy build-engine``: a TensorRT engine (+ its sidecar JSON) from an ONNX file made by ``export``.

Why a command beside the library call (:func:`sschsr_deploy.engine.tensorrt.build_engine`): the options map onto
the builder one to one, and ``--parity`` rebuilds the PyTorch model the ONNX file was exported from (its metadata
records the preset, RAFT iterations, bands and weights) to compare the engine with it. ``export/build_engine.py``
is the same command. Unverified: no TensorRT was available where this was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError

__all__ = ["add_arguments", "build_from_args", "parity_weights"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The build options (shared by ``sschsr-deploy build-engine`` and ``export/build_engine.py``); the global
    ``-v/--verbose`` also turns on TensorRT's verbose log."""
    p.add_argument("onnx", help="ONNX file from sschsr-deploy export (export/export_onnx.py)")
    p.add_argument("--out", required=True, help="engine path (the sidecar goes to <out>.json)")
    p.add_argument("--profile", nargs=3, type=int, action="append", metavar=("MIN", "OPT", "MAX"),
                   help="batch optimisation profile (repeatable); default: the ONNX batch bounds, opt = max")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="workspace memory pool limit in GiB (default 4)")
    p.add_argument("--timing-cache", help="timing cache file: read when present, written back after the build")
    p.add_argument("--deform-conv", choices=("stock", "plugin"), default="stock",
                   help="stock: TensorRT's DeformConv (default); plugin: our AOT Triton plugin")
    p.add_argument("--opt-level", type=int, help="builder optimisation level (0-5)")
    p.add_argument("--tf32", action="store_true",
                   help="let TensorRT run fp32 layers in TF32 (faster, ~1e-3 relative error; off by default)")
    p.add_argument("--parity", action="store_true",
                   help="after the build, compare the engine with the PyTorch model the ONNX file was exported from")
    p.add_argument("--weights",
                   help="weights for --parity: a shipped name (tiny-x4, tiny-x8) or a file (default: the shipped file "
                        "or the random seed the ONNX metadata records)")


def parity_weights(meta: dict[str, str], weights: str | None) -> Path | None:
    """The weights file ``--parity`` rebuilds the model from; ``None`` for an export of random weights.

    A shipped name resolves to its file; without ``--weights`` an export of a shipped file (same name and sha256)
    finds it again, anything else asks for ``--weights``.
    """
    from sschsr_deploy.io.atomic import file_sha256
    from sschsr_deploy.weights import SHIPPED_NAMES, resolve_shipped

    source = meta.get("weights_source", "random:seed=0")
    if weights is not None:
        path = resolve_shipped(weights) if weights in SHIPPED_NAMES else Path(weights)
        if not path.is_file():
            raise InputValidationError(f"--weights: file not found: {path}")
        return path
    if source.startswith("random:"):
        return None
    name = source.removeprefix("file:")
    for shipped in SHIPPED_NAMES:
        path = resolve_shipped(shipped)
        if path.name == name and meta.get("weights_file_sha256") in (None, file_sha256(path)):
            return path
    raise InputValidationError(f"--parity needs --weights (the ONNX was exported from {source})")


def build_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the engine ``args`` describe (and check parity on request); returns the JSON report.

    Raises ``TensorRTUnavailableError`` first when TensorRT is missing, ``InputValidationError`` for bad arguments,
    ``EngineBuildError`` / ``AssertionError`` (parity) when the build or the check fails.
    """
    from sschsr_deploy.engine.tensorrt import build_engine, engine_parity, require_tensorrt

    require_tensorrt()
    if not Path(args.onnx).is_file():
        raise InputValidationError(f"{args.onnx} does not exist")
    try:
        result = build_engine(
            args.onnx, args.out, batch_profiles=[tuple(p) for p in args.profile] if args.profile else None,
            workspace_bytes=int(args.workspace_gib * (1 << 30)), timing_cache=args.timing_cache,
            deform_conv=args.deform_conv, builder_optimization_level=args.opt_level, tf32=args.tf32,
            verbose=bool(getattr(args, "verbose", False)),
        )
    except ValueError as exc:  # profile bounds
        if isinstance(exc, InputValidationError):
            raise
        raise InputValidationError(str(exc)) from None
    report: dict[str, Any] = {"engine": str(result.engine_path), "sidecar": str(result.sidecar_path),
                              "build_seconds": round(result.build_seconds, 1)}
    if args.parity:
        from sschsr_deploy.weights import load_model

        meta = result.sidecar["onnx"]
        weights = parity_weights(meta, args.weights)
        source = meta.get("weights_source", "random:seed=0")
        seed = int(source.split("seed=")[1]) if source.startswith("random:") else 0
        fields: dict[str, Any] = dict(bands=int(meta["bands"]), batchnorm_mode=meta.get("batchnorm_mode", "running"))
        if meta.get("scale"):
            fields["scale"] = int(meta["scale"])
        preset = meta.get("preset", "tiny")
        if weights is None:
            model, _ = load_model(preset, random_weights=True, seed=seed, **fields)
        else:
            model, _ = load_model(preset, weights, **fields)
        report["parity"] = engine_parity(result.engine_path, model)
    return report
