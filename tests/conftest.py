"""Shared fixtures: the golden cases (copied into tests/data/golden) and models carrying the golden weights."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The flag must be set before triton is first
# imported (torchvision and torch._dynamo import it), so it is set here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
CASES = {"A": "case_A_128x128_sf4_seed0.npz", "B": "case_B_128x192_sf8_seed1.npz"}
BASE_SEEDS = {"A": 0, "B": 1}


@cache
def golden_manifest() -> dict:
    return json.loads((GOLDEN_DIR / "manifest.json").read_text())


@cache
def golden_case(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / CASES[name]) as z:
        return {k: z[k] for k in z.files}


@cache
def golden_array_info(case: str) -> dict[str, dict]:
    for c in golden_manifest()["cases"]:
        if c["name"] == case:
            return {a["name"]: a for a in c["arrays"]}
    raise KeyError(case)


@cache
def golden_torch_state_dict(base_seed: int) -> dict[str, torch.Tensor]:
    from sschsr_deploy.golden import golden_state_dict

    return {k: torch.from_numpy(v) for k, v in golden_state_dict(base_seed).items()}


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The fixtures were recorded with 2 threads; keep runs comparable and quiet.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


def _tf32_flags() -> list[tuple[object, str]]:
    """(object, attribute) of torch's switches that let fp32 convolutions / matmuls run in TF32 on a GPU.

    The legacy ``allow_tf32`` flags on purpose: torch >= 2.9 also has per-backend ``fp32_precision``, but setting
    cuDNN's conv and RNN entries through it leaves the legacy getter (which torch.export reads) raising."""
    return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]


def tf32_enabled() -> bool:
    return any(getattr(obj, name) for obj, name in _tf32_flags())


@pytest.fixture(autouse=True)
def _strict_fp32():
    """fp32 means fp32 in every test: torch runs cuDNN convolutions in TF32 by default (10-bit mantissa inputs on
    Ampere and later), far outside the 1e-4 / 1e-3 relative tolerances of the GPU parity tests."""
    flags = _tf32_flags()
    saved = [getattr(obj, name) for obj, name in flags]
    for obj, name in flags:
        setattr(obj, name, False)
    yield
    for (obj, name), value in zip(flags, saved, strict=True):
        setattr(obj, name, value)


@pytest.fixture(scope="module")
def cuda_extension():
    """The native extension, built with CUDA kernels, on a machine with a CUDA device (else the test skips)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ext = pytest.importorskip("sschsr_deploy._C", reason="native extension sschsr_deploy._C is not built")
    if not ext.cuda_built():
        pytest.skip("sschsr_deploy._C was built without CUDA")
    return ext


def pytest_collection_modifyitems(config, items):
    """Tests that need CUDA or TensorRT skip cleanly where those are absent."""
    import importlib.util

    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT"))
