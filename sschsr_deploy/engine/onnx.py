"""ONNX export of the per-tile network and of the flow estimator, with checks that always run after export.

Two parts can be exported (``part=``):

- ``"tile"``: the whole network on one HR tile, the five official inputs (``INPUT_NAMES``) → ``out`` (B×bands×H×W);
- ``"flow"``: RAFT alone, ``hsi_rgb_sr_flow``, ``ref_hr_flow`` → ``flow`` (B×2×H×W, HR pixels). The official forward
  takes the flow inputs separately from the others, so a runtime can estimate the flow on its own inputs.

RAFT runs a fixed number of iterations (``raft_iters``, default: the preset's), unrolled in the graph.

Operator modes (``ops=``):

- ``"standard"``: plain ONNX (opset 20 by default) that ONNX Runtime and TensorRT's parser run: modulated deformable
  convolution becomes the ONNX ``DeformConv`` node; spectral attention and patch matching are decomposed into standard
  ops (the same bodies as the custom nodes' reference functions; each op's schema, body and translations are in its
  module under :mod:`sschsr_deploy.engine.ops`). The patch-matching decomposition holds the full
  N×P score matrix of a tile (N = P = (H/4−2)(W/4−2): 3.5 MB per image at 128², 59 MB at 256², 1 GB at 512²).
- ``"custom"``: spectral attention and patch matching are single nodes of the ``sschsr`` domain
  (``sschsr::SpectralAttention(q, k, v, temperature){heads}``, ``sschsr::PatchMatch(feat, ref_feat){patch_size}`` →
  ``(index int64, similarity)``) for our TensorRT plugins (:mod:`sschsr_deploy.engine.plugins`); deformable
  convolution stays ``DeformConv`` (:mod:`sschsr_deploy.engine.graph` swaps it for our plugin on request). The
  schemas are registered with ``onnx.defs`` so that the checker validates the nodes. ONNX Runtime cannot run opaque
  custom nodes, so the parity check runs the saved graph with reference *function bodies* attached
  (:func:`reference_functions`, standard ops only): that checks every node, input and attribute of the custom graph;
  the plugin kernels themselves are checked by the TensorRT parity run.

Shapes: the batch dimension is dynamic within ``batch_range`` (the traced example uses batch 2, since
``torch.export`` specialises a dimension of size 1). The tile height and width are fixed by default; with
``tile_min``/``tile_max`` they are dynamic in multiples of 8 within those bounds (named ``height``/``width``). That
works because every data-dependent loop is out of the traced graph (patch matching is one op, translated without the
reference's chunk loop) and because ``aten.remainder.Scalar`` with a symbolic divisor (``index_to_flow``) gets its own
translation; measured on the tiny preset: parity 1.2e-7 at 128×128 and at 136×192 from one graph. A dynamic tile
export takes about twice as long, and TensorRT picks kernels for the ``tile`` size (the profile's opt).

Precision is a property of the graph (TensorRT 11 builds strongly typed networks only):

- ``"fp32"``: everything in float32.
- ``"fp16"``: weights and activations in float16, inputs and outputs stay float32 (cast at the graph boundary), with
  these **float32 islands** (inputs cast up on entry, results cast down on exit):

  1. spectral attention, whole op: the L2 norms, the Gram matrices q̂k̂ᵀ, the temperature scaling, the softmax and A·V;
  2. every layer norm of the decoder (``ChannelLayerNorm``: mean, variance, normalisation, affine);
  3. RAFT's instance norms (feature encoder) and batch norms (context encoder);
  4. RAFT's correlation: the all-pairs correlation volume, its average-pooled pyramid, the windowed bilinear lookups,
     the coordinate/flow accumulation over the iterations and the convex-upsampling softmax and combination
     (the two encoders and the update block run in float16 inside it: inputs cast down, outputs cast up);
  5. patch matching: per-pixel normalisation, patch norms, scores, arg-max and similarity;
  6. the bilinear warps: the reference warp by the RAFT flow and the decoder's feature warps by the patch-match flow
     (sampling grids and sampling);
  7. the three deformable aggregations: the offset/mask prediction conv, offset and mask formation, and the
     deformable convolution itself (offsets of tens of pixels would lose sub-pixel precision in float16).

  Everything else (all other convolutions, transposed convs, GELU/activations, pixel shuffle, pools, concatenations)
  runs in float16. The islands are marked where they are written (:mod:`sschsr_deploy.precision`: functions marked
  ``float32_island``, module classes marked ``float32_module`` / ``reduced_precision_module``), the same marks eager
  autocast follows; the export traces a converted copy in export mode. Nothing in the model changes permanently.

After every export :func:`export_onnx` runs ``onnx.checker`` (full check), ONNX shape inference and an ONNX Runtime
parity run on a generated input against the PyTorch model (float32, reference ops), and raises
:class:`ExportCheckError` when any fails. Tolerances, on the relative L2 error of the output and, for the
tile network, of its residual over ``hsi_sr`` (:class:`ParityReport`): 1e-4 for fp32 (measured 1.2e-7 on the output,
8.6e-7 on the residual), 5e-2 for fp16 (measured 7.0e-5 / 5.1e-4 with random weights, up to 2.04e-2 on the residual
with trained ones: see ``FP16_TOLERANCE``), tiny preset at 128² unless noted. The ONNX Runtime
session always asserts its providers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import state_dict_sha256
from ..errors import SSCHSRError
from ..model import INPUT_NAMES, SSCHSR
from ..ops._backend import REFERENCE_OPS, forced_backends
from ..precision import convert_for_export, export_islands
from ..weights import ModelMeta
from .ops import CUSTOM_DOMAIN
from .ops import REGISTRY as EXPORT_OPS
from .ops._shared import register_schema

__all__ = [
    "CUSTOM_DOMAIN",
    "DEFAULT_OPSET",
    "FLOW_INPUT_NAMES",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "ExportCheckError",
    "ExportResult",
    "ParityReport",
    "build_model",
    "check_onnx",
    "example_inputs",
    "export_module",
    "export_onnx",
    "fp16_islands",
    "make_session",
    "read_metadata",
    "reference_functions",
    "state_dict_sha256",
    "FlowNetwork",
    "TileNetwork",
    "translation_table",
]

DEFAULT_OPSET = 20
FP32_TOLERANCE = 1e-4
# fp16 graph vs fp32 PyTorch (relative L2 error of the output and of its residual over hsi_sr). Measured on the tiny
# preset: random weights at 128², 7.0e-5 / 5.1e-4; trained x4 weights at 384², 6.4e-4 / 9.0e-3 (the curriculum run)
# and 1.6e-3 / 2.04e-2 (the camera-jitter run shipped now, max |Δ| 0.149: where fp16 flips the arg-max of patch
# matching on a near-tie, a patch takes another match; the quality table shows what that costs). Trained activations
# are larger, so fp16 rounding moves the residual more. The bound leaves room for that and for deeper presets.
FP16_TOLERANCE = 5e-2
PRECISIONS = ("fp32", "fp16")
OPS_MODES = ("standard", "custom")
PARTS = ("tile", "flow")
FLOW_INPUT_NAMES = ("hsi_rgb_sr_flow", "ref_hr_flow")


class ExportCheckError(SSCHSRError, RuntimeError):
    """An exported graph failed the checker, shape inference or the ONNX Runtime parity run."""


# ---------------------------------------------------------------------------------------------------------------------
# custom-domain schemas, reference bodies and translations: per op in sschsr_deploy.engine.ops

def _register_schemas() -> None:
    """Register the ``sschsr`` op schemas with ``onnx.defs`` (once): the checker then validates our nodes."""
    for entry in EXPORT_OPS:
        register_schema(entry.schema())


@functools.cache
def _script():
    """The onnxscript pieces that belong to no ``sschsr`` op, built lazily (onnxscript is only needed for export)."""
    from onnxscript import opset20 as op

    def remainder(self, other):
        # aten.remainder.Scalar with a symbolic divisor (dynamic tile size): Python-style modulo on integers
        return op.Mod(self, op.CastLike(other, self), fmod=0)

    return {"remainder": remainder}


def reference_functions() -> list:
    """FunctionProtos (domain ``sschsr``) whose bodies compute our custom nodes with standard ops.

    Attach them to a custom-mode model (``model.functions.extend(...)``) to run it on ONNX Runtime; TensorRT must see
    the model *without* them so that its parser hands the nodes to our plugins.
    """
    _register_schemas()
    out = []
    for entry in EXPORT_OPS:
        if entry.reference_function is None:
            continue
        proto = entry.reference_function().to_function_proto()
        proto.domain = CUSTOM_DOMAIN
        proto.name = entry.name
        out.append(proto)
    return out


def translation_table(ops: str) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` in the given operator mode."""
    if ops not in OPS_MODES:
        raise ValueError(f"ops must be one of {OPS_MODES}, got {ops!r}")
    _register_schemas()
    return {getattr(torch.ops.sschsr, entry.torch_op).default: entry.translation(ops) for entry in EXPORT_OPS}


