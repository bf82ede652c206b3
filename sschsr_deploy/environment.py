"""``sschsr-deploy info``'s report: the versions of Python, torch and the libraries the backends and formats use,
CUDA and its GPUs, the native extension and Triton — what a bug report needs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from typing import Any

from sschsr_deploy._version import __version__

__all__ = ["LIBRARIES", "environment_info", "environment_lines", "library_info"]


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


#: modules ``info`` reports, by the name they are imported under (the distribution that provides one may be named
#: otherwise: ``onnxruntime`` comes from ``onnxruntime-gpu``, ``cv2`` from ``opencv-python-headless``)
LIBRARIES = ("numpy", "scipy", "cv2", "skimage", "h5py", "tifffile", "safetensors", "onnx", "onnxscript", "onnxruntime",
             "tensorrt")


def library_info(module: str, distributions: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """Version and providing distribution of an importable ``module`` (``None`` when it cannot be imported);
    ONNX Runtime also lists the execution providers its build offers. ``distributions``: a ready
    ``importlib.metadata.packages_distributions()`` (it scans every installed package)."""
    if importlib.util.find_spec(module) is None:
        return None
    table = distributions if distributions is not None else importlib.metadata.packages_distributions()
    dists = table.get(module) or []
    dist = dists[0] if dists else None
    info: dict[str, Any] = {"version": _version_of(dist) if dist else None, "distribution": dist}
    if module == "onnxruntime":
        try:
            import onnxruntime

            info["version"] = info["version"] or onnxruntime.__version__
            info["providers"] = list(onnxruntime.get_available_providers())
        except Exception as exc:  # a broken install: say so rather than fail `info`
            info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def environment_info() -> dict[str, Any]:
    """What ``sschsr-deploy info`` reports."""
    import torch

    from sschsr_deploy.ops._backend import native_status

    info: dict[str, Any] = {
        "sschsr_deploy": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    info["native_extension"] = native_status()
    info["triton"] = _version_of("triton") if importlib.util.find_spec("triton") is not None else None
    dists = importlib.metadata.packages_distributions()
    info["libraries"] = {name: library_info(name, dists) for name in LIBRARIES}
    return info


def _library_line(value: dict[str, Any] | None, module: str) -> str:
    if value is None:
        return "not installed"
    text = str(value.get("version") or "installed, version unknown")
    dist = value.get("distribution")
    extra = [f"distribution {dist}"] if dist and dist != module else []
    if "providers" in value:
        extra.append(f"providers {', '.join(value['providers'])}")
    if "error" in value:
        extra.append(f"unusable: {value['error']}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def environment_lines(info: dict[str, Any]) -> list[str]:
    """``info``'s text form, a line per value (nested values indented; ``None`` reads "not installed")."""
    lines = []
    for key, value in info.items():
        if key == "libraries":
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {_library_line(v, k)}" for k, v in value.items())
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v if v is not None else 'not installed'}" for k, v in value.items())
        elif isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend("  " + ", ".join(f"{k}={v}" for k, v in item.items()) for item in value)
        else:
            lines.append(f"{key}: {value if value is not None else 'not installed'}")
    return lines
