"""One request → one scene: the checks and the :class:`~sschsr_deploy.runtime.Pipeline` call behind the served model.

Kept apart from ``model.py`` (which only Triton's Python backend can import) so that it runs, and is tested, in any
process. Everything a client can get wrong is refused with an :class:`~sschsr_deploy.errors.InputValidationError`
whose one-line message goes back as the request's error; the pipeline stays loaded and serves the next request.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.serving.repository import ModelSettings

__all__ = ["SceneHandler", "one_line"]


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _scalar(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.size != 1:
        raise InputValidationError(f"{name} must hold one value; got shape {list(arr.shape)}")
    return kind(arr.reshape(-1)[0])


class SceneHandler:
    """Checks a request's tensors against the model and the limits, runs the pipeline, returns ``(hr, metadata)``."""

    def __init__(self, pipeline: Any, settings: ModelSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.requests = 0

    @classmethod
    def from_settings(cls, settings: ModelSettings, device: str | None = None) -> SceneHandler:
        """Load the pipeline ``settings`` describe (``device``: the instance's, e.g. ``cuda:1``)."""
        import torch

        from sschsr_deploy.runtime import Pipeline

        if settings.threads:
            torch.set_num_threads(settings.threads)
        options: dict[str, Any] = {"quiet": True, "batch": settings.batch}
        if settings.backend:
            options["backend"] = settings.backend
        if settings.scale is not None:
            options["scale"] = settings.scale
        if settings.precision is not None:
            options["precision"] = settings.precision
        if settings.threads and (settings.backend == "onnxruntime" or str(settings.source).endswith(".onnx")):
            options["backend_options"] = {"threads": settings.threads}
        pipeline = Pipeline.from_pretrained(settings.source, device=device or settings.device, tile=settings.tile,
                                            **options)
        return cls(pipeline, settings)

    def check(self, lr: Any, ref: Any, scale: int | None) -> tuple[np.ndarray, np.ndarray, int]:
        """The request's arrays, checked before any compute (shapes, dtypes, size limits, scale)."""
        lr, ref = np.asarray(lr), np.asarray(ref)
        if lr.ndim != 3:
            raise InputValidationError(f"LR_HSI must be h x w x C (rank 3); got shape {list(lr.shape)}")
        if lr.dtype != np.float32:
            raise InputValidationError(f"LR_HSI must be float32 (FP32); got {lr.dtype}")
        if ref.ndim != 3 or ref.shape[2] != 3:
            raise InputValidationError(f"REF_RGB must be H x W x 3; got shape {list(ref.shape)}")
        if ref.dtype != np.uint8:
            raise InputValidationError(f"REF_RGB must be uint8 (UINT8); got {ref.dtype}")
        bands = self.pipeline.backend.bands
        if lr.shape[2] != bands:
            raise InputValidationError(
                f"LR_HSI has {lr.shape[2]} bands but the served model expects {bands} (LR_HSI is h x w x C, "
                "channels last)")
        s = self.pipeline.resolve_scale(scale)
        h, w = lr.shape[:2]
        side = self.settings.min_lr_side
        if min(h, w) < max(side, 1):
            raise InputValidationError(
                f"LR_HSI is {h}x{w} px: too small, the server refuses scenes under {side}x{side} LR px")
        mpix = h * s * w * s / 1e6
        if mpix > self.settings.max_megapixels:
            raise InputValidationError(
                f"the HR scene would be {h * s}x{w * s} px ({mpix:.2f} MPix): over this server's limit of "
                f"{self.settings.max_megapixels:g} MPix; split the scene or raise --max-megapixels")
        if tuple(ref.shape[:2]) != (h * s, w * s):
            raise InputValidationError(
                f"REF_RGB is {ref.shape[0]}x{ref.shape[1]} but LR_HSI x scale {s} is {h * s}x{w * s}: the reference "
                "must cover the cube's field of view at the HR size")
        return lr, ref, s

    def __call__(self, lr: Any, ref: Any, scale: Any = None, nodata: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        t0 = time.perf_counter()
        scale = _scalar(scale, "SCALE", int)
        nodata = _scalar(nodata, "NODATA", float)
        lr, ref, s = self.check(lr, ref, scale)
        run_nodata: float | str | None = None
        if nodata is not None:
            run_nodata = "nan" if math.isnan(nodata) else nodata
        hr = self.pipeline.run(lr, ref, s, nodata=run_nodata)
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        self.requests += 1
        mapping = self.pipeline.last_band_mapping
        meta = {
            "lr_shape_hwc": list(lr.shape),
            "hr_shape_hwc": list(hr.shape),
            "scale": s,
            "nodata": None if nodata is None else ("nan" if math.isnan(nodata) else nodata),
            "band_mapping": None if mapping is None else mapping.describe(),
            **self.pipeline.describe(),
            "timings": {**self.pipeline.last_timings, "request_s": round(time.perf_counter() - t0, 4)},
        }
        return hr, meta

    @staticmethod
    def encode_metadata(meta: dict[str, Any]) -> np.ndarray:
        """``meta`` as UTF-8 JSON bytes in a uint8 array (the ``METADATA`` output)."""
        return np.frombuffer(json.dumps(meta, default=str).encode("utf-8"), dtype=np.uint8).copy()