# every op as a single torch node while tracing; the translation table decides what each becomes in ONNX
_TRACE_AS_OPS = {**{entry.torch_op: "op" for entry in EXPORT_OPS}, "gram_and_norms": "op"}


# ---------------------------------------------------------------------------------------------------------------------
# fp16 islands

@contextlib.contextmanager
def fp16_islands(model: SSCHSR | nn.Module, dtype: torch.dtype = torch.float16) -> Iterator[nn.Module]:
    """A ``dtype`` copy of ``model`` with the float32 islands listed in the module docstring, while the context lasts.

    Yields the converted copy (``model`` itself is untouched); trace inside the context. The islands are the marks of
    :mod:`sschsr_deploy.precision` (the same marks eager autocast follows): the copy's parameters follow them
    (:func:`~sschsr_deploy.precision.convert_for_export`) and the context switches the marks to export mode.
    """
    with export_islands(dtype):
        yield convert_for_export(model, dtype)


# ---------------------------------------------------------------------------------------------------------------------
# the exported networks

class TileNetwork(nn.Module):
    """The per-tile network: five fp32 inputs → fp32 ``out``; casts to the compute dtype at the boundary."""

    def __init__(self, model: SSCHSR, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, hsi_sr: Tensor, hsi_rgb_sr: Tensor, ref_hr: Tensor, hsi_rgb_sr_flow: Tensor,
                ref_hr_flow: Tensor) -> Tensor:
        d = self.dtype
        out = self.model(hsi_sr.to(d), hsi_rgb_sr.to(d), ref_hr.to(d), hsi_rgb_sr_flow, ref_hr_flow)
        return out.float()


