"""The TensorRT backend: runs an engine built by :func:`sschsr_deploy.engine.tensorrt.build_engine`, CUDA only.

**Unverified: TensorRT is not installable on the machines this was written on** (see DESIGN.md), so nothing here has
run against a real TensorRT. The code is kept thin and follows the documented TensorRT Python API (name-based
``IExecutionContext``: ``set_input_shape``, ``set_tensor_address``, ``get_tensor_shape``, ``execute_async_v3``) and
the documented ``torch.cuda.CUDAGraph`` API; its tests are marked ``tensorrt`` and skip without TensorRT. Everything
imports TensorRT lazily: without it, building the backend raises
:class:`~sschsr_deploy.engine.tensorrt.TensorRTUnavailableError` (an ``SSCHSRError``, one line in the CLI).

Why it looks the way it does:

- Loading goes through :func:`~sschsr_deploy.engine.tensorrt.load_engine`, which checks the engine's sidecar against
  this system (TensorRT version, GPU, compute capability, plugin hashes, the engine file's own hash) before
  deserializing: engines are not portable and a mismatched one must be refused, not run.
- The input limits (bands, tile size, batch range) come from the sidecar's copy of the ONNX metadata, narrowed by
  the build's first optimisation profile (the one the execution context uses), and are checked against the engine's
  tensor shapes (:class:`~sschsr_deploy.runtime.backend_base.ExportSpec`).
- Execution is enqueued on torch's current CUDA stream without a host synchronisation, so the pipeline's
  upload / compute / download streams keep overlapping.
- ``cuda_graph=True``: per input shape (the pipeline uses at most two: full batches and a smaller last one), one
  ``execute_async_v3`` is captured into a CUDA graph on a side stream, with its own execution context and static
  input / output buffers; later batches of that shape are copied into the buffers and the graph is replayed (saves
  the per-layer launch overhead, which matters for small tiles). A capture that fails logs a line and that shape runs
  without a graph. A fresh context per shape keeps a replayed graph from depending on shape state another shape
  set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.model import INPUT_NAMES
from sschsr_deploy.runtime.backend_base import ExportedModelBackend, ExportSpec, resolve_device

__all__ = ["MAX_CUDA_GRAPHS", "TensorRTBackend"]

log = logging.getLogger(__name__)

#: At most this many input shapes get a CUDA graph (each holds an execution context and static buffers).
MAX_CUDA_GRAPHS = 4


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    context: Any  # its own IExecutionContext
    inputs: list[Tensor]
    output: Tensor


class TensorRTBackend(ExportedModelBackend):
    """Runs a TensorRT engine (path with its ``.json`` sidecar, or a ``LoadedEngine``) on CUDA torch tensors.

    Args:
        engine: the engine file (``.engine`` / ``.plan``) or a :class:`~sschsr_deploy.engine.tensorrt.LoadedEngine`.
        device: a CUDA device (``"cuda"``, ``"cuda:N"``); the engine must have been built for this GPU.
        cuda_graph: capture one CUDA graph per input shape and replay it (see the module docstring).
        expect: ONNX metadata the engine must have (e.g. ``{"precision": "fp16"}``), checked by ``load_engine``.

    Unverified: no TensorRT available where this was written.
    """

    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike | Any, device: str | torch.device = "cuda", *,
                 cuda_graph: bool = False, expect: dict[str, str] | None = None) -> None:
        from sschsr_deploy.engine.tensorrt import EngineRunner, LoadedEngine, load_engine, require_tensorrt

        if str(device).strip().lower() == "auto":
            device = resolve_device(device)
        if not str(device).strip().lower().startswith("cuda"):
            resolve_device(device)  # an unknown device string is refused here, naming the accepted ones
            raise InputValidationError(
                f"the tensorrt backend runs on a CUDA device only; got device {str(device)!r} (use --device cuda)"
            )
        if isinstance(engine, str | os.PathLike):
            path = Path(engine)
            if not path.is_file():
                raise InputValidationError(f"TensorRT engine not found: {path}")
        elif not isinstance(engine, LoadedEngine):
            raise InputValidationError(
                f"the tensorrt backend needs a path to an engine file or a LoadedEngine; got {type(engine).__name__}"
            )
        require_tensorrt()  # TensorRTUnavailableError when TensorRT is not installed
        self.device = resolve_device(device)
        with torch.cuda.device(self.device):  # TensorRT deserializes and allocates on the current device
            loaded = engine if isinstance(engine, LoadedEngine) else load_engine(path, expect=expect)
            self.runner = EngineRunner(loaded, self.device)
        self.loaded = loaded
        self.path = Path(loaded.path)
        self.sidecar = dict(loaded.sidecar)
        self.engine = loaded.engine
        self._source = f"TensorRT engine {self.path.name}"
        if set(self.runner.inputs) != set(INPUT_NAMES) or len(self.runner.outputs) != 1:
            raise InputValidationError(
                f"{self._source} has inputs {self.runner.inputs} and outputs {self.runner.outputs}; the SSC-HSR tile "
                f"network takes {', '.join(INPUT_NAMES)} and gives one output (build it from a part='tile' export)"
            )
        self._out_name = self.runner.outputs[0]
        self.spec = self._spec()
        self.bands = self.spec.bands
        self.batch_independent = self.spec.batch_independent
        self.tile_bounds = self.spec.tile_bounds
        self.preferred_tile = self.spec.tile
        self.max_batch = self.spec.batch_max
        self.scale = self.spec.scale
        self._config = self.spec.config()
        if str((self.sidecar.get("onnx") or {}).get("weights_source", "")).startswith("random"):
            log.warning("RANDOM WEIGHTS: %s was built from an untrained network; the output is NOT a super-resolved "
                        "image", self._source)
        self.cuda_graph = bool(cuda_graph)
        self._graphs: dict[tuple, _Graph] = {}
        self._no_graph: set[tuple] = set()

    def _spec(self) -> ExportSpec:
        """ONNX metadata from the sidecar, checked against the engine's shapes, narrowed to profile 0's ranges."""
        meta = self.sidecar.get("onnx") or {}
        hsi = [None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(INPUT_NAMES[0])]
        out = [None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(self._out_name)]
        spec = ExportSpec.from_export(meta, hsi, out[1] if len(out) == 4 else None, self._source)
        build = self.sidecar.get("build") or {}
        profiles = build.get("batch_profiles") or []
        if profiles:  # the execution context runs optimisation profile 0
            spec = dataclasses.replace(spec, batch_min=int(profiles[0][0]), batch_max=int(profiles[0][2]))
        dims = build.get("dims") or {}
        if "height" in dims and "width" in dims and hsi[2] is None and hsi[3] is None:
            spec = dataclasses.replace(spec, tile_min=(int(dims["height"][0]), int(dims["width"][0])),
                                       tile_max=(int(dims["height"][2]), int(dims["width"][2])))
        return spec

    # ------------------------------------------------------------------ Backend interface
    def _run_batch(self, inputs: tuple[Tensor, ...]) -> Tensor:
        with torch.cuda.device(self.device):  # contexts, graphs and launches all work on the current device
            typed = [t.to(device=self.device, dtype=self.runner._torch_dtype(name)).contiguous()
                     for name, t in zip(INPUT_NAMES, inputs, strict=True)]
            out = self._run_graph(typed) if self.cuda_graph else None
            return out if out is not None else self._execute(self.runner.context, typed)

    def _bind(self, context: Any, inputs: list[Tensor]) -> Tensor:
        """Point ``context`` at the input tensors (shapes checked against the profile) and at a new output tensor of
        the resulting shape; returns it."""
        return self.runner.bind(context, dict(zip(INPUT_NAMES, inputs, strict=True)))[self._out_name]

    def _execute(self, context: Any, inputs: list[Tensor]) -> Tensor:
        """Enqueue one inference on torch's current stream (no host synchronisation)."""
        out = self._bind(context, inputs)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self._source}")
        return out.float()

    def _run_graph(self, inputs: list[Tensor]) -> Tensor | None:
        key = tuple(tuple(t.shape) for t in inputs)
        entry = self._graphs.get(key)
        if entry is None:
            if key in self._no_graph or len(self._graphs) >= MAX_CUDA_GRAPHS:
                return None
            entry = self._capture(key, inputs)
            if entry is None:
                return None
        for buf, t in zip(entry.inputs, inputs, strict=True):
            buf.copy_(t)
        entry.graph.replay()
        # a copy: the static output buffer is overwritten by the next replay, possibly before the download stream
        # has read this one
        return entry.output.to(torch.float32, copy=True)

    def _capture(self, key: tuple, inputs: list[Tensor]) -> _Graph | None:
        """Capture one ``execute_async_v3`` of a fresh context into a CUDA graph on a side stream."""
        try:
            context = self.engine.create_execution_context()
            static_in = [torch.empty_like(t) for t in inputs]
            static_out = self._bind(context, static_in)
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for buf, t in zip(static_in, inputs, strict=True):
                    buf.copy_(t)
                # one ordinary run first: TensorRT does lazy initialisation that must not happen during capture
                if not context.execute_async_v3(side.cuda_stream):
                    raise RuntimeError("warm-up execute_async_v3 failed")
                side.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    if not context.execute_async_v3(side.cuda_stream):
                        raise RuntimeError("execute_async_v3 failed during capture")
            current.wait_stream(side)
        except Exception as exc:  # capture is an optimisation: fall back to plain execution
            log.warning("CUDA graph capture failed for input shape %s on %s (%s: %s); running without a graph",
                        key[0], self._source, type(exc).__name__, exc)
            self._no_graph.add(key)
            return None
        log.info("captured a CUDA graph for input shape %s on %s", key[0], self._source)
        entry = _Graph(graph, context, static_in, static_out)
        self._graphs[key] = entry
        return entry

    def describe(self) -> dict[str, Any]:
        side = self.sidecar
        meta = side.get("onnx") or {}
        return {
            "backend": self.name,
            "device": str(self.device),
            "engine_file": str(self.path),
            "engine_sha256": side.get("engine_sha256"),
            "onnx_sha256": side.get("onnx_sha256"),
            "weights_sha256": meta.get("weights_sha256"),
            "tensorrt_version": side.get("tensorrt_version"),
            "gpu_name": side.get("gpu_name"),
            "compute_capability": side.get("compute_capability"),
            "precision": meta.get("precision"),
            "ops": meta.get("ops"),
            **self.spec.describe(),
            "cuda_graph": self.cuda_graph,
            "cuda_graph_shapes": [list(k[0]) for k in self._graphs],
            "bands": self.bands,
            "verified": False,
        }

    def model_info(self) -> dict[str, Any]:
        meta = self.sidecar.get("onnx") or {}
        info: dict[str, Any] = {"preset": meta.get("preset", "custom")}
        for key in ("weights_sha256", "weights_source", "batchnorm_mode", "raft_iters", "precision", "scale"):
            if key in meta:
                info[key] = meta[key]
        if "weights_source" in meta:
            info["random_weights"] = str(meta["weights_source"]).startswith("random")
        info.update(model_file=self.path.name, model_sha256=self.sidecar.get("engine_sha256"),
                    onnx_sha256=self.sidecar.get("onnx_sha256"))
        return info
