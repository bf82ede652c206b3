"""The PyTorch backend: an ``SSCHSR`` module run eagerly (optionally ``torch.compile``d or under autocast)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from sschsr_deploy.checkpoint import state_dict_sha256
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime.backend_base import Backend, resolve_device, run_batch_within

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Eager PyTorch (``torch.inference_mode``), optionally through ``torch.compile``.

    The model is put in ``eval()`` mode and moved to ``device``. ``compile=True`` wraps it in ``torch.compile``
    (dynamic=False) with Inductor's *freezing* (the weights become constants: convolutions pre-packed for oneDNN
    with their elementwise epilogues fused; change the weights and build a new backend). The whole forward is one
    graph, float32 islands included (:mod:`sschsr_deploy.precision`; tested: no graph break). Measured on the
    official preset at 256² on 2 CPU cores: 1.16x (bf16 and fp32 channels-last) faster than eager, after 2-3
    minutes of compilation per input shape and process — for servers and long runs, not for one small scene. So
    that one compilation serves a whole run, a compiled backend runs **every call at the batch of its first call**
    (the pipeline's warm-up: :meth:`Pipeline.warmup`): a smaller batch is padded with copies of its last window
    (their outputs dropped), a larger one split; and the pipeline gives it windows of one size (its tile; smaller
    images padded up to it, as for a fixed-shape export).

    ``check_inputs=False`` (default) skips the model's own input validation during :meth:`run`: the pipeline has
    already validated sizes and finiteness, and the model's ``isfinite(...).all()`` checks would force a host-device
    synchronisation per batch, defeating the stream overlap on a GPU. The model's setting is restored after each call.

    ``precision``: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"`` to run under autocast (the norms, Gram
    matrices, softmax, matching and deformable sampling stay float32: the float32 islands of
    :mod:`sschsr_deploy.precision`); the output is float32. ``"int8"`` is refused: INT8 runs an exported QDQ graph
    (``sschsr-deploy export --precision int8``). ``half`` is the older spelling (``True`` = fp16, ``"bf16"``).
    Autocast on a GPU is unverified (no GPU has run it).

    ``channels_last``: weights and inputs in the channels-last memory format (oneDNN's fast layout for the depthwise
    convolutions on a CPU); ``"auto"`` (default) turns it on for bf16 / fp16 on a CPU, where
    ``benchmarks/bench_vs_official.py`` measured it 1.2-1.45x faster than NCHW. fp32 gains too (1.1-1.3x) but
    stays NCHW unless asked: its results would move by float rounding (~5e-6) under existing users. Outputs equal the
    NCHW run's to float rounding.
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, device: str | torch.device = "cpu", compile: bool = False, check_inputs: bool = False,
        half: bool | str = False, precision: str | None = None, channels_last: bool | str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, half)
        self.autocast_dtype = AUTOCAST_DTYPES[self.precision]
        self.channels_last = _channels_last(channels_last, self.device, self.precision)
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bands = int(model.config.bands)
        self.scale = int(model.config.scale)
        self.batch_independent = getattr(model, "batchnorm_mode", "running") != "batch"
        self.compiled = bool(compile)
        self.check_inputs = bool(check_inputs)
        self._fn = torch.compile(self.model, dynamic=False) if compile else self.model
        #: compiled: the batch every call runs at (that of the first call)
        self.static_batch: int | None = None

    def run(self, *inputs: Tensor) -> Tensor:
        if not self.compiled:
            return self._run(*inputs)
        if self.static_batch is None:  # batch-statistics batch norm: copies would change the statistics, so one
            self.static_batch = int(inputs[0].shape[0]) if self.batch_independent else 1  # window per call
        return run_batch_within(lambda batch: self._run(*batch), inputs, self.static_batch, self.static_batch)

    def _run(self, *inputs: Tensor) -> Tensor:
        previous = getattr(self.model, "validate_inputs", True)
        self.model.validate_inputs = self.check_inputs
        if self.channels_last:
            inputs = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)
        try:
            with torch.inference_mode(), _freezing(self.compiled):
                if self.autocast_dtype is None:
                    return self._fn(*inputs)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    return self._fn(*inputs).float()
        finally:
            self.model.validate_inputs = previous

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "backend": self.name,
            "device": str(self.device),
            "compiled": self.compiled,
            **({"static_batch": self.static_batch} if self.compiled else {}),
            "precision": self.precision,
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "channels_last": self.channels_last,
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


def _freezing(compiled: bool) -> Any:
    """Inductor's freezing while a compiled model is called (it compiles on the first call of each shape). Set as a
    config patch around the call: ``torch.compile(options={"freezing": True})`` was measured not to take effect
    (the convolutions stayed ``aten::mkldnn_convolution``; with the patch they become pre-packed
    ``mkldnn::_convolution_pointwise`` with their epilogues fused)."""
    if not compiled:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


#: the precisions the torch backend runs, and their autocast dtype
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: every precision the package knows (int8: an exported QDQ graph on ONNX Runtime / TensorRT)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def normalize_precision(precision: str) -> str:
    """``precision`` spelled the package's way (``"bfloat16"`` → ``"bf16"``); unknown names raise."""
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS:
        raise InputValidationError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return name


def resolve_precision(precision: str | None, half: bool | str = False) -> str:
    """The torch backend's precision from ``precision`` or the older ``half`` (both given: they must agree)."""
    legacy = None
    if half is not False and half is not None:
        legacy = "fp16" if half is True else _ALIASES.get(half.lower(), half.lower()) if isinstance(half, str) else None
        if legacy not in ("fp16", "bf16"):
            raise InputValidationError(f"half must be True, 'fp16' or 'bf16'; got {half!r}")
    name = None if precision is None else normalize_precision(precision)
    if name is not None and legacy is not None and name != legacy:
        raise InputValidationError(f"precision={precision!r} contradicts half={half!r}")
    name = name or legacy or "fp32"
    if name == "int8":
        raise InputValidationError("int8 runs an exported, calibrated QDQ graph, not the torch backend: "
                                   "sschsr-deploy export --precision int8, then run the .onnx")
    return name


def _channels_last(value: bool | str, device: torch.device, precision: str) -> bool:
    if value == "auto":
        return device.type == "cpu" and precision in ("bf16", "fp16")
    if not isinstance(value, bool):
        raise InputValidationError(f"channels_last must be True, False or 'auto'; got {value!r}")
    return value
