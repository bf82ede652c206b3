"""Engine sidecar: the JSON file beside a TensorRT engine that says what it was built from and for which system.

A serialized TensorRT engine runs only with the TensorRT version that built it, on a GPU of the same compute capability
(engines are not portable across either), and with the plugin code it was built against. The sidecar
``<engine>.json`` records:

- everything in the ONNX model's ``metadata_props`` (preset, bands, scale, tile bounds, opset, package version, weights
  sha256, precision, ops mode — see :mod:`sschsr_deploy.engine.onnx`), under ``"onnx"``;
- the ONNX file's sha256;
- ``tensorrt_version``, ``gpu_name``, ``compute_capability`` of the build machine;
- ``plugins``: name → sha256 of the plugin PTX (or library) embedded in / required by the engine;
- the engine file's own sha256 (checked on load: a truncated or swapped engine is refused).

:func:`check_compatible` compares a sidecar with the running system (:class:`SystemInfo`) and raises
:class:`EngineCompatibilityError` naming every mismatch. Files are written atomically (temp file in the same
directory, fsync, ``os.replace``), so a reader never sees half a sidecar or half an engine.

Nothing here imports TensorRT: the checks are plain data and are tested without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SSCHSRError
from ..io.atomic import atomic_write_bytes
from ..io.atomic import file_sha256 as sha256_file

__all__ = [
    "SIDECAR_FORMAT",
    "EngineCompatibilityError",
    "SystemInfo",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_compatible",
    "make_sidecar",
    "read_sidecar",
    "sha256_bytes",
    "sha256_file",
    "sidecar_path",
    "write_sidecar",
]

SIDECAR_FORMAT = 1  # bump when the layout changes; readers refuse newer formats


class EngineCompatibilityError(SSCHSRError, RuntimeError):
    """An engine (or its sidecar) does not match the system or the files it claims to come from."""


@dataclass(frozen=True)
class SystemInfo:
    """What an engine is bound to: TensorRT version, GPU and its compute capability, plugin hashes available here."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    plugins: Mapping[str, str] = field(default_factory=dict)  # plugin name -> sha256 of the code that would run

    @classmethod
    def current(cls, plugins: Mapping[str, str] | None = None, device: int | None = None) -> SystemInfo:
        """The running system (needs TensorRT and a CUDA device; raises ``EngineCompatibilityError`` otherwise).

        ``device``: the GPU the engine is for; default the current CUDA device (what TensorRT builds and
        deserializes on), not device 0."""
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineCompatibilityError("TensorRT is not installed: cannot describe this system") from exc
        import torch

        if not torch.cuda.is_available():
            raise EngineCompatibilityError("no CUDA device: a TensorRT engine cannot run here")
        if device is None:
            device = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}", dict(plugins or {}))


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Sorted-key JSON, written atomically (sidecars diff cleanly between builds)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def make_sidecar(
    *,
    onnx_metadata: Mapping[str, str],
    onnx_sha256: str,
    engine_sha256: str,
    system: SystemInfo,
    build: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar dict for an engine built on ``system`` (``build``: profiles, workspace, timing-cache use, …)."""
    return {
        "format": SIDECAR_FORMAT,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "onnx": dict(onnx_metadata),
        "onnx_sha256": onnx_sha256,
        "engine_sha256": engine_sha256,
        "tensorrt_version": system.tensorrt_version,
        "gpu_name": system.gpu_name,
        "compute_capability": system.compute_capability,
        "plugins": dict(system.plugins),
        "build": dict(build or {}),
    }


def write_sidecar(engine_path: str | os.PathLike, sidecar: Mapping[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically."""
    return atomic_write_json(sidecar_path(engine_path), dict(sidecar))


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read ``<engine>.json``; a missing or unreadable sidecar is an ``EngineCompatibilityError``."""
    p = sidecar_path(engine_path)
    if not p.exists():
        raise EngineCompatibilityError(
            f"{p} is missing: an engine without its sidecar cannot be checked; rebuild it with "
            "export/build_engine.py (which writes both)"
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError, MemoryError) as exc:  # ValueError includes UnicodeDecodeError
        raise EngineCompatibilityError(
            f"{p} is not a readable JSON sidecar: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    if not isinstance(data, dict) or "format" not in data:
        raise EngineCompatibilityError(f"{p} is not an engine sidecar (no 'format' key)")
    problems = _schema_problems(data)
    if problems:
        raise EngineCompatibilityError(
            f"{p} is a damaged engine sidecar ({'; '.join(problems[:5])}); rebuild the engine with "
            "export/build_engine.py"
        )
    return data


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_range(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   and v >= 1 for v in value)
            and value[0] <= value[1] <= value[2])


def _schema_problems(data: Mapping[str, Any]) -> list[str]:
    """What in a sidecar has the wrong type: everything read from it later (compatibility checks, the backend's
    input limits) then sees the types it expects, so a damaged file is refused here with one clear message."""
    problems = []
    if not isinstance(data.get("format"), int) or isinstance(data.get("format"), bool):
        problems.append(f"format {data.get('format')!r} is not an integer")
    for key in ("onnx_sha256", "engine_sha256", "tensorrt_version", "gpu_name", "compute_capability"):
        if key in data and not isinstance(data[key], str | None):
            problems.append(f"{key} is a {type(data[key]).__name__}, not a string")
    for key in ("onnx", "plugins"):
        if data.get(key) is not None and not _is_str_map(data[key]):
            problems.append(f"{key!r} is not a map of strings")
    build = data.get("build")
    if build is not None and not isinstance(build, dict):
        problems.append("'build' is not a map")
    elif build:
        profiles = build.get("batch_profiles")
        if profiles is not None and not (isinstance(profiles, list) and all(_is_range(r) for r in profiles)):
            problems.append("build.batch_profiles is not a list of [min, opt, max] batch sizes")
        dims = build.get("dims")
        if dims is not None and not (isinstance(dims, dict) and all(_is_range(r) for r in dims.values())):
            problems.append("build.dims is not a map of [min, opt, max] sizes")
    return problems


def _short(h: str | None) -> str:
    return "none" if not h else h[:12]


def check_compatible(
    sidecar: Mapping[str, Any],
    system: SystemInfo,
    *,
    engine_sha256: str | None = None,
    expect: Mapping[str, str] | None = None,
) -> None:
    """Refuse (``EngineCompatibilityError``) an engine whose sidecar does not match ``system``.

    Checked: sidecar format; TensorRT version (exact: engines are not portable across versions); compute capability
    (exact); GPU name (exact: same capability but a different SKU can pick other tactics and, with plugins, other
    limits); every plugin recorded in the sidecar present on ``system`` with the same hash; the engine file's hash when
    ``engine_sha256`` is given; and any ONNX metadata key in ``expect`` (e.g. ``{"precision": "fp16"}``). All
    mismatches are reported together.
    """
    problems: list[str] = []
    fmt = sidecar.get("format")
    if fmt != SIDECAR_FORMAT:
        problems.append(f"sidecar format {fmt!r} (this package reads format {SIDECAR_FORMAT})")
    if sidecar.get("tensorrt_version") != system.tensorrt_version:
        problems.append(
            f"built with TensorRT {sidecar.get('tensorrt_version')}, this system has TensorRT {system.tensorrt_version}"
        )
    if sidecar.get("compute_capability") != system.compute_capability:
        problems.append(
            f"built for compute capability {sidecar.get('compute_capability')}, this GPU is "
            f"{system.compute_capability}"
        )
    if sidecar.get("gpu_name") != system.gpu_name:
        problems.append(f"built on GPU {sidecar.get('gpu_name')!r}, this GPU is {system.gpu_name!r}")
    for name, digest in (sidecar.get("plugins") or {}).items():
        have = system.plugins.get(name)
        if have is None:
            problems.append(f"plugin {name!r} (sha256 {_short(digest)}) is not available here")
        elif have != digest:
            problems.append(f"plugin {name!r} differs: engine has sha256 {_short(digest)}, this system {_short(have)}")
    if engine_sha256 is not None and sidecar.get("engine_sha256") != engine_sha256:
        problems.append(
            f"engine file sha256 {_short(engine_sha256)} does not match the sidecar's "
            f"{_short(sidecar.get('engine_sha256'))} (truncated, replaced or rebuilt without its sidecar)"
        )
    onnx_meta = sidecar.get("onnx") or {}
    for key, value in (expect or {}).items():
        if onnx_meta.get(key) != value:
            problems.append(f"engine {key} is {onnx_meta.get(key)!r}, expected {value!r}")
    if problems:
        raise EngineCompatibilityError(
            "TensorRT engine is not compatible with this system; rebuild it here with export/build_engine.py:\n  - "
            + "\n  - ".join(problems)
        )


def system_as_dict(system: SystemInfo) -> dict[str, Any]:
    d = asdict(system)
    d["plugins"] = dict(system.plugins)
    return d
