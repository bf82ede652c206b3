"""A ``torch.compile``d model compiles once per input shape (minutes on a CPU), so a compiled run keeps to one shape:
windows of the tile's size (smaller images padded up to it), batches of the warm-up's size (smaller ones padded
with copies of their last window, larger ones split), compiled before the first scene (``Pipeline.warmup``;
``infer --compile``, ``serve --compile`` and the Ray actors call it). ``torch.compile`` is stood in for by a recorder
of the shapes the compiled function is called with: compiling for real takes minutes on these CPUs."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from sschsr_deploy.engine.onnx import example_inputs
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime import Pipeline
from sschsr_deploy.runtime.torch_backend import TorchBackend
from sschsr_deploy.weights import load_model


@pytest.fixture
def compiled_shapes(monkeypatch):
    """Replace torch.compile; returns the list of input shapes (the HSI input's) the 'compiled' model was run on."""
    seen: list[tuple[int, ...]] = []

    def fake_compile(module, **kwargs):
        assert kwargs == {"dynamic": False}

        def call(*inputs):
            seen.append(tuple(inputs[0].shape))
            # a real compiled model guards on the tensors' kind too: the warm-up must pass what the pipeline passes
            assert not any(t.is_inference() for t in inputs), "an inference tensor would recompile"
            return module(*inputs)
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    return seen


@pytest.fixture(scope="module")
def tiny():
    model, info = load_model("tiny-x4")
    return model.eval(), info


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def test_backend_runs_every_call_at_its_first_batch(tiny, compiled_shapes):
    model, _ = tiny
    compiled = TorchBackend(model, compile=True)
    inputs = example_inputs(31, 5, (128, 128), seed=1)
    with torch.inference_mode():
        ref = TorchBackend(model).run(*inputs)
    first = compiled.run(*(t[:2] for t in inputs))  # the warm-up's batch: 2
    one = compiled.run(*(t[2:3] for t in inputs))  # padded to 2, one output kept
    five = compiled.run(*inputs)  # split 2 + 2 + 1 (padded)
    assert compiled_shapes == [(2, 31, 128, 128)] * 5
    assert compiled.static_batch == 2 and compiled.describe()["static_batch"] == 2
    assert first.shape[0] == 2 and one.shape[0] == 1 and five.shape[0] == 5
    assert _rel(first, ref[:2]) < 1e-5 and _rel(one, ref[2:3]) < 1e-5 and _rel(five, ref) < 1e-5
    assert "static_batch" not in TorchBackend(model).describe()  # eager: any batch


def test_batch_statistics_model_runs_one_window_per_call(compiled_shapes):
    """Copies in the batch would change batch-statistics batch norm: such a model runs one window per call."""
    model, _ = load_model("tiny-x4", batchnorm_mode="batch")
    compiled = TorchBackend(model, compile=True)
    assert not compiled.batch_independent
    out = compiled.run(*example_inputs(31, 3, (128, 128), seed=2))
    assert out.shape[0] == 3 and compiled.static_batch == 1
    assert compiled_shapes == [(1, 31, 128, 128)] * 3


def test_pipeline_keeps_one_window_size_and_warms_up(tiny, compiled_shapes):
    """A fixed tile: the warm-up compiles a full batch of tile-sized windows; a scene smaller than the tile is padded
    up to it, a larger one tiled by it; outputs as the eager pipeline's with the same windows."""
    from sschsr_deploy.data import make_scene

    model, info = tiny
    pipe = Pipeline(model, compile=True, tile=144, batch=2, quiet=True, model_info=info)
    assert pipe.limits.bounds == ((144, 144), (144, 144))
    assert pipe.warmup() > 0 and compiled_shapes == [(2, 31, 144, 144)]
    small = make_scene(seed=3, size=(128, 128), bands=31, scale=4)
    out = pipe.run(small.lr_hsi, small.ref_rgb, 4)
    assert out.shape == (128, 128, 31) and np.isfinite(out).all()
    assert pipe.last_plan.describe()["padded"] == [144, 144]  # padded up to the tile, cropped back
    large = make_scene(seed=4, size=(208, 176), bands=31, scale=4)
    got = pipe.run(large.lr_hsi, large.ref_rgb, 4)
    assert len(pipe.last_plan) > 1 and set(compiled_shapes) == {(2, 31, 144, 144)}
    eager = Pipeline(model, tile=144, batch=2, quiet=True, model_info=info)
    assert _rel(got, eager.run(large.lr_hsi, large.ref_rgb, 4)) < 1e-5
    assert pipe.describe()["backend"]["static_batch"] == 2


def test_whole_image_compiled_pipeline_has_no_single_window(tiny, compiled_shapes):
    model, info = tiny
    pipe = Pipeline(model, compile=True, tile=None, quiet=True, model_info=info)
    assert pipe.limits.bounds is None and pipe.warmup() == 0.0 and compiled_shapes == []


def test_infer_compile_warms_up_before_the_scene(tmp_path, compiled_shapes, capsys):
    from sschsr_deploy.cli import main
    from sschsr_deploy.data import make_scene
    from sschsr_deploy.io import write_hsi, write_rgb

    scene = make_scene(seed=5, size=(128, 128), bands=31, scale=4)
    write_hsi(tmp_path / "lr.npy", scene.lr_hsi)
    write_rgb(tmp_path / "ref.png", scene.ref_rgb)
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "sr.npy"), "--weights", "tiny-x4", "--compile", "--tile", "144",
               "--batch", "2"])
    assert rc == 0 and (tmp_path / "sr.npy").exists()
    assert compiled_shapes[0] == (2, 31, 144, 144) and set(compiled_shapes) == {(2, 31, 144, 144)}
    err = capsys.readouterr().err
    assert "compiling the model for 144 px windows" in err and "compiled in" in err


