"""Scale-out over Ray: many scenes over a cluster's GPUs, or one huge scene's windows (optional: ``.[ray]``).

- :func:`run_scenes_ray` — the folder / manifest batch mode on Ray actors (one per GPU or CPU slot, the model loaded
  once each), same resume / keep-going / summary contract as :func:`sschsr_deploy.batch.run_scenes`;
- :class:`RayPipeline` — a :class:`~sschsr_deploy.runtime.Pipeline` whose windows run on the actors while the driver
  prepares, blends and writes (bit for bit the single-process result);
- :class:`ModelSpec` — the picklable description each actor loads its model from; :class:`WorkerPool` — the actors.

Importing this package never imports Ray; using an executor without Ray raises
:class:`~sschsr_deploy.errors.InputValidationError` with the install command. See docs/scale-out.md.
"""

from __future__ import annotations

from typing import Any

from sschsr_deploy.distributed._ray import INSTALL_HINT, WorkerLostError, ray_available, require_ray
from sschsr_deploy.distributed.spec import ModelSpec

__all__ = ["INSTALL_HINT", "ModelSpec", "RayPipeline", "RayTileExecutor", "WorkerLostError", "WorkerPool",
           "ray_available", "require_ray", "run_scenes_ray"]

_LAZY = {
    "run_scenes_ray": "sschsr_deploy.distributed.scenes",
    "RayPipeline": "sschsr_deploy.distributed.windows",
    "RayTileExecutor": "sschsr_deploy.distributed.windows",
    "WorkerPool": "sschsr_deploy.distributed.workers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sschsr_deploy.distributed' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
