"""One request → one scene: the checks and the :class:`~sschsr_deploy.runtime.Pipeline` call behind the served model.

Kept apart from ``model.py`` (which only Triton's Python backend can import) so that it runs, and is tested, in any
process. Everything a client can get wrong is refused with an :class:`~sschsr_deploy.errors.InputValidationError`
whose one-line message goes back as the request's error; the pipeline stays loaded and serves the next request.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
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
        if settings.compile:
            options["compile"] = True
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
        """One scene: ``(hr, metadata)``; a refused scene raises (see :meth:`run_many`, which this is for one)."""
        (result,) = self.run_many([(lr, ref, scale, nodata)])
        if isinstance(result, BaseException):
            raise result
        return result

    def run_many(self, items: Sequence[tuple[Any, Any, Any, Any]]
                 ) -> list[tuple[np.ndarray, dict[str, Any]] | Exception]:
        """Several scenes ``(lr, ref, scale, nodata)`` at once — the requests Triton queued for this instance: each is
        checked and prepared on its own (a refused one gets its error, the others go on), then all run together
        (:meth:`Pipeline.execute_many`: windows of equal size from different scenes share forward passes). Returns,
        in order, ``(hr, metadata)`` or the exception that refused the scene (an error of the backend itself
        raises: it would be every scene's)."""
        from sschsr_deploy.errors import SSCHSRError
        from sschsr_deploy.io.hsi import as_cube

        t0 = time.perf_counter()
        results: list[Any] = [None] * len(items)
        ready: list[tuple[int, Any, dict[str, Any]]] = []
        bands = self.pipeline.backend.bands
        for i, (lr, ref, scale, nodata) in enumerate(items):
            try:
                scale = _scalar(scale, "SCALE", int)
                nodata = _scalar(nodata, "NODATA", float)
                lr, ref, s = self.check(lr, ref, scale)
                run_nodata: float | str | None = None
                if nodata is not None:
                    run_nodata = "nan" if math.isnan(nodata) else nodata
                scene = self.pipeline.prepare(as_cube(lr, "hwc", bands, "LR cube"), ref, s, nodata=run_nodata)
                mapping = self.pipeline.last_band_mapping
                ready.append((i, scene, {
                    "lr_shape_hwc": list(lr.shape), "scale": s, "nodata": run_nodata,
                    "band_mapping": None if mapping is None else mapping.describe()}))
            except SSCHSRError as exc:
                results[i] = exc
        t1 = time.perf_counter()
        outputs = [np.empty((scene.height, scene.width, bands), dtype=np.float32) for _, scene, _ in ready]

        def sink_for(hr: np.ndarray) -> Any:
            def sink(y0: int, block: np.ndarray) -> None:
                hr[y0:y0 + block.shape[1]] = block.transpose(1, 2, 0)
            return sink

        outcomes = self.pipeline.execute_many([scene for _, scene, _ in ready], [sink_for(hr) for hr in outputs])
        t2 = time.perf_counter()
        together = {"scenes": len(ready), "requests_refused": len(items) - len(ready),
                    "windows": sum(o.windows for o in outcomes), "forward_passes": self.pipeline.last_batches}
        for (i, _, meta), hr, outcome in zip(ready, outputs, outcomes, strict=True):
            if outcome.error is not None:
                results[i] = outcome.error
                continue
            self.requests += 1
            meta = {**meta, "hr_shape_hwc": list(hr.shape), **self.pipeline.describe(outcome.plan),
                    "run_together": together,
                    "timings": {"preprocess_s": round(t1 - t0, 4), "inference_s": round(t2 - t1, 4),
                                "windows": outcome.windows, "request_s": round(time.perf_counter() - t0, 4)}}
            results[i] = (hr, meta)
        return results

    @staticmethod
    def encode_metadata(meta: dict[str, Any]) -> np.ndarray:
        """``meta`` as UTF-8 JSON bytes in a uint8 array (the ``METADATA`` output)."""
        return np.frombuffer(json.dumps(meta, default=str).encode("utf-8"), dtype=np.uint8).copy()

    # ------------------------------------------------------------------ the batched interface (batch_requests > 0)
    @staticmethod
    def split_request(lr: Any, ref: Any, scale: Any = None, nodata: Any = None) -> list[tuple[Any, Any, Any, Any]]:
        """A batched request's scenes: ``LR_HSI`` b x h x w x C, ``REF_RGB`` b x H x W x 3, ``SCALE`` / ``NODATA``
        b x 1 → b items for :meth:`run_many` (each scene's arrays without the batch dimension)."""
        lr, ref = np.asarray(lr), np.asarray(ref)
        if lr.ndim != 4:
            raise InputValidationError(
                f"LR_HSI must be b x h x w x C (rank 4: the server batches requests); got shape {list(lr.shape)}")
        if ref.ndim != 4:
            raise InputValidationError(
                f"REF_RGB must be b x H x W x 3 (rank 4: the server batches requests); got shape {list(ref.shape)}")
        b = lr.shape[0]
        for name, value in (("REF_RGB", ref), ("SCALE", scale), ("NODATA", nodata)):
            arr = None if value is None else np.asarray(value)
            if arr is not None and arr.shape[:1] != (b,):
                raise InputValidationError(f"{name} has shape {list(arr.shape)} but LR_HSI holds {b} scene(s): every "
                                           "input needs the same batch size")
        return [(lr[k], ref[k], None if scale is None else np.asarray(scale)[k],
                 None if nodata is None else np.asarray(nodata)[k]) for k in range(b)]

    @staticmethod
    def join_results(results: Sequence[tuple[np.ndarray, dict[str, Any]] | Exception]
                     ) -> tuple[np.ndarray, np.ndarray] | Exception:
        """One batched request's answer from its scenes' results: ``HR_HSI`` b x H x W x C and ``METADATA`` b x n
        (each scene's JSON padded with spaces to the longest), or the first refused scene's error (the request
        fails as a whole; its message names the scene when the request had several)."""
        for k, result in enumerate(results):
            if isinstance(result, Exception):
                if len(results) == 1:
                    return result
                message = f"scene {k} of the request's {len(results)}: {one_line(result)}"
                try:
                    return type(result)(message)
                except TypeError:  # an exception type with another constructor
                    return InputValidationError(message)
        hrs = [hr for hr, _ in results]  # type: ignore[misc]
        metas = [SceneHandler.encode_metadata(meta) for _, meta in results]  # type: ignore[misc]
        width = max(len(m) for m in metas)
        meta_rows = np.full((len(metas), width), ord(" "), dtype=np.uint8)
        for k, m in enumerate(metas):
            meta_rows[k, :len(m)] = m
        return np.stack(hrs), meta_rows
