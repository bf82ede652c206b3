"""``sschsr-deploy export``: export the per-tile network (or RAFT alone) to ONNX and verify it, in one step.

Why one command: an exported file is only worth deploying once it has passed ``onnx.checker``, shape inference and an
ONNX Runtime parity run against the PyTorch model, so the export never ends without them
(:func:`sschsr_deploy.engine.onnx.export_onnx` runs them all). ``export/export_onnx.py`` is the same command.

The weights follow :func:`sschsr_deploy.weights.load_model`: a shipped name (``tiny-x4``, ``tiny-x8``), a
``.safetensors`` file (its metadata says what it is for) or an official ``.pth`` (``--preset official``, ``--scale``).
Without ``--weights`` the tiny preset exports its shipped weights for ``--scale``; other presets (and ``--bands``,
for which no weights ship) export seeded random weights, with a warning.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError

__all__ = ["ModelSource", "add_arguments", "choose_weights", "export_from_args", "size_arg"]


def size_arg(values: list[int] | None, option: str) -> tuple[int, int] | None:
    """``[S]`` or ``[H, W]`` from an ``nargs="+"`` size option as ``(H, W)``; ``None`` stays ``None``."""
    if values is None:
        return None
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise InputValidationError(f"{option} takes one size (square) or two (H W); got {len(values)} values")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The export options (shared by ``sschsr-deploy export`` and ``export/export_onnx.py``)."""
    p.add_argument("--preset", choices=("tiny", "official"),
                   help="network size (default: the weights' own; tiny without --weights)")
    p.add_argument("--weights",
                   help="a shipped name (tiny-x4, tiny-x8), a .safetensors file or an official .pth checkpoint "
                        "(default: the shipped tiny weights for --scale; random weights for the official preset)")
    p.add_argument("--tile", nargs="+", type=int, metavar="PX", required=True,
                   help="HR tile: S (square) or H W, multiples of 8, >= 128 (the traced size; TensorRT's optimal one)")
    p.add_argument("--tile-min", nargs="+", type=int, metavar="PX",
                   help="smallest tile of a dynamic tile size, S or H W (default: --tile, i.e. fixed)")
    p.add_argument("--tile-max", nargs="+", type=int, metavar="PX",
                   help="largest tile of a dynamic tile size, S or H W (default: --tile, i.e. fixed)")
    p.add_argument("--batch", type=int, default=1, help="maximum batch (dynamic batch 1..N when N > 1; default 1)")
    p.add_argument("--min-batch", type=int, default=1, help="minimum batch (default 1)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="graph precision (default fp32); int8: the fp32 graph quantized (QDQ; the decoder's "
                        "convolutions, calibrated on held-out synthetic scenes; engine/quantize.py, docs/precision.md)")
    p.add_argument("--int8-target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="int8: onnxruntime (u8 asymmetric activations, the x86 VNNI path; default) or tensorrt "
                        "(symmetric s8 activations, float bias: TensorRT's explicit-quantization input; unverified)")
    p.add_argument("--calibration-scenes", type=int, default=8,
                   help="int8: synthetic held-out scenes (one tile each) to calibrate on (default 8, at least 4)")
    p.add_argument("--ops", choices=("standard", "custom"), default="standard",
                   help="standard: plain ONNX (ONNX Runtime, TensorRT's parser); custom: sschsr nodes for our "
                        "TensorRT plugins (default standard)")
    p.add_argument("--part", choices=("tile", "flow"), default="tile",
                   help="tile: the whole network (default); flow: RAFT alone")
    p.add_argument("--raft-iters", type=int, help="RAFT iterations unrolled in the graph (default: the preset's)")
    p.add_argument("--batchnorm-mode", choices=("running", "batch"),
                   help="RAFT context BN: running statistics, or batch statistics as the official test (default: the "
                        "weights' own, else running)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--bands", type=int, help="band count (default: the weights' own; 31)")
    p.add_argument("--scale", type=int,
                   help="scale the weights are for: checked against a shipped name or .safetensors file, set for an "
                        "official .pth or random weights (default 4), picks the shipped tiny weights")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and of the check input (default 0)")
    p.add_argument("--out", required=True, help="output .onnx path")


@dataclass(frozen=True)
class ModelSource:
    """What gets exported: ``preset`` (``None``: the weights file says), ``weights`` (``None``: random weights) and a
    line telling the user what was chosen for them (empty when they chose)."""

    preset: str | None
    weights: Path | None
    note: str = ""

    @property
    def random(self) -> bool:
        return self.weights is None


def choose_weights(preset: str | None, weights: str | None, scale: int | None = None,
                   bands: int | None = None) -> ModelSource:
    """Resolve ``--preset`` / ``--weights`` to a preset and a weights file, as ``load_model`` reads names."""
    from sschsr_deploy.weights import SHIPPED_NAMES, resolve_shipped, shipped_name

    if weights is not None:
        if weights in SHIPPED_NAMES:
            own = SHIPPED_NAMES[weights][0]
            if preset not in (None, own):
                raise InputValidationError(f"--weights {weights} is a {own}-preset model, not --preset {preset}")
            return ModelSource(own, resolve_shipped(weights))
        path = Path(weights)
        if not path.is_file():
            raise InputValidationError(f"--weights: file not found: {path} (or a shipped name: "
                                       f"{', '.join(SHIPPED_NAMES)})")
        return ModelSource(preset, path)
    from sschsr_deploy.model.presets import get_preset

    preset = preset or "tiny"
    if preset == "tiny" and bands in (None, get_preset("tiny").bands):  # the shipped weights' band count
        path = resolve_shipped(shipped_name("tiny", scale))
        return ModelSource(preset, path, f"no --weights: exporting the shipped tiny weights {path.name}")
    why = "no weights ship for the official preset" if preset != "tiny" else f"no weights ship for {bands} bands"
    return ModelSource(preset, None, f"no --weights given ({why}): exporting RANDOM weights (fine for testing the "
                                     "pipeline, useless for inference)")


def _load(source: ModelSource, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from sschsr_deploy.weights import load_model

    fields = dict(scale=args.scale, bands=args.bands, batchnorm_mode=args.batchnorm_mode)
    if source.weights is None:
        return load_model(source.preset, random_weights=True, seed=args.seed, **fields)
    if source.preset is None:
        return load_model(source.weights, **fields)
    return load_model(source.preset, source.weights, **fields)


def export_from_args(args: argparse.Namespace, source: ModelSource | None = None):
    """Load the model ``args`` name, export it to ``args.out`` and run every check; returns the ``ExportResult``.

    Raises ``InputValidationError`` for bad arguments and ``ExportCheckError`` when a check fails (the file is then
    left for inspection).
    """
    from sschsr_deploy.engine.onnx import export_onnx
    from sschsr_deploy.io.atomic import check_writable

    source = source or choose_weights(args.preset, args.weights, args.scale, args.bands)
    if not 1 <= args.min_batch <= args.batch:
        raise InputValidationError(f"need 1 <= --min-batch <= --batch, got {args.min_batch}, {args.batch}")
    tile = size_arg(args.tile, "--tile")
    tile_min, tile_max = size_arg(args.tile_min, "--tile-min"), size_arg(args.tile_max, "--tile-max")
    out = check_writable(args.out)
    model, info = _load(source, args)
    weights_source = f"file:{source.weights.name}" if source.weights is not None else f"random:seed={args.seed}"
    extra = {"weights_source": weights_source}
    if info.get("weights_file_sha256"):
        extra["weights_file_sha256"] = info["weights_file_sha256"]
    int8 = args.precision == "int8"
    if int8 and (args.part != "tile" or args.ops != "standard"):
        raise InputValidationError("--precision int8 quantizes the whole tile network with standard ops (--part tile "
                                   "--ops standard)")
    target = out.with_name(f".{out.stem}.fp32.partial.onnx") if int8 else out
    try:
        result = export_onnx(
            model, target, tile=tile, tile_min=tile_min, tile_max=tile_max, batch_range=(args.min_batch, args.batch),
            precision="fp32" if int8 else args.precision, ops=args.ops, part=args.part, opset=args.opset,
            raft_iters=args.raft_iters, preset=info["preset"], seed=args.seed, extra_metadata=extra,
        )
        if int8:
            result = _quantize(result, out, tile, args.calibration_scenes, model.config.bands,
                               getattr(args, "int8_target", "onnxruntime"))
        return result
    except ValueError as exc:
        if isinstance(exc, InputValidationError) or not _raised_by(exc, ("export_onnx", "export_module")):
            raise
        raise InputValidationError(str(exc)) from None  # export_onnx's own argument checks (tile sizes, bounds)
    finally:
        if int8:
            target.unlink(missing_ok=True)


def _quantize(result: Any, out: Path, tile: tuple[int, int], scenes: int, bands: int,
              target: str = "onnxruntime") -> Any:
    """The checked fp32 export at ``result.path`` quantized into ``out``; ``result`` then describes the INT8 file,
    its ``int8`` entry the deviation from the fp32 graph on a scene that was not calibrated on."""
    import dataclasses
    import time

    import numpy as np
    import onnx
    import onnxruntime as ort

    from sschsr_deploy.engine.quantize import calibration_feeds, quantize_int8

    t0 = time.perf_counter()
    names = [i.name for i in onnx.load(result.path, load_external_data=False).graph.input]
    quantize_int8(result.path, out, calibration_feeds(names, bands, tile, count=scenes), target=target)
    feed = calibration_feeds(names, bands, tile, count=1, seed=50_000)[0]  # not a calibration scene
    ref = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    base = feed[names[0]]
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    residual = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref - base), 1e-12))
    # recorded in the graph: what a TensorRT engine built from it is checked against (engine_parity)
    from sschsr_deploy.engine.graph import set_metadata
    from sschsr_deploy.engine.onnx import _atomic_save

    quantized = onnx.load(out)
    set_metadata(quantized, {"int8_rel_l2_vs_fp32": f"{rel:.6g}", "int8_rel_l2_residual_vs_fp32": f"{residual:.6g}"})
    _atomic_save(quantized, out)
    meta = {p.key: p.value for p in quantized.metadata_props}
    return dataclasses.replace(result, path=out, metadata=meta,
                               export_seconds=result.export_seconds + time.perf_counter() - t0, int8={
        "calibration_scenes": scenes,
        "rel_l2_vs_fp32": rel,
        "rel_l2_residual_vs_fp32": residual,
        "note": "fp32 parity above is of the graph before quantization; the deviation here is on a scene not "
                "calibrated on (quality cost on twelve held-out scenes: docs/precision.md)",
    })


def _raised_by(exc: BaseException, functions: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised directly in one of ``functions`` (an argument check, not a failure deeper down)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name in functions
