"""The ``model.py`` Triton's Python backend runs for the ``sschsr`` model (copied into the model repository by
:func:`sschsr_deploy.serving.repository.write_repository`; importable elsewhere only for reading).

Tensors cross the backend boundary through DLPack (``pb_utils.Tensor.from_dlpack`` / ``to_dlpack``): the numpy
constructor ``pb_utils.Tensor(name, ndarray)`` of the Python backend shipped with nvidia-pytriton 0.7.0 returns empty
tensors under numpy 2. The settings come from the config's ``parameters``
(:class:`~sschsr_deploy.serving.repository.ModelSettings`); the work is
:class:`~sschsr_deploy.serving.handler.SceneHandler`'s.
"""

from __future__ import annotations

import gc
import json
import sys
import traceback
from pathlib import Path
from typing import Any


def _settings(args: dict[str, Any]) -> Any:
    params = json.loads(args["model_config"]).get("parameters", {})
    raw = params.get("sys_path", {})
    for entry in reversed(json.loads(raw.get("string_value", "[]") if isinstance(raw, dict) else raw or "[]")):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from sschsr_deploy.serving.repository import ModelSettings

    return ModelSettings.from_parameters(params)


class TritonPythonModel:
    """One instance per Triton model instance (its own process): one loaded pipeline; one scene at a time, or (batched
    serving) every queued request's scenes together."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        settings = _settings(args)  # first: it puts the package's folder on sys.path
        from sschsr_deploy.allocator import tune_allocator

        tune_allocator()  # an instance is a process of ours: the CLI's allocator settings (allocator.py)

        from sschsr_deploy.serving.handler import SceneHandler

        self.pb = pb_utils
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        self.handler = SceneHandler.from_settings(settings, device)
        if settings.compile:  # compile for the one window size while loading, not in the first request
            self.handler.pipeline.warmup()
        self.batched = settings.batch_requests > 0
        self.name = args.get("model_instance_name", "sschsr")
        import sschsr_deploy

        self.package = str(Path(sschsr_deploy.__file__).parent)

    def _input(self, request: Any, name: str) -> Any:
        import numpy as np
        import torch.utils.dlpack

        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        return np.array(torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy(), copy=True)

    def _output(self, name: str, array: Any) -> Any:
        import torch
        import torch.utils.dlpack

        return self.pb.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(array)))

    def _inputs(self, request: Any) -> tuple[Any, Any, Any, Any]:
        return tuple(self._input(request, name) for name in ("LR_HSI", "REF_RGB", "SCALE", "NODATA"))  # type: ignore

    def execute(self, requests: list[Any]) -> list[Any]:
        from sschsr_deploy.serving.handler import SceneHandler

        if self.batched:
            return self._execute_batched(requests)
        responses = []
        for request in requests:
            try:
                hr, meta = self.handler(*self._inputs(request))
                meta["server"] = {"instance": self.name, "package": self.package}
                outputs = [self._output("HR_HSI", hr), self._output("METADATA", SceneHandler.encode_metadata(meta))]
                responses.append(self.pb.InferenceResponse(output_tensors=outputs))
            except Exception as exc:
                responses.append(self._failure(exc))
        gc.collect(0)
        return responses

    def _execute_batched(self, requests: list[Any]) -> list[Any]:
        """Every queued request's scenes run together (``SceneHandler.run_many``), then one response per request."""
        from sschsr_deploy.serving.handler import SceneHandler

        split: list[Any] = []
        for request in requests:
            try:
                split.append(SceneHandler.split_request(*self._inputs(request)))
            except Exception as exc:
                split.append(exc)
        items = [item for scenes in split if isinstance(scenes, list) for item in scenes]
        try:
            results = self.handler.run_many(items)
        except Exception as exc:  # the backend failed: every request of the call fails with it
            results = [exc] * len(items)
        responses, k = [], 0
        for scenes in split:
            if isinstance(scenes, Exception):
                responses.append(self._failure(scenes))
                continue
            mine, k = results[k:k + len(scenes)], k + len(scenes)
            for result in mine:
                if not isinstance(result, Exception):
                    result[1]["server"] = {"instance": self.name, "package": self.package}
            joined = SceneHandler.join_results(mine)
            if isinstance(joined, Exception):
                responses.append(self._failure(joined))
            else:
                outputs = [self._output("HR_HSI", joined[0]), self._output("METADATA", joined[1])]
                responses.append(self.pb.InferenceResponse(output_tensors=outputs))
        gc.collect(0)
        return responses

    def _failure(self, exc: Exception) -> Any:
        """The error response for ``exc``: ours (the client's to fix) as INVALID_ARG with its one line; anything
        else as an internal error, its traceback in the server log."""
        from sschsr_deploy.errors import SSCHSRError
        from sschsr_deploy.serving.handler import one_line

        if isinstance(exc, SSCHSRError):
            return self._error(one_line(exc), invalid=True)
        if isinstance(exc, MemoryError):
            return self._error(f"out of memory: {one_line(exc)}", invalid=False)
        traceback.print_exception(exc, file=sys.stderr)
        return self._error(f"internal error: {type(exc).__name__}: {one_line(exc)}", invalid=False)

    def _error(self, message: str, invalid: bool) -> Any:
        error_cls = self.pb.TritonError
        code = getattr(error_cls, "INVALID_ARG", None) if invalid else getattr(error_cls, "INTERNAL", None)
        try:
            error = error_cls(message, code) if code is not None else error_cls(message)
        except TypeError:  # an older backend: message only
            error = error_cls(message)
        return self.pb.InferenceResponse(output_tensors=[], error=error)

    def finalize(self) -> None:
        self.handler = None
        gc.collect()
