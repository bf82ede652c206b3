"""Ray, imported only when asked for: the package works without it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError, SSCHSRError

__all__ = ["INSTALL_HINT", "WorkerLostError", "connect", "ray_available", "require_ray"]

INSTALL_HINT = "pip install 'sschsr-deploy[ray]'"


class WorkerLostError(SSCHSRError, RuntimeError):
    """A scene or window whose worker died more often than the retries allow (or no worker is left)."""


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`InputValidationError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputValidationError(f"the Ray executor needs Ray, which is not installed: {INSTALL_HINT} "
                                   f"({exc})") from None
    return ray


def connect(address: str | None = None, runtime_env: dict[str, Any] | None = None, **init: Any) -> Any:
    """Connect to Ray once: an existing connection is kept; ``address`` (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``) joins a running cluster; ``None`` starts a local one. Workers must import this package: when
    ``runtime_env`` is not given, the folder this package is imported from is put on their ``PYTHONPATH`` (a
    checkout; harmless for an installed package)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if runtime_env is None:
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    init.setdefault("include_dashboard", False)
    init.setdefault("log_to_driver", True)
    try:
        ray.init(address=address, runtime_env=runtime_env, **init)
    except ConnectionError as exc:
        raise InputValidationError(f"cannot reach the Ray cluster at {address!r}: {exc} (start one with "
                                   "`ray start --head`, then pass its address)") from None
    return ray
