"""Inference backends behind one small interface: the pipeline hands a backend batched windows and gets the HR cube.

A :class:`Backend` takes the five model inputs as B x C x h x w float32 tensors already on its device and returns the
B x bands x h x w output there. The pipeline never asks which backend it has; it reads ``device``, ``bands`` and
``batch_independent`` and calls :meth:`Backend.run`.

Implemented now: :class:`TorchBackend` (eager PyTorch, optionally ``torch.compile``). The ONNX Runtime and TensorRT
backends arrive with the export issue; :func:`create_backend` names them and raises a clear error until then.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sschsr_deploy.checkpoint import state_dict_sha256
from sschsr_deploy.errors import InputValidationError

__all__ = ["BACKENDS", "Backend", "TorchBackend", "create_backend", "load_model", "state_dict_sha256"]

log = logging.getLogger(__name__)

#: Backend names :func:`create_backend` knows, and whether they are implemented yet.
BACKENDS = {"torch": True, "onnxruntime": False, "tensorrt": False}


class Backend(ABC):
    """Runs the network on batches of windows. Subclasses set ``name``, ``device`` and ``bands``."""

    name: str = "?"
    device: torch.device
    bands: int
    #: False when a window's output depends on the other windows in its batch (batch-statistics batch norm): the
    #: pipeline then runs one window per batch.
    batch_independent: bool = True

    @abstractmethod
    def run(self, *inputs: Tensor) -> Tensor:
        """Forward the five inputs (B x C x h x w float32 on ``device``); return B x bands x h x w float32."""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for the output sidecar."""
        return {"backend": self.name, "device": str(self.device)}

    def warmup(self, height: int, width: int, batch: int = 1) -> None:
        """Run once on zeros of the given window size (compilation, cuDNN autotuning, allocator warm-up)."""
        shapes = [(batch, self.bands, height, width)] + [(batch, 3, height, width)] * 4
        with torch.inference_mode():
            inputs = [torch.zeros(s, device=self.device) for s in shapes]
            inputs[1] += 0.5  # constant images are fine for the network; avoid exact zeros in the normalisations
            self.run(*inputs)


class TorchBackend(Backend):
    """Eager PyTorch (``torch.inference_mode``), optionally through ``torch.compile``.

    The model is put in ``eval()`` mode and moved to ``device``. ``compile=True`` wraps it in ``torch.compile``
    (dynamic=False: the pipeline feeds one window shape, plus possibly a smaller last batch). ``channels_last`` and
    reduced precision are left to later work.

    ``check_inputs=False`` (default) skips the model's own input validation during :meth:`run`: the pipeline has
    already validated sizes and finiteness, and the model's ``isfinite(...).all()`` checks would force a host-device
    synchronisation per batch, defeating the stream overlap on a GPU. The model's setting is restored after each call.
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, device: str | torch.device = "cpu", compile: bool = False, check_inputs: bool = False
    ) -> None:
        self.device = _resolve_device(device)
        self.model = model.eval().to(self.device)
        self.bands = int(model.config.bands)
        self.batch_independent = getattr(model, "batchnorm_mode", "running") != "batch"
        self.compiled = bool(compile)
        self.check_inputs = bool(check_inputs)
        self._fn = torch.compile(self.model, dynamic=False) if compile else self.model

    def run(self, *inputs: Tensor) -> Tensor:
        previous = getattr(self.model, "validate_inputs", True)
        self.model.validate_inputs = self.check_inputs
        try:
            with torch.inference_mode():
                return self._fn(*inputs)
        finally:
            self.model.validate_inputs = previous

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "backend": self.name,
            "device": str(self.device),
            "compiled": self.compiled,
            "batchnorm_mode": getattr(self.model, "batchnorm_mode", None),
            "bands": cfg.bands,
        }


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputValidationError(f"device {device!r} requested but CUDA is not available here (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise InputValidationError(f"unsupported device {device!r}; use 'cpu' or 'cuda[:N]'")
    return dev


def load_model(
    preset: str = "tiny",
    weights: str | os.PathLike | None = None,
    *,
    bands: int = 31,
    batchnorm_mode: str = "running",
    seed: int | None = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a preset and load ``weights`` (.safetensors, or an official / own .pth checkpoint).

    Without ``weights`` the model keeps random initial weights (seeded with ``seed``), and the returned info says so:
    only useful for tests, benchmarks and the demo. Returns ``(model, info)`` where ``info`` holds ``preset``,
    ``weights`` (file name or ``"random"``), ``weights_sha256`` and ``random_weights``.
    """
    from sschsr_deploy.checkpoint import load_into, load_official_checkpoint, load_safetensors
    from sschsr_deploy.io.atomic import file_sha256
    from sschsr_deploy.model import SSCHSR

    try:
        if seed is not None and weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = SSCHSR.from_preset(preset, batchnorm_mode=batchnorm_mode, bands=bands)
        else:
            model = SSCHSR.from_preset(preset, batchnorm_mode=batchnorm_mode, bands=bands)
    except ValueError as exc:
        raise InputValidationError(str(exc)) from None
    info: dict[str, Any] = {"preset": preset, "bands": bands, "batchnorm_mode": batchnorm_mode}
    if weights is None:
        info.update(weights="random", random_weights=True, weights_seed=seed, weights_sha256=state_dict_sha256(model))
        return model.eval(), info
    path = Path(weights)
    if not path.exists():
        raise InputValidationError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        sd, _ = load_safetensors(path)
    else:
        sd = load_official_checkpoint(path)
    load_into(model, sd, strict=True)
    info.update(weights=path.name, random_weights=False, weights_sha256=file_sha256(path))
    return model.eval(), info


def create_backend(name: str, model_or_engine: Any, device: str | torch.device = "cpu", **options: Any) -> Backend:
    """The backend called ``name`` for ``model_or_engine`` (an ``nn.Module`` for ``torch``).

    ``options`` go to the backend (``compile=True`` for torch). ``onnxruntime`` and ``tensorrt`` are not available yet.
    """
    if isinstance(model_or_engine, Backend):
        return model_or_engine
    key = str(name).lower()
    if key not in BACKENDS:
        raise InputValidationError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if not BACKENDS[key]:
        raise InputValidationError(
            f"backend {key!r} is not available yet: it arrives with the ONNX / TensorRT export work; use "
            "backend='torch'"
        )
    if not isinstance(model_or_engine, nn.Module):
        raise InputValidationError(
            f"the torch backend needs an SSCHSR nn.Module; got {type(model_or_engine).__name__}"
        )
    return TorchBackend(model_or_engine, device, **options)
