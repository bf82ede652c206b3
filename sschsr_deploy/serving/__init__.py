"""Serving: NVIDIA Triton Inference Server with the ``sschsr`` model backed by :class:`~sschsr_deploy.runtime.Pipeline`
(any backend, any model), and a thin numpy client over ``tritonclient``. See ``docs/serving.md``.

- :class:`Server` / :func:`serve` (:mod:`.server`): start the ``tritonserver`` binary shipped in ``nvidia-pytriton``
  with our model repository (:mod:`.repository`), wait for readiness, stop with SIGTERM then SIGKILL;
- :class:`Client` (:mod:`.client`): ``infer(lr, ref, scale=None, nodata=None) -> (hr, metadata)`` over HTTP or gRPC;
- ``sschsr-deploy serve`` (:mod:`.cli`).

Nothing here is imported by the rest of the package; the server side needs ``nvidia-pytriton`` and the client
``tritonclient`` only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INPUTS", "MODEL_NAME", "OUTPUTS", "Client", "ModelSettings", "Server", "ServingError",
           "ServingUnavailableError", "serve", "write_repository"]

_WHERE = {
    "INPUTS": "repository", "MODEL_NAME": "repository", "OUTPUTS": "repository", "ModelSettings": "repository",
    "write_repository": "repository", "Server": "server", "ServingUnavailableError": "server", "serve": "server",
    "Client": "client", "ServingError": "client",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
