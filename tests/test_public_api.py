"""The package's front door: ``import sschsr_deploy`` registers the ops; ``Pipeline.from_pretrained`` builds a
pipeline from a shipped name, a weights file or an exported model in one line; ``half`` runs the torch backend under
autocast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sschsr_deploy
from sschsr_deploy.errors import InputValidationError


def test_importing_the_package_registers_the_ops():
    code = ("import torch, sschsr_deploy; "
            "print(all(hasattr(torch.ops.sschsr, op) for op in "
            "('modulated_deform_conv2d', 'spectral_attention', 'patch_match', 'gram_and_norms')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    assert sschsr_deploy.Pipeline.__name__ == "Pipeline" and callable(sschsr_deploy.load_model)
    with pytest.raises(AttributeError):
        sschsr_deploy.no_such_thing  # noqa: B018


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    return rng.random((32, 32, 31), dtype=np.float32), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fp32_output(scene):
    return sschsr_deploy.Pipeline.from_pretrained("tiny-x4", quiet=True).run(*scene)


def test_from_pretrained_shipped_name_and_file(scene, fp32_output):
    from sschsr_deploy.pretrained import shipped_weights

    pipe = sschsr_deploy.Pipeline.from_pretrained(shipped_weights("tiny", 4), tile=128, quiet=True)
    assert pipe.backend.scale == 4 and pipe.model_info()["weights"] == "tiny_x4.safetensors"
    out = pipe.run(*scene)
    assert out.shape == (128, 128, 31) and np.isfinite(out).all()
    with pytest.raises(InputValidationError, match="scale 8 was requested"):
        sschsr_deploy.Pipeline.from_pretrained("tiny-x4", scale=8)
    with pytest.raises(InputValidationError, match="runs an exported model"):
        sschsr_deploy.Pipeline.from_pretrained("tiny-x4", backend="onnxruntime")
    with pytest.raises(InputValidationError, match="cannot be set for an exported model"):
        sschsr_deploy.Pipeline.from_pretrained("model.onnx", scale=4)


@pytest.mark.parametrize("half, tolerance", [(True, 0.05), ("bf16", 0.1)])
def test_half_runs_under_autocast_with_float32_output(scene, fp32_output, half, tolerance):
    pipe = sschsr_deploy.Pipeline.from_pretrained("tiny-x4", half=half, quiet=True)
    out = pipe.run(*scene)
    rel = np.linalg.norm(out - fp32_output) / np.linalg.norm(fp32_output)
    assert out.dtype == np.float32 and 0 < rel < tolerance, rel
    assert pipe.describe()["backend"]["autocast"] in ("float16", "bfloat16")


def test_half_is_refused_where_it_does_not_apply():
    with pytest.raises(InputValidationError, match="half must be"):
        sschsr_deploy.Pipeline.from_pretrained("tiny-x4", half="fp8")
    with pytest.raises(InputValidationError, match="half=True applies to the torch backend only"):
        sschsr_deploy.Pipeline("model.onnx", backend="onnxruntime", half=True)
