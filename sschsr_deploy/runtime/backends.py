"""Inference backends behind one small interface: the pipeline hands a backend batched windows and gets the HR cube.

A :class:`Backend` takes the five model inputs as B x C x h x w float32 tensors already on its device and returns the
B x bands x h x w output there. The pipeline never asks which backend it has; it reads ``device``, ``bands``,
``batch_independent`` and the shape limits (``tile_bounds``, ``preferred_tile``, ``max_batch``), and calls
:meth:`Backend.run`.

Three implementations, chosen by :func:`create_backend`:

- ``"torch"``: :class:`TorchBackend` (eager PyTorch, optionally ``torch.compile``) on an ``SSCHSR`` module;
- ``"onnxruntime"``: :class:`~sschsr_deploy.runtime.ort_backend.OnnxRuntimeBackend` on an ``.onnx`` file exported
  by :func:`sschsr_deploy.engine.onnx.export_onnx` (standard ops);
- ``"tensorrt"``: :class:`~sschsr_deploy.runtime.trt_backend.TensorRTBackend` on an engine built by
  :func:`sschsr_deploy.engine.tensorrt.build_engine` (unverified: no TensorRT here).

The interface lives in :mod:`.backend_base`, each implementation in its own module; this module is the factory on
top. The engine backends are imported on use, so neither onnxruntime nor TensorRT is needed to import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sschsr_deploy.checkpoint import state_dict_sha256
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime.backend_base import Backend, ExportedModelBackend, ExportSpec, resolve_device
from sschsr_deploy.runtime.torch_backend import TorchBackend, normalize_precision

__all__ = [
    "BACKENDS",
    "ENGINE_SUFFIXES",
    "Backend",
    "ExportSpec",
    "ExportedModelBackend",
    "TorchBackend",
    "check_precision",
    "backend_for_path",
    "create_backend",
    "resolve_device",
    "state_dict_sha256",
]

#: Backend names :func:`create_backend` knows, and whether they are implemented.
BACKENDS = {"torch": True, "onnxruntime": True, "tensorrt": True}

#: File suffixes of the exported models each engine backend reads (used to infer the backend from a path).
ENGINE_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}


def create_backend(name: str, model_or_engine: Any, device: str | torch.device = "cpu", **options: Any) -> Backend:
    """The backend called ``name`` for ``model_or_engine``; a ready :class:`Backend` is returned as is.

    - ``"torch"``: an ``SSCHSR`` ``nn.Module``; options: ``compile``, ``check_inputs``.
    - ``"onnxruntime"``: a path to an ``.onnx`` file from :func:`sschsr_deploy.engine.onnx.export_onnx` (standard
      ops) or an open ``onnxruntime.InferenceSession``; options: ``threads``, ``in_flight`` (CPU windows at once).
    - ``"tensorrt"``: a path to an engine built by :func:`sschsr_deploy.engine.tensorrt.build_engine` (with its
      ``.json`` sidecar) or a ``LoadedEngine``; options: ``cuda_graph``, ``expect``. CUDA only; unverified.
    """
    if isinstance(model_or_engine, Backend):
        return model_or_engine
    key = str(name).lower()
    if key not in BACKENDS:
        raise InputValidationError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if key == "onnxruntime":
        from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_or_engine, device, **options)
    if key == "tensorrt":
        from sschsr_deploy.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(model_or_engine, device, **options)
    if not isinstance(model_or_engine, nn.Module):
        hint = ""
        if isinstance(model_or_engine, str | os.PathLike):
            guess = ENGINE_SUFFIXES.get(Path(model_or_engine).suffix.lower())
            if guess:
                hint = f" (for an exported model pass backend={guess!r})"
        raise InputValidationError(
            f"the torch backend needs an SSCHSR nn.Module; got {type(model_or_engine).__name__}{hint}"
        )
    return TorchBackend(model_or_engine, device, **options)


def check_precision(backend: Backend, precision: str) -> None:
    """Refuse a backend whose precision is not the one asked for (an fp32 export run as ``--precision int8`` would
    silently be fp32): the user re-exports, or leaves the precision to the exported model."""
    want = normalize_precision(precision)
    if backend.precision != want:
        hint = ("re-export it: sschsr-deploy export --precision " + want) if backend.name != "torch" else \
            "the torch backend runs fp32 / bf16 / fp16"
        raise InputValidationError(f"precision {want} was asked, but the {backend.name} backend runs "
                                   f"{backend.precision} ({hint})")


def backend_for_path(path: str | os.PathLike) -> str:
    """The engine backend that reads ``path``, from its suffix (``.onnx`` → onnxruntime, ``.engine/.plan`` →
    tensorrt); raises ``InputValidationError`` for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in ENGINE_SUFFIXES:
        raise InputValidationError(
            f"cannot tell the backend of {Path(path).name!r} from its suffix (known: "
            f"{', '.join(f'{k} -> {v}' for k, v in ENGINE_SUFFIXES.items())}); pass --backend / backend= explicitly"
        )
    return ENGINE_SUFFIXES[suffix]


def __getattr__(name: str) -> Any:
    """The engine backends, imported on first use (they need onnxruntime / TensorRT only when built)."""
    if name == "OnnxRuntimeBackend":
        from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "TensorRTBackend":
        from sschsr_deploy.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
