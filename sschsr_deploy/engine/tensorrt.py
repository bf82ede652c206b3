"""TensorRT engine build, checked loading and a runner for parity — thin, by the documented Python API.

**Unverified: no TensorRT available.** Every call into ``tensorrt`` here follows the TensorRT 10.x/11.x Python API
documentation (``Builder``, ``create_network`` with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, ``OnnxParser``,
``IBuilderConfig.set_memory_pool_limit`` / ``create_timing_cache`` / ``set_timing_cache`` /
``add_optimization_profile``, ``build_serialized_network``, ``Runtime.deserialize_cuda_engine``, the name-based
``IExecutionContext`` API with ``execute_async_v3``) and has not run against a real TensorRT. The logic around it —
profile shapes, what gets recorded, the compatibility refusal, atomic writes — is plain Python and is tested without
TensorRT (``tests/test_engine_sidecar.py``, ``tests/test_tensorrt.py``).

Build (:func:`build_engine`):

1. load the ONNX file, check every node against TensorRT's operator support matrix (:mod:`.trt_support`), refuse
   unsupported graphs before building;
2. prepare the graph (:func:`.graph.prepare_for_tensorrt`): stock ``DeformConv`` or our plugin node, no ``sschsr``
   function bodies; register our plugins when ``sschsr`` nodes remain;
3. strongly typed network (precision comes from the ONNX graph; TensorRT 11 accepts nothing else), prefer AOT Python
   plugins; workspace limit; one optimisation profile per requested batch range, with the tile bounds of a
   dynamic-tile graph (opt = the exported tile size); timing cache loaded from and saved back to a file;
4. engine bytes and the sidecar (:mod:`.sidecar`) written atomically, the sidecar last: it records the engine's
   sha256, so an engine replaced without its sidecar is refused on load.

Load (:func:`load_engine`): read the sidecar, compare with this system (TensorRT version, GPU, compute capability,
plugin hashes, engine hash) and refuse mismatches with a clear message, then deserialize.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SSCHSRError
from .sidecar import (
    EngineCompatibilityError,
    SystemInfo,
    atomic_write_bytes,
    check_compatible,
    make_sidecar,
    read_sidecar,
    sha256_bytes,
    sha256_file,
    write_sidecar,
)

__all__ = [
    "BuildResult",
    "EngineRunner",
    "TensorRTUnavailableError",
    "build_engine",
    "engine_parity",
    "init_stock_plugins",
    "load_engine",
    "profile_shapes",
    "require_tensorrt",
    "set_input_shapes",
    "tensorrt_available",
]

GiB = 1 << 30


class TensorRTUnavailableError(SSCHSRError, RuntimeError):
    """TensorRT (the ``tensorrt`` Python package) is not installed here."""


class EngineBuildError(SSCHSRError, RuntimeError):
    """The ONNX graph cannot be parsed or built into an engine."""


def tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt():
    """Import ``tensorrt`` or raise :class:`TensorRTUnavailableError` with installation advice."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed. It is distributed by NVIDIA (pip install tensorrt from NVIDIA's index, or the "
            "TensorRT tarball/container); the Python plugin API needs TensorRT >= 10.9. ONNX export "
            "(export/export_onnx.py) and ONNX Runtime work without it."
        ) from exc
    return trt


# ---------------------------------------------------------------------------------------------------------------------
# profile shapes (plain Python)

