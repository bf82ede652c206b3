"""``precision`` end to end on the torch backend: names, the older ``half`` spelling, int8 refused with a hint,
bf16 / fp16 autocast and channels-last close to fp32, and the precision recorded in ``describe`` / the sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sschsr_deploy.data import make_scene
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime import Pipeline
from sschsr_deploy.runtime.backends import check_precision
from sschsr_deploy.runtime.torch_backend import TorchBackend, normalize_precision, resolve_precision
from sschsr_deploy.weights import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-x4")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=7, size=(128, 136), scale=4, split="test")  # odd-ish width: 34 LR px


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("given, half, want", [
    (None, False, "fp32"), ("fp32", False, "fp32"), ("bfloat16", False, "bf16"), ("BF16", False, "bf16"),
    ("float16", False, "fp16"), (None, True, "fp16"), (None, "bf16", "bf16"), ("fp16", True, "fp16"),
])
def test_precision_names(given, half, want):
    assert resolve_precision(given, half) == want


@pytest.mark.parametrize("given, half, match", [
    ("int8", False, "export --precision int8"), ("fp8", False, "one of fp32"), ("bf16", True, "contradicts"),
    (None, "fp64", "half must be"),
])
def test_bad_precision_is_refused_with_a_hint(given, half, match):
    with pytest.raises(InputValidationError, match=match):
        resolve_precision(given, half)


def test_reduced_precision_and_channels_last_stay_close_to_fp32(tiny, scene):
    model, info = tiny
    fp32 = Pipeline(model, tile=None, quiet=True, model_info=info).run(scene.lr_hsi, scene.ref_rgb, 4)
    model32, _ = load_model("tiny-x4")  # channels-last converts the module's parameters: a copy of its own
    cl = Pipeline(model32, tile=None, quiet=True, channels_last=True).run(scene.lr_hsi, scene.ref_rgb, 4)
    assert _rel(cl, fp32) < 1e-5  # a layout, not a precision
    for precision, tol in (("bf16", 3e-2), ("fp16", 1e-2)):
        pipe = Pipeline(model32, tile=None, quiet=True, precision=precision, channels_last=True)
        out = pipe.run(scene.lr_hsi, scene.ref_rgb, 4)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        dev = _rel(out, fp32)
        assert 1e-6 < dev < tol, (precision, dev)  # it did run reduced, and not far off
        d = pipe.describe()
        assert d["precision"] == precision and d["backend"]["channels_last"] is True


def test_channels_last_auto_and_bad_values(tiny):
    model, _ = tiny
    assert TorchBackend(model, precision="bf16", channels_last="auto").channels_last is True
    assert TorchBackend(model, channels_last="auto").channels_last is False
    with pytest.raises(InputValidationError, match="channels_last"):
        TorchBackend(model, channels_last="yes")
    model.to(memory_format=torch.contiguous_format)


def test_exported_precision_must_match(tiny):
    model, _ = tiny
    backend = TorchBackend(model, precision="bf16")
    check_precision(backend, "bfloat16")
    with pytest.raises(InputValidationError, match="runs bf16"):
        check_precision(backend, "fp32")
    assert normalize_precision("half") == "fp16"


def test_sidecar_records_the_precision(tiny, scene, tmp_path):
    model, info = tiny
    np.save(tmp_path / "lr.npy", scene.lr_hsi)
    import cv2

    cv2.imwrite(str(tmp_path / "ref.png"), scene.ref_rgb[..., ::-1])
    pipe = Pipeline(model, tile=None, quiet=True, model_info=info, precision="bf16")
    pipe.run_files(tmp_path / "lr.npy", tmp_path / "ref.png", 4, tmp_path / "hr.npy")
    side = json.loads((tmp_path / "hr.npy.json").read_text())
    assert side["precision"] == "bf16" and side["backend"]["autocast"] == "bfloat16"


def test_cli_precision_flags(tmp_path, capsys, scene):
    from sschsr_deploy.cli import main

    np.save(tmp_path / "lr.npy", scene.lr_hsi)
    import cv2

    cv2.imwrite(str(tmp_path / "ref.png"), scene.ref_rgb[..., ::-1])
    base = ["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--weights", "tiny-x4",
            "--tile", "whole", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a.npy"), "--precision", "bf16", "--channels-last"]) == 0
    side = json.loads((tmp_path / "a.npy.json").read_text())
    assert side["precision"] == "bf16" and side["backend"]["channels_last"] is True
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b.npy"), "--precision", "int8"]) == 2
    assert "export --precision int8" in capsys.readouterr().err
    assert not (tmp_path / "b.npy").exists()


def test_served_pipeline_takes_the_precision():
    """``serve --precision``: the settings travel through the model config's parameters to the handler's pipeline."""
    from sschsr_deploy.serving.handler import SceneHandler
    from sschsr_deploy.serving.repository import ModelSettings

    settings = ModelSettings(precision="bfloat16").check()
    assert settings.precision == "bf16"
    again = ModelSettings.from_parameters({k: {"string_value": v} for k, v in settings.to_parameters().items()})
    handler = SceneHandler.from_settings(again)
    assert handler.pipeline.backend.precision == "bf16" and handler.pipeline.describe()["precision"] == "bf16"
    with pytest.raises(InputValidationError, match="precision"):
        ModelSettings(precision="int4").check()
