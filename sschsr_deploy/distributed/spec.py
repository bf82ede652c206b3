"""What a worker needs to load the model itself: a small, picklable description, never a pickled model.

A :class:`ModelSpec` names the model the way the CLI and :meth:`Pipeline.from_pretrained` do — a shipped name
(``"tiny-x4"``), a weights file, a preset with ``weights`` / ``random_weights``, or an exported model (``.onnx`` →
onnxruntime, ``.engine`` / ``.plan`` → tensorrt) — plus the :class:`~sschsr_deploy.runtime.Pipeline` options. Each Ray
actor calls :meth:`ModelSpec.build` once and keeps the pipeline for every scene or window it is given.

Paths are made absolute where they exist on the driver; on a cluster they must name the same file on every node
(a shared file system, or the same install path: shipped names resolve inside the package on each node).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError

__all__ = ["LOAD_OPTIONS", "PIPELINE_OPTIONS", "ModelSpec"]

#: Keyword arguments of :func:`sschsr_deploy.weights.load_model` a spec may carry (torch backend only).
LOAD_OPTIONS = ("scale", "bands", "rgb_bands", "batchnorm_mode", "random_weights", "seed")
#: Keyword arguments of :class:`~sschsr_deploy.runtime.Pipeline` a spec may carry (``quiet`` is forced on workers).
PIPELINE_OPTIONS = ("device", "tile", "overlap", "margin", "batch", "compile", "half", "precision", "channels_last",
                    "rgb_bands", "normalize",
                    "output_scale", "memory_budget", "depth", "backend_options", "model_wavelengths")


def _abs_if_exists(value: str | os.PathLike | None) -> str | None:
    if value is None:
        return None
    text = os.fspath(value)
    return os.path.abspath(text) if os.path.exists(text) else text


@dataclass(frozen=True)
class ModelSpec:
    """A model and its pipeline options, rebuilt by each worker (:meth:`build`).

    Args:
        source: shipped name, weights file (``.safetensors`` / official ``.pth``), preset name (with ``weights`` or
            ``load={"random_weights": True}``), or an exported model (``.onnx`` / ``.engine`` / ``.plan``).
        weights: a weights file for a preset ``source`` (as ``load_model(preset, weights)``).
        backend: ``None`` (from the file: torch for weights, onnxruntime / tensorrt for exports) or a backend name.
        load: :data:`LOAD_OPTIONS` for :func:`~sschsr_deploy.weights.load_model`.
        pipeline: :data:`PIPELINE_OPTIONS` for the :class:`~sschsr_deploy.runtime.Pipeline` (``device``, ``tile``...).
        threads: torch intra-op threads in each worker (CPU results depend on it bit for bit; Ray workers default to
            their CPU reservation, usually 1). ``None``: leave torch's setting.
    """

    source: str
    weights: str | None = None
    backend: str | None = None
    load: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str | os.PathLike) or not os.fspath(self.source):
            raise InputValidationError(f"ModelSpec: source must be a name or a path; got {self.source!r}")
        object.__setattr__(self, "source", _abs_if_exists(self.source))
        object.__setattr__(self, "weights", _abs_if_exists(self.weights))
        for name, allowed in (("load", LOAD_OPTIONS), ("pipeline", PIPELINE_OPTIONS)):
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise InputValidationError(f"ModelSpec.{name}: unknown option(s) {', '.join(unknown)}; known: "
                                           f"{', '.join(allowed)}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputValidationError(f"ModelSpec: threads must be a positive integer; got {self.threads!r}")

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, threads: int | None = None, backend: str | None = None,
                        **options: Any) -> ModelSpec:
        """Like :meth:`Pipeline.from_pretrained`: ``options`` are split into load and pipeline options."""
        load = {k: options.pop(k) for k in list(options) if k in LOAD_OPTIONS and k != "rgb_bands"}
        if "rgb_bands" in options and not cls._is_export(source):
            load["rgb_bands"] = options["rgb_bands"]
        return cls(os.fspath(source), backend=backend, load=load, pipeline=options, threads=threads)

    @staticmethod
    def _is_export(source: str | os.PathLike) -> bool:
        from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES

        return Path(os.fspath(source)).suffix.lower() in ENGINE_SUFFIXES

    @property
    def device(self) -> str:
        return str(self.pipeline.get("device", "cpu"))

    @property
    def uses_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def with_options(self, **pipeline: Any) -> ModelSpec:
        """A copy with some pipeline options changed."""
        return replace(self, pipeline={**self.pipeline, **pipeline})

    def build(self) -> Any:
        """The :class:`~sschsr_deploy.runtime.Pipeline` this spec describes (quiet), loaded in this process."""
        from sschsr_deploy.runtime import Pipeline
        from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES

        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        options = {**self.pipeline, "quiet": True}
        suffix = Path(self.source).suffix.lower()
        if suffix in ENGINE_SUFFIXES:
            if self.load or self.weights:
                raise InputValidationError(f"{Path(self.source).name} is an exported model: it records its own "
                                           f"scale / bands; give no weights or load options")
            return Pipeline(self.source, backend=self.backend or ENGINE_SUFFIXES[suffix], **options)
        if self.backend not in (None, "torch"):
            raise InputValidationError(f"backend {self.backend!r} runs an exported model (.onnx / .engine), not "
                                       f"{Path(self.source).name}")
        from sschsr_deploy.weights import load_model

        if self.weights is not None:
            model, info = load_model(self.source, self.weights, **self.load)
        else:
            model, info = load_model(self.source, **self.load)
        return Pipeline(model, backend="torch", model_info=info, **options)