def test_serve_compile_settings():
    """``serve --compile``: the instances compile while loading, the startup timeout grows unless given; an exported
    model is refused (its own runtime optimises its graph)."""
    from sschsr_deploy.serving import cli
    from sschsr_deploy.serving.repository import ModelSettings, model_config

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--compile", "--precision", "bf16"])
    settings = cli.settings_from_args(args)
    assert settings.compile is True and cli.startup_timeout(args) == 1800.0
    assert ModelSettings.from_parameters(settings.to_parameters()).compile is True
    assert '"compile"' in model_config(settings)
    assert cli.startup_timeout(parser.parse_args([])) == 300.0
    assert cli.startup_timeout(parser.parse_args(["--compile", "--startup-timeout", "60"])) == 60.0
    with pytest.raises(InputValidationError, match="torch backend"):
        cli.settings_from_args(parser.parse_args(["--compile", "--engine", "model.onnx"]))
    with pytest.raises(InputValidationError, match="true or false"):
        ModelSettings(compile="yes").check()


def test_served_instance_compiles_while_loading(compiled_shapes, monkeypatch):
    """The Triton model's ``initialize`` (Triton's Python-backend module stood in for) warms a compiled pipeline up
    before it serves."""
    import json
    import sys
    import types

    from sschsr_deploy.serving.model import TritonPythonModel
    from sschsr_deploy.serving.repository import ModelSettings

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    settings = ModelSettings(compile=True, tile=144, batch=2).check()
    params = {k: {"string_value": v} for k, v in settings.to_parameters().items()}
    instance = TritonPythonModel()
    instance.initialize({"model_config": json.dumps({"parameters": params}), "model_instance_kind": "CPU"})
    assert instance.handler.pipeline.backend.compiled
    assert compiled_shapes == [(2, 31, 144, 144)]


def test_ray_actor_compiles_and_reports_the_window_size(compiled_shapes):
    """An actor (its body, in process) warms a compiled pipeline up while it starts and reports the one window size,
    so the driver plans windows of it."""
    from sschsr_deploy.distributed import ModelSpec
    from sschsr_deploy.distributed.workers import SceneWorker

    worker = SceneWorker(ModelSpec("tiny-x4", pipeline={"compile": True, "tile": 144, "batch": 2}))
    info = worker.info()
    assert worker.warmup_s > 0 and compiled_shapes == [(2, 31, 144, 144)]
    assert info["tile_bounds"] == ((144, 144), (144, 144)) and info["preferred_tile"] == (144, 144)