def profile_shapes(
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    batch: tuple[int, int, int],
    dims: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape per input for one optimisation profile.

    ``inputs``: (name, dims) with ints for static dims and names for dynamic ones (as in the ONNX graph).
    ``batch``: (min, opt, max) for the dim named ``batch``; ``dims``: (min, opt, max) for any other named dim
    (e.g. ``{"height": (128, 256, 512)}`` for a graph with dynamic tile size). Unknown dynamic dims raise.
    """
    lo, opt, hi = (int(b) for b in batch)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}")
    ranges = {"batch": (lo, opt, hi), **{k: tuple(int(x) for x in v) for k, v in (dims or {}).items()}}
    out = {}
    for name, shape in inputs:
        mins, opts, maxs = [], [], []
        for d in shape:
            if isinstance(d, int) and d > 0:
                mins.append(d)
                opts.append(d)
                maxs.append(d)
            elif isinstance(d, str) and d in ranges:
                a, b, c = ranges[d]
                mins.append(a)
                opts.append(b)
                maxs.append(c)
            else:
                raise ValueError(f"input {name}: dynamic dimension {d!r} has no range (give it in dims=)")
        out[name] = (tuple(mins), tuple(opts), tuple(maxs))
    return out


def _graph_inputs(model) -> list[tuple[str, list[int | str]]]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in vi.type.tensor_type.shape.dim]
        out.append((vi.name, dims))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# build

def _tile_dims(meta: Mapping[str, str]) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of the ``height``/``width`` dims of a dynamic-tile graph, from its ONNX metadata."""
    if meta.get("dynamic_tile") != "True":
        return {}
    hmin, wmin = (int(v) for v in meta["tile_min"].split("x"))
    hmax, wmax = (int(v) for v in meta["tile_max"].split("x"))
    return {"height": (hmin, int(meta["tile_height"]), hmax), "width": (wmin, int(meta["tile_width"]), wmax)}


@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    build_seconds: float
    sidecar: dict[str, Any]
    support: dict[str, Any] = field(default_factory=dict)


def _logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def init_stock_plugins(trt, logger) -> None:
    """Register TensorRT's own plugin library (``libnvinfer_plugin``) with the plugin registry.

    The stock ``DeformConv`` import builds TensorRT's ``ModulatedDeformConv2d`` plugin from the registry, and an
    engine containing it deserializes only when the library's creators are registered: without this call both fail
    (the default ``deform_conv="stock"`` path included). Idempotent in TensorRT.
    """
    if not trt.init_libnvinfer_plugins(logger, ""):
        raise EngineBuildError("TensorRT could not initialise its plugin library (init_libnvinfer_plugins failed)")


def set_input_shapes(engine, context, shapes: Mapping[str, Sequence[int]], source: str, profile: int = 0) -> None:
    """``context.set_input_shape`` for every input, refusing a shape outside the optimisation profile at once.

    TensorRT reports an out-of-profile shape only through ``set_input_shape``'s return value; ignored, it surfaces
    later as a confusing shape error (or none). The message names the profile's bounds.
    """
    from ..errors import InputValidationError

    for name, shape in shapes.items():
        if not context.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, _, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, profile))
            raise InputValidationError(
                f"{source}: input {name!r} of shape {tuple(shape)} is outside the engine's optimisation profile "
                f"{profile} (min {lo}, max {hi}); use a batch / tile within those bounds or rebuild the engine"
            )


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    batch_profiles: Sequence[tuple[int, int, int]] | None = None,
    dims: Mapping[str, tuple[int, int, int]] | None = None,
    workspace_bytes: int = 4 * GiB,
    timing_cache: str | os.PathLike | None = None,
    deform_conv: str = "stock",
    builder_optimization_level: int | None = None,
    tf32: bool = False,
    verbose: bool = False,
) -> BuildResult:
    """Build a TensorRT engine from an exported ONNX file; writes ``engine_path`` and ``engine_path.json``.

    ``batch_profiles``: one (min, opt, max) per optimisation profile; default one profile (min, max, max) from the
    ONNX metadata's ``batch_min``/``batch_max``. ``deform_conv``: ``"stock"`` (TensorRT's DeformConv) or ``"plugin"``
    (our AOT Triton plugin). ``tf32``: let TensorRT run fp32 layers in TF32 (off by default: fp32 engines are held
    to fp32 tolerances; TensorRT's own default is on). Builds for the current CUDA device. Unverified: no TensorRT
    available.
    """
    import onnx

    from . import graph as graph_mod
    from .onnx import read_metadata
    from .plugins import AOT_PLUGINS, plugin_hashes, register_plugins
    from .trt_support import check_tensorrt_support

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = onnx.load(str(onnx_path))
    meta = read_metadata(model)
    if meta.get("precision") == "int8" and meta.get("int8_target") != "tensorrt":  # before needing TensorRT
        raise EngineBuildError(f"{Path(onnx_path).name} is quantized for {meta.get('int8_target', 'onnxruntime')} "
                               "(asymmetric uint8 activations); TensorRT quantizes symmetrically only: export it with "
                               "--precision int8 --int8-target tensorrt")
    trt = require_tensorrt()
    prepared = graph_mod.prepare_for_tensorrt(model, deform_conv)
    support = check_tensorrt_support(prepared)
    if not support.ok:
        raise EngineBuildError("the graph has nodes TensorRT's ONNX parser cannot import:\n" + support.summary())
    custom_ops = sorted({n.op_type for n in graph_mod.custom_nodes(prepared)})
    if custom_ops:
        register_plugins()

    logger = _logger(trt, verbose)
    init_stock_plugins(trt, logger)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepared.SerializeToString()):
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not tf32:  # on by default: fp32 convolutions / matmuls would round inputs to 10 mantissa bits (TF32)
        config.clear_flag(trt.BuilderFlag.TF32)
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).exists():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    lo, hi = int(meta.get("batch_min", 1)), int(meta.get("batch_max", 1))
    profiles = list(batch_profiles or [(lo, hi, hi)])
    inputs = _graph_inputs(prepared)
    dims = dict(dims or {}) or _tile_dims(meta)
    for prof in profiles:
        if prof[0] < lo or prof[2] > hi:
            raise ValueError(f"batch profile {prof} is outside the graph's exported bounds [{lo}, {hi}]")
        shapes = profile_shapes(inputs, prof, dims)
        profile = builder.create_optimization_profile()
        for name, (mn, op, mx) in shapes.items():
            profile.set_shape(name, mn, op, mx)
        config.add_optimization_profile(profile)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_bytes = bytes(serialized)

    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    hashes = plugin_hashes()
    used = {f"sschsr::{op}": hashes[f"sschsr::{op}"] for op in custom_ops}
    system = SystemInfo.current(plugins=used)
    sidecar = make_sidecar(
        onnx_metadata=meta, onnx_sha256=sha256_file(onnx_path), engine_sha256=sha256_bytes(engine_bytes),
        system=system,
        build={
            "batch_profiles": [list(p) for p in profiles], "dims": {k: list(v) for k, v in (dims or {}).items()},
            "workspace_bytes": int(workspace_bytes), "timing_cache": str(timing_cache) if timing_cache else None,
            "deform_conv": deform_conv, "strongly_typed": True, "tf32": bool(tf32), "build_seconds": round(build_s, 2),
            "python_plugins_required": [op for op in custom_ops if op not in AOT_PLUGINS],
            "support_matrix": f"TensorRT {support.tensorrt_version} ({support.source_url})",
        },
    )
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_path, engine_bytes)
    side = write_sidecar(engine_path, sidecar)  # last: it vouches for the engine bytes just written
    return BuildResult(engine_path, side, build_s, sidecar, support.as_dict())


