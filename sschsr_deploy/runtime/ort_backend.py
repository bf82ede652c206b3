"""The ONNX Runtime backend: runs an ``.onnx`` tile network exported by :func:`sschsr_deploy.engine.onnx.export_onnx`.

Why a separate backend: ONNX Runtime runs the exported graph without PyTorch's eager overhead (measured 4.3x faster
than eager PyTorch per 128² ``tiny`` tile on the CPU, ``benchmarks/bench_backends.py``), and the same file is what
TensorRT builds from, so running it here checks the artefact that gets deployed.

What the backend reads from the file, and why:

- the graph's five inputs (named as ``sschsr_deploy.model.INPUT_NAMES``) and their shapes, and the export metadata
  (``metadata_props``): the band count, the window size (fixed, or the bounds of a dynamic tile), the batch bounds
  and the batch-norm mode, checked against each other (:class:`~sschsr_deploy.runtime.backend_base.ExportSpec`); the
  pipeline then plans windows the graph can take (a fixed-tile export forces its tile);
- the input element type (float32, or float16 for graphs exported with float16 inputs): inputs are cast to it;
- ``sschsr`` custom-domain nodes (``ops="custom"`` exports for our TensorRT plugins): ONNX Runtime has no kernels for
  them (no custom-op library is built, see DESIGN.md), so such a file is refused with a message naming the fix;
- the file's sha256 and the weights sha256 recorded at export, for the output sidecar.

Sessions come from :func:`sschsr_deploy.engine.onnx.make_session`, which asserts the active providers: a CUDA
request that ONNX Runtime cannot honour is an error, never a silent fallback to the CPU.

On the CPU the windows go through ``session.run`` as numpy arrays. On CUDA (``CUDAExecutionProvider``) inputs and
output stay on the GPU: they are bound to the session by pointer (``io_binding``) from torch tensors, so no host copy
happens. **The CUDA path is unverified**: no GPU with onnxruntime-gpu was available while writing it; it follows the
documented ``IOBinding.bind_input`` / ``bind_output`` / ``InferenceSession.run_with_iobinding`` API.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sschsr_deploy.errors import InputValidationError, SSCHSRError
from sschsr_deploy.model import INPUT_NAMES
from sschsr_deploy.runtime.backend_base import ExportedModelBackend, ExportSpec, resolve_device

__all__ = ["OnnxRuntimeBackend", "custom_op_nodes"]

log = logging.getLogger(__name__)

CUSTOM_DOMAIN = "sschsr"  # the custom-op domain of sschsr_deploy.engine.onnx (not imported: it pulls in onnxscript)

#: ONNX Runtime input type strings -> (numpy, torch) dtypes the backend can feed
_TYPES = {
    "tensor(float)": (np.float32, torch.float32),
    "tensor(float16)": (np.float16, torch.float16),
}


def custom_op_nodes(model: Any) -> list[str]:
    """``sschsr`` custom-domain op types in ``model``'s graph that have no function body ONNX Runtime could run."""
    bodies = {(f.domain, f.name) for f in model.functions}
    return sorted({n.op_type for n in model.graph.node
                   if n.domain == CUSTOM_DOMAIN and (n.domain, n.op_type) not in bodies})


_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _check_initializers(model: Any, path: Path) -> None:
    """Refuse weights stored outside the file (exports never do it; ONNX Runtime would open other files named by the
    model) and weights that are unreadable or hold NaN / infinity (every output would be NaN)."""
    from onnx import numpy_helper

    bad: list[tuple[str, int]] = []
    for init in model.graph.initializer:
        if init.data_location == 1 or len(init.external_data):  # TensorProto.EXTERNAL
            raise InputValidationError(
                f"{path.name}: initializer {init.name!r} refers to external data; exported SSC-HSR models keep their "
                "weights inside the file: export it again"
            )
        if init.data_type not in _FLOAT_TYPES:
            continue
        try:
            values = numpy_helper.to_array(init)
        except Exception as exc:  # raw data of the wrong length, dims that do not fit the data, ...
            raise InputValidationError(
                f"{path}: initializer {init.name!r} is unreadable (truncated or corrupt file?): "
                f"{' '.join(str(exc).split())[:200]}"
            ) from None
        count = int(values.size - np.count_nonzero(np.isfinite(values.astype(np.float32, copy=False))))
        if count:
            bad.append((init.name, count))
    if bad:
        names = ", ".join(f"{n} ({c})" for n, c in bad[:5]) + (f", ... (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise InputValidationError(
            f"{path.name} holds {sum(c for _, c in bad)} non-finite weight values (NaN or infinity) in {len(bad)} "
            f"initializers: {names}; the weights are corrupt: export the model again from good weights"
        )


