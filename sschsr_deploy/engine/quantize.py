"""INT8: static quantization of an exported fp32 graph (ONNX Runtime's tools, QDQ format, per-channel weights),
calibrated on held-out synthetic scenes.

Where: the profile (``benchmarks/profile_stages.py``; ``shared/reference/performance-profile.md``) puts ~80 % of the
CPU time in convolutions, most of them in the decoder. By default only the decoder's ``Conv`` nodes are quantized
(``DEFAULT_STAGES``, chosen by the measured quality cost per stage: quantizing the HSI encoder too cost 0.08 dB more,
every convolution 0.13 dB more); RAFT (correlation, lookups, coordinates), patch matching (cosine scores), the warps,
the deformable sampling and the attention normalisation stay in float. A node's stage comes from the module scopes
the exporter records on it (``pkg.torch.onnx.name_scopes``), not from its name.

Calibration: the five model inputs of windows of scenes from :func:`sschsr_deploy.data.make_scene` on the held-out
split (``split="test"``: spectra, illuminants and cameras the shipped weights were not trained on), prepared by the
deployment preprocessing (:class:`~sschsr_deploy.scene.PreparedScene`). Missing or degenerate calibration data (too
few samples, non-finite or constant inputs, identical samples) is refused with :class:`CalibrationError`: a
quantization calibrated on nothing representative would silently clip real data.

Two targets (``target``), one QDQ structure:

- ``"onnxruntime"`` (default): uint8 activations with zero points (asymmetric), int8 per-channel weights — the
  x86 VNNI fast path of ONNX Runtime's CPU provider;
- ``"tensorrt"``: TensorRT's explicit-quantization input — TensorRT quantizes symmetrically only (signed int8
  activations and weights, every zero point 0; its ONNX parser takes INT8 / FP8 / INT4 / FP4 in Q/DQ, not uint8 or
  int32), so activations are int8 symmetric and biases stay float. Building an engine from it is **unverified** (no
  TensorRT / GPU here); ``check_tensorrt_support`` checks it against the parser's documented support matrix.

Both keep the biases float (measured on the official preset: quantized int32 biases neither sped ONNX Runtime up nor
changed the deviation). Wired into ``sschsr-deploy export --precision int8 [--int8-target ...]``; the quality cost is
in ``benchmarks/results/quality.json`` (docs/precision.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputValidationError

__all__ = ["DEFAULT_STAGES", "MIN_CALIBRATION_SAMPLES", "TARGETS", "CalibrationError", "calibration_feeds",
           "check_calibration", "nodes_in_stages", "quantize_int8"]

#: the stages whose convolutions are quantized by default: the decoder's, where the CPU time goes. Measured on the
#: twelve held-out scenes (benchmarks/results/quality.json, tiny x4, 384²): decoder only -0.03 dB vs fp32, decoder +
#: HSI encoder -0.11 dB, every convolution -0.16 dB; the target is within 0.1 dB.
DEFAULT_STAGES = ("decoder",)
#: fewer windows than this cannot give activation ranges worth trusting
MIN_CALIBRATION_SAMPLES = 4
#: what the QDQ graph is for: ONNX Runtime's CPU provider (u8 asymmetric activations) or TensorRT (symmetric s8)
TARGETS = ("onnxruntime", "tensorrt")
_SCOPES = "pkg.torch.onnx.name_scopes"


class CalibrationError(InputValidationError):
    """Calibration data that cannot calibrate: missing, too few, non-finite, constant or all alike."""


def calibration_feeds(input_names: Sequence[str], bands: int, tile: tuple[int, int], count: int = 8, *,
                      seed: int = 1000, split: str = "test", scale: int = 4) -> list[dict[str, np.ndarray]]:
    """``count`` calibration samples: for each, a held-out synthetic scene of the tile's size and the five model
    inputs of its whole-image window (batch 1, float32), keyed by ``input_names`` (the exported graph's order)."""
    from ..data import make_scene
    from ..scene import prepare_inputs

    if len(input_names) != 5:
        raise ValueError(f"the tile network has 5 inputs; got {list(input_names)}")
    feeds = []
    for i in range(count):
        s = make_scene(seed=seed + i, size=tuple(tile), bands=bands, scale=scale, split=split)
        inputs = prepare_inputs(s.lr_hsi, s.ref_rgb, scale).as_tuple()
        feeds.append({name: np.ascontiguousarray(a, dtype=np.float32) for name, a in zip(input_names, inputs,
                                                                                         strict=True)})
    return feeds


def check_calibration(feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]) -> None:
    """Refuse calibration data that cannot calibrate (:class:`CalibrationError`, saying what is wrong)."""
    if not feeds:
        raise CalibrationError("no calibration data: INT8 needs representative inputs to set activation ranges")
    if len(feeds) < MIN_CALIBRATION_SAMPLES:
        raise CalibrationError(f"{len(feeds)} calibration sample(s); at least {MIN_CALIBRATION_SAMPLES} are needed")
    for i, feed in enumerate(feeds):
        missing = [n for n in input_names if n not in feed]
        if missing:
            raise CalibrationError(f"calibration sample {i} lacks input(s) {', '.join(missing)}")
        for name in input_names:
            a = np.asarray(feed[name])
            if not np.isfinite(a).all():
                raise CalibrationError(f"calibration sample {i}: {name} has NaN / inf values")
            if a.size and float(a.max()) == float(a.min()):
                raise CalibrationError(f"calibration sample {i}: {name} is constant ({float(a.min())!r}); "
                                       "degenerate data would set a zero activation range")
    for name in input_names:
        first = np.asarray(feeds[0][name])
        if all(np.array_equal(first, np.asarray(f[name])) for f in feeds[1:]):
            raise CalibrationError(f"every calibration sample has the same {name}: degenerate calibration data")


