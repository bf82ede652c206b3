"""The PyTorch backend: an ``SSCHSR`` module run eagerly (optionally ``torch.compile``d or under autocast)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sschsr_deploy.checkpoint import state_dict_sha256
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime.backend_base import Backend, resolve_device

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Eager PyTorch (``torch.inference_mode``), optionally through ``torch.compile``.

    The model is put in ``eval()`` mode and moved to ``device``. ``compile=True`` wraps it in ``torch.compile``
    (dynamic=False: the pipeline feeds one window shape, plus possibly a smaller last batch). ``channels_last`` and
    reduced precision are left to later work.

    ``check_inputs=False`` (default) skips the model's own input validation during :meth:`run`: the pipeline has
    already validated sizes and finiteness, and the model's ``isfinite(...).all()`` checks would force a host-device
    synchronisation per batch, defeating the stream overlap on a GPU. The model's setting is restored after each call.

    ``half``: run under autocast, ``True`` / ``"fp16"`` for float16, ``"bf16"`` for bfloat16 (the norms, Gram
    matrices, softmax and matching stay float32: the ops' float32 islands); the output is float32. Meant for GPUs
    (tensor cores); CPU autocast works too but is rarely faster. Unverified on a GPU.
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, device: str | torch.device = "cpu", compile: bool = False, check_inputs: bool = False,
        half: bool | str = False,
    ) -> None:
        self.device = resolve_device(device)
        self.autocast_dtype = _autocast_dtype(half)
        self.model = model.eval().to(self.device)
        self.bands = int(model.config.bands)
        self.scale = int(model.config.scale)
        self.batch_independent = getattr(model, "batchnorm_mode", "running") != "batch"
        self.compiled = bool(compile)
        self.check_inputs = bool(check_inputs)
        self._fn = torch.compile(self.model, dynamic=False) if compile else self.model

    def run(self, *inputs: Tensor) -> Tensor:
        previous = getattr(self.model, "validate_inputs", True)
        self.model.validate_inputs = self.check_inputs
        try:
            if self.autocast_dtype is None:
                with torch.inference_mode():
                    return self._fn(*inputs)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return self._fn(*inputs).float()
        finally:
            self.model.validate_inputs = previous

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "backend": self.name,
            "device": str(self.device),
            "compiled": self.compiled,
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "batchnorm_mode": getattr(self.model, "batchnorm_mode", None),
            "bands": cfg.bands,
        }

    @property
    def config(self) -> Any:
        return self.model.config

    def model_info(self) -> dict[str, Any]:
        """The preset whose config the model has ("custom" otherwise) and the hash of its weights."""
        from sschsr_deploy.model.presets import PRESETS

        cfg = self.model.config
        preset = next((k for k, v in PRESETS.items() if v == cfg), "custom")
        return {"preset": preset, "scale": int(cfg.scale), "weights_sha256": state_dict_sha256(self.model)}


def _autocast_dtype(half: bool | str) -> torch.dtype | None:
    if half is False or half is None:
        return None
    table = {True: torch.float16, "fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16}
    if half not in table:
        raise InputValidationError(f"half must be True, 'fp16' or 'bf16'; got {half!r}")
    return table[half]