class OnnxRuntimeBackend(ExportedModelBackend):
    """Runs an exported tile network (path to an ``.onnx`` file, or an open ``onnxruntime.InferenceSession``).

    Args:
        model: the ``.onnx`` file (standard ops) or an open session (then its providers decide the device, which
            must agree with ``device``).
        device: ``"cpu"`` (``CPUExecutionProvider``) or ``"cuda"`` / ``"cuda:0"`` (``CUDAExecutionProvider``, IO
            binding of torch CUDA tensors; unverified). Other CUDA indices: use ``CUDA_VISIBLE_DEVICES``.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
        in_flight: CPU only: windows run at once, each on its own session of ``threads`` threads (default 1 thread
            each when ``in_flight`` > 1). A batch of B windows is then split over the sessions. Measured on 2 cores
            (``benchmarks/bench_vs_official.py --throughput``): two windows in flight on one thread each give
            1.11-1.17x the windows/s of one window on two threads; memory grows by one session per window. Use
            with ``batch`` ≥ ``in_flight``; latency of a single window gets worse.

    Raises :class:`InputValidationError` for a missing, truncated or corrupt file, a custom-op graph, a graph that is
    not the SSC-HSR tile network (input names, band counts), or metadata that contradicts the graph.
    """

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike | Any, device: str | torch.device = "cpu", *,
                 threads: int | None = None, in_flight: int = 1) -> None:
        import onnxruntime as ort

        self.device = resolve_device(device)
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise InputValidationError(f"in_flight must be a positive integer; got {in_flight!r}")
        if in_flight > 1 and (self.device.type != "cpu" or not isinstance(model, str | os.PathLike)):
            raise InputValidationError("in_flight > 1 runs several CPU sessions of an .onnx file (not on a GPU, "
                                       "not with an open session)")
        self.in_flight = in_flight
        self._local = threading.local()  # the session a worker thread of run() uses
        self._more_sessions: list[Any] = []
        if self.device.type == "cuda" and (self.device.index or 0) != 0:
            raise InputValidationError(
                f"the onnxruntime backend runs on cuda:0 only (got {self.device}); select the GPU with "
                "CUDA_VISIBLE_DEVICES instead"
            )
        self.path: Path | None = None
        self.model_sha256: str | None = None
        if isinstance(model, ort.InferenceSession):
            self.session = model
            meta = dict(model.get_modelmeta().custom_metadata_map)
            self._source = "the ONNX Runtime session"
            active = model.get_providers()
            want_cuda = self.device.type == "cuda"
            if want_cuda != (bool(active) and active[0] == "CUDAExecutionProvider"):
                raise InputValidationError(
                    f"the session runs on {active} but device {str(self.device)!r} was requested; open the session "
                    "with matching providers or pass the .onnx path instead"
                )
        elif isinstance(model, str | os.PathLike):
            meta = self._load_file(Path(model))
            each = threads if threads else (1 if in_flight > 1 else None)
            self.session = self._open(each)
            self._more_sessions = [self._open(each) for _ in range(in_flight - 1)]
            if in_flight > 1:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="sschsr-ort")
        else:
            raise InputValidationError(
                f"the onnxruntime backend needs a path to an .onnx file or an onnxruntime.InferenceSession; got "
                f"{type(model).__name__}"
            )
        self.metadata = meta
        self.providers = list(self.session.get_providers())
        try:
            self._check_io()
            self.spec = ExportSpec.from_export(meta, self._inputs[INPUT_NAMES[0]].shape,
                                               self._output.shape[1] if len(self._output.shape) == 4 else None,
                                               self._source)
        except SSCHSRError:
            raise
        except Exception as exc:  # ONNX Runtime decoding a damaged description (names, shapes): UnicodeDecodeError...
            raise InputValidationError(
                f"{self._source}: its inputs and outputs cannot be read (corrupt file?): {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}"
            ) from None
        self.bands = self.spec.bands
        self.batch_independent = self.spec.batch_independent
        self.tile_bounds = self.spec.tile_bounds
        self.preferred_tile = self.spec.tile
        # a batch is split over the sessions first: each takes up to the export's maximum
        self.max_batch = None if self.spec.batch_max is None else self.spec.batch_max * self.in_flight
        self.scale = self.spec.scale
        self._config = self.spec.config()
        if meta.get("weights_source", "").startswith("random"):
            log.warning("RANDOM WEIGHTS: %s was exported from an untrained network (%s); the output is NOT a "
                        "super-resolved image", self._source, meta["weights_source"])

    # ------------------------------------------------------------------ loading
    def _load_file(self, path: Path) -> dict[str, str]:
        """Read and check the file before ONNX Runtime sees it: existence, integrity, custom ops; returns metadata."""
        import onnx

        from sschsr_deploy.engine.onnx import read_metadata

        self._source = f"ONNX model {path.name}"
        if not path.is_file():
            raise InputValidationError(f"ONNX model not found: {path}" if not path.exists() else
                                       f"ONNX model {path} is not a file")
        data = path.read_bytes()
        try:
            model = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf raises DecodeError and friends on truncated / foreign files
            raise InputValidationError(
                f"{path} is not a readable ONNX model (truncated or corrupt file?): {' '.join(str(exc).split())}"
            ) from None
        if len(model.graph.node) == 0:
            raise InputValidationError(f"{path} holds no ONNX graph (truncated or corrupt file?)")
        _check_initializers(model, path)
        custom = custom_op_nodes(model)
        if custom:
            raise InputValidationError(
                f"{path.name} uses sschsr custom-op nodes ({', '.join(custom)}; ops='custom' export for the TensorRT "
                "plugins), which ONNX Runtime cannot run without our custom-op library (not built): export with the "
                "standard ops (export/export_onnx.py --ops standard) for the onnxruntime backend, or build a TensorRT "
                "engine from this file"
            )
        self.path = path
        self.model_sha256 = hashlib.sha256(data).hexdigest()
        meta = read_metadata(model)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):  # protobuf gives bytes for
            raise InputValidationError(                                                # text that is not UTF-8
                f"{path}: its export metadata is not text (truncated or corrupt file?)"
            )
        return meta

    def _open(self, threads: int | None) -> Any:
        from sschsr_deploy.engine.onnx import make_session

        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda"
                     else ["CPUExecutionProvider"])
        try:
            return make_session(self.path, providers, threads=threads)
        except SSCHSRError:  # make_session's refusal of a silent provider fallback
            raise
        except Exception as exc:  # onnxruntime raises its own types (InvalidGraph, Fail, ...)
            raise InputValidationError(
                f"ONNX Runtime could not load {self.path} (truncated or corrupt file, or an opset / operator this "
                f"ONNX Runtime lacks): {' '.join(str(exc).split())}"
            ) from None

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise InputValidationError(
                f"{self._source} takes inputs {sorted(inputs)}; the SSC-HSR tile network takes "
                f"{', '.join(INPUT_NAMES)} (export it with sschsr_deploy.engine.onnx.export_onnx, part='tile')"
            )
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise InputValidationError(f"{self._source} has {len(outputs)} outputs; the tile network has one")
        for name in INPUT_NAMES[1:]:
            ch = inputs[name].shape[1] if len(inputs[name].shape) == 4 else None
            if len(inputs[name].shape) != 4 or (isinstance(ch, int) and ch != 3):
                raise InputValidationError(
                    f"{self._source}: input {name} has shape {inputs[name].shape}; expected B x 3 x H x W"
                )
        for i in [*inputs.values(), outputs[0]]:
            if i.type not in _TYPES:
                raise InputValidationError(f"{self._source}: {i.name} is {i.type}; only float32 / float16 tensors "
                                           "are supported")
        self._inputs = inputs
        self._output = outputs[0]

    # ------------------------------------------------------------------ Backend interface
    def run(self, *inputs: Tensor) -> Tensor:
        b = int(inputs[0].shape[0]) if inputs and inputs[0].dim() == 4 else 0
        if self.in_flight == 1 or b < 2:
            return super().run(*inputs)
        parts = min(self.in_flight, b)
        bounds = [round(i * b / parts) for i in range(parts + 1)]
        sessions = [self.session, *self._more_sessions]
        local = self._local

        def one(i: int) -> Tensor:
            local.session = sessions[i]  # this thread's session (ONNX Runtime releases the GIL while it runs)
            return super(OnnxRuntimeBackend, self).run(*(t[bounds[i]:bounds[i + 1]] for t in inputs))

        return torch.cat(list(self._pool.map(one, range(parts))))

    def _run_batch(self, inputs: tuple[Tensor, ...]) -> Tensor:
        return self._run_cuda(inputs) if self.device.type == "cuda" else self._run_cpu(inputs)

    def _run_cpu(self, inputs: tuple[Tensor, ...]) -> Tensor:
        feeds = {}
        for name, t in zip(INPUT_NAMES, inputs, strict=True):
            np_dtype = _TYPES[self._inputs[name].type][0]
            feeds[name] = np.ascontiguousarray(t.detach().to("cpu").numpy(), dtype=np_dtype)
        session = getattr(self._local, "session", None) or self.session
        out = session.run([self._output.name], feeds)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def _run_cuda(self, inputs: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - needs a GPU; unverified
        """IO binding: ONNX Runtime reads the torch tensors and writes the output tensor in place (no host copy)."""
        dev_id = self.device.index or 0
        binding = self.session.io_binding()
        keep = []
        for name, t in zip(INPUT_NAMES, inputs, strict=True):
            np_dtype, torch_dtype = _TYPES[self._inputs[name].type]
            t = t.to(device=self.device, dtype=torch_dtype).contiguous()
            keep.append(t)
            binding.bind_input(name=name, device_type="cuda", device_id=dev_id, element_type=np_dtype,
                               shape=tuple(t.shape), buffer_ptr=t.data_ptr())
        np_out, torch_out = _TYPES[self._output.type]
        b, _, h, w = keep[0].shape
        out = torch.empty((b, self.bands, h, w), dtype=torch_out, device=self.device)
        binding.bind_output(name=self._output.name, device_type="cuda", device_id=dev_id, element_type=np_out,
                            shape=tuple(out.shape), buffer_ptr=out.data_ptr())
        # ONNX Runtime runs on its own CUDA stream: the inputs written on torch's current stream must be complete
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # synchronises its stream before returning (the default)
        return out.float()

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        m = self.metadata
        return {
            "backend": self.name,
            "device": str(self.device),
            "providers": self.providers,
            "onnxruntime_version": ort.__version__,
            "io_binding": self.device.type == "cuda",
            "in_flight": self.in_flight,
            "model_file": str(self.path) if self.path is not None else None,
            "model_sha256": self.model_sha256,
            "weights_sha256": m.get("weights_sha256"),
            "precision": m.get("precision"),
            "ops": m.get("ops"),
            "opset": m.get("opset"),
            **self.spec.describe(),
            "bands": self.bands,
        }

    def model_info(self) -> dict[str, Any]:
        m = self.metadata
        info: dict[str, Any] = {"preset": m.get("preset", "custom")}
        for key in ("weights_sha256", "weights_source", "batchnorm_mode", "raft_iters", "precision", "scale"):
            if key in m:
                info[key] = m[key]
        if "weights_source" in m:
            info["random_weights"] = m["weights_source"].startswith("random")
        if self.path is not None:
            info.update(model_file=self.path.name, model_sha256=self.model_sha256)
        return info