class FlowNetwork(nn.Module):
    """RAFT alone: the two flow inputs (0..255) → flow (B, 2, H, W) in HR pixels, fixed iteration count."""

    def __init__(self, model: SSCHSR, iters: int) -> None:
        super().__init__()
        self.flownet = model.flownet
        self.iters = iters

    def forward(self, hsi_rgb_sr_flow: Tensor, ref_hr_flow: Tensor) -> Tensor:
        return self.flownet(hsi_rgb_sr_flow, ref_hr_flow, iters=self.iters).float()


def build_model(preset: str = "tiny", weights: str | os.PathLike | None = None, raft_iters: int | None = None,
                batchnorm_mode: str | None = None, seed: int = 0, **fields) -> SSCHSR:
    """An eval-mode model to export: ``weights`` loaded by :func:`sschsr_deploy.weights.load_model` (its metadata
    checked against ``preset`` and ``fields``: ``scale``, ``bands``, ``rgb_bands``), or seeded random weights when
    ``weights`` is None; ``raft_iters`` sets the RAFT iterations unrolled in the graph."""
    from ..weights import load_model

    model, _ = load_model(preset, weights, random_weights=weights is None, seed=seed,
                          batchnorm_mode=batchnorm_mode, **fields)
    if raft_iters is not None:
        model.flownet.cfg = dataclasses.replace(model.flownet.cfg, iters=int(raft_iters))
        model.config = dataclasses.replace(model.config, raft=model.flownet.cfg)
    model.validate_inputs = False  # data-dependent checks cannot be traced; export checks the shapes itself
    return model