# ---------------------------------------------------------------------------------------------------------------------
# load and run

@dataclass
class LoadedEngine:
    engine: Any
    sidecar: dict[str, Any]
    path: Path


def load_engine(engine_path: str | os.PathLike, expect: Mapping[str, str] | None = None,
                system: SystemInfo | None = None) -> LoadedEngine:
    """Deserialize an engine after checking its sidecar against this system (raises ``EngineCompatibilityError``).

    ``expect``: ONNX metadata the caller requires (e.g. ``{"precision": "fp16", "tile_height": "256"}``).
    Checks against, and deserializes on, the current CUDA device (wrap in ``torch.cuda.device(...)`` for another).
    Unverified: no TensorRT available.
    """
    from .plugins import plugin_hashes, register_plugins

    engine_path = Path(engine_path)
    if not engine_path.exists():
        raise EngineCompatibilityError(f"engine file {engine_path} does not exist")
    sidecar = read_sidecar(engine_path)
    trt = require_tensorrt()
    system = system or SystemInfo.current(plugins=plugin_hashes())
    data = engine_path.read_bytes()
    check_compatible(sidecar, system, engine_sha256=sha256_bytes(data), expect=expect)
    logger = _logger(trt, False)
    init_stock_plugins(trt, logger)  # engines with TensorRT's ModulatedDeformConv2d (stock DeformConv) need it
    if sidecar.get("plugins"):
        register_plugins()  # JIT Python plugins must be registered before deserialization
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCompatibilityError(f"TensorRT could not deserialize {engine_path}")
    return LoadedEngine(engine, sidecar, engine_path)