def nodes_in_stages(model, stages: Sequence[str] = DEFAULT_STAGES, op_types: Sequence[str] = ("Conv",)) -> list[str]:
    """Names of the ``op_types`` nodes of an exported graph (``onnx.ModelProto``) that belong to ``stages``,
    by the module scopes the exporter recorded (``['', 'model', 'model.decoder', ...]`` → ``decoder``)."""
    wanted = set(stages)
    names = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for prop in node.metadata_props:
            if prop.key != _SCOPES:
                continue
            scopes = [s.strip().strip("'\"") for s in prop.value.strip("[]").split(",")]
            if any(len(p := s.split(".")) >= 2 and p[0] == "model" and p[1] in wanted for s in scopes):
                names.append(node.name)
            break
    return names


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  feeds: Sequence[dict[str, np.ndarray]], *, stages: Sequence[str] = DEFAULT_STAGES,
                  op_types: Sequence[str] = ("Conv",), per_channel: bool = True,
                  target: str = "onnxruntime") -> Path:
    """Write the QDQ INT8 version of the fp32 graph at ``fp32_path`` to ``out_path`` (uint8 activations, int8
    per-channel weights: the x86 VNNI layout), calibrated on ``feeds`` (checked first). Only the ``op_types`` nodes
    of ``stages`` are quantized; the graph's metadata is kept, with ``precision=int8`` and what was quantized.
    ``target="tensorrt"``: int8 symmetric activations instead (see the module docstring). Raises
    :class:`CalibrationError` for bad calibration data and when no node matches."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if target not in TARGETS:
        raise InputValidationError(f"INT8 target must be one of {', '.join(TARGETS)}; got {target!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(fp32_path)
    input_names = [i.name for i in model.graph.input]
    check_calibration(feeds, input_names)
    nodes = nodes_in_stages(model, stages, op_types)
    if not nodes:
        raise CalibrationError(f"no {'/'.join(op_types)} node of stage(s) {', '.join(stages)} in {fp32_path.name} "
                               "(was it exported by sschsr-deploy with module scopes?)")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    trt = target == "tensorrt"
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        quantize_static(
            fp32_path, tmp, _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, op_types_to_quantize=list(op_types),
            extra_options={"QuantizeBias": False, "WeightSymmetric": True, "ActivationSymmetric": trt},
        )
        quantized = onnx.load(tmp)
        meta = {p.key: p.value for p in model.metadata_props}
        meta.update(precision="int8", int8_stages=",".join(stages), int8_op_types=",".join(op_types),
                    int8_nodes=str(len(nodes)), int8_calibration_samples=str(len(feeds)),
                    int8_target=target, int8_format=(
                        ("QDQ s8 symmetric activations" if trt else "QDQ u8 activations") +
                        (" / s8 per-channel weights" if per_channel else " / s8 weights") + ", float bias"))
        del quantized.metadata_props[:]
        for k, v in meta.items():
            quantized.metadata_props.add(key=k, value=str(v))
        onnx.save(quantized, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