def example_inputs(bands: int, batch: int, tile: tuple[int, int], seed: int = 0, part: str = "tile") -> tuple:
    """A generated input set: smooth random images in the official value ranges ([0, 1]; flow inputs 0..255),
    the reference a shifted copy of the HSI pseudo-RGB so that flow and matching see real structure."""
    g = torch.Generator().manual_seed(seed)
    h, w = tile

    def smooth(c: int) -> Tensor:
        low = torch.rand(batch, c, max(2, h // 8), max(2, w // 8), generator=g)
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
        return (img + 0.05 * torch.rand(batch, c, h, w, generator=g)).clamp(0, 1)

    rgb = smooth(3)
    ref = torch.roll(rgb, shifts=(3, -2), dims=(2, 3)) * 0.9 + 0.05
    if part == "flow":
        return (rgb * 255.0, ref * 255.0)
    return (smooth(bands), rgb, ref, rgb * 255.0, ref * 255.0)


# ---------------------------------------------------------------------------------------------------------------------
# checks

@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on one generated input.

    ``rel_l2`` = ‖ort − torch‖ / ‖torch‖. For the tile network the output is ``hsi_sr`` plus what the network adds,
    and the pass-through dominates the norm, so the check also reports ``rel_l2_residual`` = ‖ort − torch‖ /
    ‖torch − hsi_sr‖ and applies the tolerance to it (stricter; a 1 % error in one VGG conv moves ``rel_l2`` by
    3.5e-5 but the residual measure by 2.6e-4).
    """

    max_abs: float
    rel_l2: float
    tolerance: float
    providers: list[str]
    batch: int
    ort_seconds: float
    custom_functions_attached: bool = False
    rel_l2_residual: float | None = None

    @property
    def checked(self) -> float:
        return self.rel_l2 if self.rel_l2_residual is None else max(self.rel_l2, self.rel_l2_residual)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.checked)) and self.checked <= self.tolerance

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"ok": self.ok}


def make_session(model_or_path, providers: Sequence[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session whose providers are asserted: the first requested provider must be active.

    ``providers`` defaults to CUDA (when ONNX Runtime offers it and torch sees a GPU) then CPU. Without this check,
    ONNX Runtime silently falls back to the CPU when CUDA cannot be used.
    """
    import onnxruntime as ort

    if providers is None:
        avail = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in avail and torch.cuda.is_available():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    sess = ort.InferenceSession(src, sess_options=opts, providers=list(providers))
    active = sess.get_providers()
    if not active or active[0] != providers[0]:
        raise ExportCheckError(
            f"ONNX Runtime did not activate {providers[0]} (active: {active}); refusing a silent fallback"
        )
    return sess


def _has_custom_nodes(model) -> bool:
    return any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)


def check_onnx(
    model_or_path,
    reference: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    tolerance: float,
    providers: Sequence[str] | None = None,
    residual_of: int | None = None,
) -> ParityReport:
    """Checker (full), shape inference and an ONNX Runtime parity run of a saved graph; raises on any failure.

    ``reference(*inputs)`` gives the PyTorch result. ``residual_of``: index of an input the output adds to (the tile
    network's ``hsi_sr``): the error is then also measured relative to ``output − input`` (see
    :class:`ParityReport`). Custom-domain nodes are run through their reference function
    bodies (:func:`reference_functions`) attached to an in-memory copy.
    """
    import onnx

    _register_schemas()
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"onnx.checker rejected the graph: {exc}") from exc
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others here
        raise ExportCheckError(f"ONNX shape inference failed: {exc}") from exc

    run_model = model
    attached = False
    if _has_custom_nodes(model):
        run_model = copy.deepcopy(model)
        have = {(f.domain, f.name) for f in run_model.functions}
        run_model.functions.extend(f for f in reference_functions() if (f.domain, f.name) not in have)
        attached = True
    try:
        sess = make_session(run_model, providers)
        feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
        t0 = time.perf_counter()
        got = sess.run(None, feeds)[0]
        ort_s = time.perf_counter() - t0
    except ExportCheckError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument, …)
        raise ExportCheckError(f"ONNX Runtime could not run the graph: {exc}") from exc
    with torch.no_grad():
        want = reference(*inputs).detach().float().cpu().numpy()
    if got.shape != want.shape:
        raise ExportCheckError(f"ONNX Runtime output shape {got.shape} != PyTorch {want.shape}")
    diff = got.astype(np.float64) - want.astype(np.float64)
    denom = float(np.linalg.norm(want.astype(np.float64))) or 1.0
    residual = None
    if residual_of is not None:
        base = inputs[residual_of].detach().float().cpu().numpy().astype(np.float64)
        residual = float(np.linalg.norm(diff)) / (float(np.linalg.norm(want - base)) or 1.0)
    report = ParityReport(
        max_abs=float(np.abs(diff).max()) if diff.size else 0.0,
        rel_l2=float(np.linalg.norm(diff)) / denom,
        tolerance=tolerance,
        providers=list(sess.get_providers()),
        batch=int(inputs[0].shape[0]),
        ort_seconds=ort_s,
        custom_functions_attached=attached,
        rel_l2_residual=residual,
    )
    if not report.ok:
        raise ExportCheckError(
            f"ONNX Runtime parity failed: relative L2 error {report.checked:.3g} > {tolerance:g} "
            f"(of the output {report.rel_l2:.3g}, of the residual {report.rel_l2_residual}, max |Δ| "
            f"{report.max_abs:.3g}, providers {report.providers})"
        )
    return report