class EngineRunner:
    """Runs a loaded engine on CUDA torch tensors (name-based I/O, ``execute_async_v3`` on torch's stream).

    ``device``: the GPU the engine was deserialized for; the context is created and every run enqueued with it
    current (TensorRT works on the current device, not the tensors'). Unverified: no TensorRT available.
    """

    def __init__(self, loaded: LoadedEngine, device: Any = None) -> None:
        import torch

        self.trt = require_tensorrt()
        self.engine = loaded.engine
        self.source = f"TensorRT engine {Path(loaded.path).name}"
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def _torch_dtype(self, name: str):
        import torch

        dt = self.engine.get_tensor_dtype(name)
        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16, self.trt.int32: torch.int32,
                 self.trt.int64: torch.int64, self.trt.bool: torch.bool}
        return table[dt]

    def __call__(self, *tensors) -> dict[str, Any]:
        import torch

        if len(tensors) != len(self.inputs):
            raise ValueError(f"engine takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(tensors)}")
        with torch.cuda.device(self.device):
            keep = [t.to(device=self.device, dtype=self._torch_dtype(n)).contiguous()
                    for n, t in zip(self.inputs, tensors, strict=True)]
            outs = self.bind(self.context, dict(zip(self.inputs, keep, strict=True)))
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.source}")
            stream.synchronize()
        return outs

    def bind(self, context: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Point ``context`` at the input tensors (shapes checked against profile 0) and at new output tensors of the
        resulting shapes, allocated on the engine's device; returns the outputs by name."""
        import torch

        set_input_shapes(self.engine, context, {n: t.shape for n, t in inputs.items()}, self.source)
        for name, t in inputs.items():
            context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            context.set_tensor_address(name, outs[name].data_ptr())
        return outs


#: the least tolerance of an INT8 engine's parity (relative L2 vs fp32), whatever the export measured
INT8_MIN_TOLERANCE = 2e-2


def int8_tolerance(meta: dict[str, Any]) -> float:
    """Parity tolerance of an engine built from an INT8 graph: 2 × the larger of the deviations from fp32 recorded
    in its metadata at export (``int8_rel_l2_vs_fp32``, ``int8_rel_l2_residual_vs_fp32``), at least
    ``INT8_MIN_TOLERANCE``. A graph without them (quantized elsewhere) is refused: nothing says what is right."""
    try:
        measured = max(float(meta["int8_rel_l2_vs_fp32"]), float(meta["int8_rel_l2_residual_vs_fp32"]))
    except (KeyError, TypeError, ValueError):
        raise EngineBuildError("an INT8 graph without its measured deviation from fp32 (int8_rel_l2_vs_fp32 in its "
                               "metadata): quantize it with sschsr-deploy export --precision int8") from None
    return max(2.0 * measured, INT8_MIN_TOLERANCE)


def engine_parity(engine_path: str | os.PathLike, model, *, batch: int = 1, seed: int = 1,
                  tolerance: float | None = None) -> dict[str, float]:
    """Engine output vs the float32 PyTorch model (reference ops) on a generated input; raises above tolerance.

    Tolerance defaults to the export's: 1e-4 (fp32 graphs), ``FP16_TOLERANCE`` (fp16), and for an INT8 (QDQ) graph
    twice the deviation from fp32 that ONNX Runtime measured on it at export (:func:`int8_tolerance`): TensorRT's
    INT8 kernels round differently, but an engine far beyond the simulated quantization is broken. Unverified: no
    TensorRT.
    """
    import dataclasses

    import numpy as np
    import torch

    from ..ops._backend import REFERENCE_OPS, forced_backends
    from .onnx import FP16_TOLERANCE, FP32_TOLERANCE, FlowNetwork, TileNetwork, example_inputs

    loaded = load_engine(engine_path)
    meta = loaded.sidecar["onnx"]
    tile = (int(meta["tile_height"]), int(meta["tile_width"]))
    part = meta.get("part", "tile")
    iters = int(meta["raft_iters"])
    model = model.eval()
    model.flownet.cfg = dataclasses.replace(model.flownet.cfg, iters=iters)
    xs = example_inputs(model.config.bands, batch, tile, seed, part)
    runner = EngineRunner(loaded)
    got = next(iter(runner(*xs).values())).float().cpu().numpy()
    net = TileNetwork(model) if part == "tile" else FlowNetwork(model, iters)
    with torch.no_grad(), forced_backends(**REFERENCE_OPS):
        want = net.eval()(*xs).float().numpy()
    err = float(np.linalg.norm(got - want))
    rel = err / (float(np.linalg.norm(want)) or 1.0)
    # the tile output is hsi_sr + what the network adds: measure against the residual too (see onnx.ParityReport)
    residual = err / (float(np.linalg.norm(want - xs[0].numpy())) or 1.0) if part == "tile" else None
    tol = tolerance if tolerance is not None else (
        int8_tolerance(meta) if meta.get("precision") == "int8" else
        FP16_TOLERANCE if meta.get("precision") == "fp16" else FP32_TOLERANCE)
    result = {"rel_l2": rel, "rel_l2_residual": residual, "max_abs": float(np.abs(got - want).max()),
              "tolerance": tol}
    worst = rel if residual is None else max(rel, residual)
    if worst > tol:
        raise AssertionError(f"TensorRT parity failed: relative L2 error {worst:.3g} > {tol:g}")
    return result