def read_metadata(model_or_path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path),
                                                                                         load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# ---------------------------------------------------------------------------------------------------------------------
# export

@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    export_seconds: float
    parity: ParityReport | None
    op_counts: dict[str, int] = field(default_factory=dict)
    extra_parity: ParityReport | None = None  # the second tile size of a dynamic-tile export
    int8: dict | None = None  # an INT8 export: calibration and the deviation from the fp32 graph

    def as_dict(self) -> dict:
        out = {
            "path": str(self.path), "metadata": self.metadata, "export_seconds": round(self.export_seconds, 2),
            "parity": None if self.parity is None else self.parity.as_dict(), "op_counts": self.op_counts,
            "extra_parity": None if self.extra_parity is None else self.extra_parity.as_dict(),
        }
        if self.int8 is not None:
            out["int8"] = self.int8
        return out


def _atomic_save(model, path: Path) -> None:
    import onnx

    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_module(
    module: nn.Module,
    inputs: Sequence[Tensor],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    ops: str = "standard",
    opset: int = DEFAULT_OPSET,
    batch_range: tuple[int, int] | None = None,
    spatial_range: tuple[tuple[int, int], tuple[int, int]] | None = None,
    metadata: dict[str, Any] | None = None,
    reference: Callable[..., Tensor] | None = None,
    check_inputs: Sequence[Tensor] | None = None,
    tolerance: float = FP32_TOLERANCE,
    check: bool = True,
    providers: Sequence[str] | None = None,
) -> ExportResult:
    """Export any module whose custom ops are ``torch.ops.sschsr.*``; the building block of :func:`export_onnx`.

    ``batch_range=(lo, hi)`` with ``hi > lo`` makes dimension 0 of every input dynamic (named ``batch``); the
    example ``inputs`` must then have batch ≥ 2. ``spatial_range=((h_min, h_max), (w_min, w_max))`` makes
    dimensions 2 and 3 of every (NCHW) input dynamic, in multiples of 8 (named ``height``, ``width``).
    ``reference`` (default: ``module``) and ``check_inputs`` (default: ``inputs``) drive the parity run.
    """
    import onnx

    if ops not in OPS_MODES:
        raise ValueError(f"ops must be one of {OPS_MODES}, got {ops!r}")
    path = Path(path)
    dims: dict[int, Any] = {}
    names: dict[int, str] = {}
    if batch_range is not None and batch_range[1] > batch_range[0]:
        if inputs[0].shape[0] < 2:
            raise ValueError("a dynamic batch needs example inputs with batch >= 2 (torch.export specialises 1)")
        dims[0] = torch.export.Dim("batch", min=int(batch_range[0]), max=int(batch_range[1]))
        names[0] = "batch"
    for axis, name, rng in ((2, "height", spatial_range[0] if spatial_range else None),
                            (3, "width", spatial_range[1] if spatial_range else None)):
        if rng is not None and rng[1] > rng[0]:
            dims[axis] = 8 * torch.export.Dim(f"{name}_8", min=int(rng[0]) // 8, max=int(rng[1]) // 8)
            names[axis] = name
    dynamic_shapes = tuple(dict(dims) for _ in inputs) if dims else None
    table = translation_table(ops)
    if 2 in dims or 3 in dims:
        table[torch.ops.aten.remainder.Scalar] = _script()["remainder"]
    _register_schemas()
    t0 = time.perf_counter()
    with torch.no_grad(), forced_backends(**_TRACE_AS_OPS):
        program = torch.onnx.export(
            module, tuple(inputs), dynamo=True, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            custom_translation_table=table, optimize=True, verbose=False,
        )
    model = program.model_proto
    elapsed = time.perf_counter() - t0
    from .graph import rename_dynamic_dims, set_metadata

    if names:
        rename_dynamic_dims(model, names)
    if _has_custom_nodes(model) and not any(o.domain == CUSTOM_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(CUSTOM_DOMAIN, 1))
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.setdefault("opset", str(opset))
    meta.setdefault("ops", ops)
    set_metadata(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(model, path)
    parity = None
    if check:
        ref = reference or module
        parity = check_onnx(path, ref, check_inputs if check_inputs is not None else inputs, tolerance, providers)
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    return ExportResult(path, read_metadata(model), elapsed, parity, dict(sorted(counts.items())))


def export_onnx(
    model: SSCHSR,
    path: str | os.PathLike,
    *,
    tile: tuple[int, int] = (128, 128),
    tile_min: tuple[int, int] | None = None,
    tile_max: tuple[int, int] | None = None,
    batch_range: tuple[int, int] = (1, 8),
    precision: str = "fp32",
    ops: str = "standard",
    part: str = "tile",
    opset: int = DEFAULT_OPSET,
    raft_iters: int | None = None,
    preset: str | None = None,
    weights_sha256: str | None = None,
    check_batch: int | None = None,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export the per-tile network (``part="tile"``) or the flow estimator (``part="flow"``) to ``path``.

    ``tile`` (H, W): the traced (and TensorRT-optimal) tile size, multiples of 8, at least 128 (the model's
    requirements). ``tile_min``/``tile_max`` (default: ``tile``): bounds of a dynamic tile size — when they differ
    from ``tile`` the height/width are dynamic in multiples of 8 within the bounds, and the parity check runs at two
    sizes. ``batch_range``: dynamic batch bounds (``(n, n)`` for a static batch n). ``weights_sha256`` defaults
    to the hash of the model's state dict (:func:`state_dict_sha256`). Always runs the checks of
    :func:`check_onnx` (on a batch of ``check_batch``, default the minimum batch) and raises ``ExportCheckError``
    when one fails. Returns an :class:`ExportResult` (path, metadata, export time, parity).
    """
    from .._version import __version__
    from ..model.presets import MIN_SIZE, SIZE_MULTIPLE

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    h, w = (int(tile[0]), int(tile[1]))
    tmin = tuple(int(v) for v in (tile_min or (h, w)))
    tmax = tuple(int(v) for v in (tile_max or (h, w)))
    for name, (th, tw) in (("tile", (h, w)), ("tile_min", tmin), ("tile_max", tmax)):
        if th < MIN_SIZE or tw < MIN_SIZE or th % SIZE_MULTIPLE or tw % SIZE_MULTIPLE:
            raise ValueError(f"{name} {th}x{tw}: height and width must be multiples of {SIZE_MULTIPLE} and "
                             f">= {MIN_SIZE}")
    if not (tmin[0] <= h <= tmax[0] and tmin[1] <= w <= tmax[1]):
        raise ValueError(f"tile {h}x{w} is outside [{tmin[0]}x{tmin[1]}, {tmax[0]}x{tmax[1]}]")
    dynamic_tile = tmin != tmax
    lo, hi = int(batch_range[0]), int(batch_range[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"batch_range must satisfy 1 <= min <= max, got {batch_range}")
    cfg = model.config
    iters = int(raft_iters if raft_iters is not None else cfg.raft.iters)
    model = copy.deepcopy(model).eval()
    model.validate_inputs = False
    model.flownet.cfg = dataclasses.replace(model.flownet.cfg, iters=iters)
    model.config = dataclasses.replace(cfg, raft=model.flownet.cfg)
    weights_sha256 = weights_sha256 or state_dict_sha256(model)

    example_batch = max(2, lo) if hi > lo else lo
    inputs = example_inputs(cfg.bands, example_batch, (h, w), seed, part)
    cb = check_batch if check_batch is not None else lo
    check_in = example_inputs(cfg.bands, cb, (h, w), seed + 1, part)
    names = INPUT_NAMES if part == "tile" else FLOW_INPUT_NAMES
    out_name = "out" if part == "tile" else "flow"
    islands = (
        "spectral_attention,layer_norms,raft_norms,raft_correlation_lookup_coords,patch_match,warps,deform_aggregation"
        if precision == "fp16" else ""
    )
    metadata = {
        "producer": "sschsr-deploy", "package_version": __version__, "part": part,
        **ModelMeta.of(model, preset or "custom").to_metadata(),
        "tile_height": h, "tile_width": w, "tile_min": f"{tmin[0]}x{tmin[1]}", "tile_max": f"{tmax[0]}x{tmax[1]}",
        "dynamic_tile": dynamic_tile,
        "batch_min": lo, "batch_max": hi, "raft_iters": iters, "opset": opset, "precision": precision, "ops": ops,
        "weights_sha256": weights_sha256,
        "official_warp_quirk": cfg.official_warp_quirk, "fp32_islands": islands,
        "inputs": ",".join(names), "outputs": out_name, "torch_version": torch.__version__,
        **(extra_metadata or {}),
    }

    def fp32_reference(*xs: Tensor) -> Tensor:
        net = (TileNetwork(model) if part == "tile" else FlowNetwork(model, iters)).eval()
        with forced_backends(**REFERENCE_OPS):
            return net(*xs)

    dtype = torch.float16 if precision == "fp16" else torch.float32
    islands_ctx = fp16_islands(model, dtype) if precision == "fp16" else contextlib.nullcontext(model)
    with islands_ctx as m:
        net = (TileNetwork(m, dtype) if part == "tile" else FlowNetwork(m, iters)).eval()
        result = export_module(
            net, inputs, path, input_names=names, output_names=[out_name], ops=ops, opset=opset,
            batch_range=(lo, hi), spatial_range=((tmin[0], tmax[0]), (tmin[1], tmax[1])) if dynamic_tile else None,
            metadata=metadata, check=False,
        )
    tol = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    residual_of = 0 if part == "tile" else None
    result.parity = check_onnx(result.path, fp32_reference, check_in, tol, providers, residual_of=residual_of)
    if dynamic_tile:  # a second size proves the graph is really size-generic
        other = tmin if tmin != (h, w) else tmax
        xs_other = example_inputs(cfg.bands, cb, other, seed + 2, part)
        result.extra_parity = check_onnx(result.path, fp32_reference, xs_other, tol, providers,
                                         residual_of=residual_of)
    return result
