"""What ``engine/tensorrt.py`` asks of TensorRT, checked on the CPU with a recording stand-in of the builder API.

Not a TensorRT emulation: the fake ``tensorrt`` module records calls and answers the few questions the code asks, so
these tests see *which* calls are made (the plugin library initialised before parsing and before deserializing, TF32
cleared, out-of-profile shapes refused) — the defects that would otherwise first show on a machine with TensorRT.
"""

import json
import sys
import types
from unittest import mock

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sschsr_deploy.engine import tensorrt as T  # noqa: E402
from sschsr_deploy.engine.sidecar import SystemInfo  # noqa: E402
from sschsr_deploy.errors import InputValidationError  # noqa: E402


def _fake_trt() -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = "10.9.0-fake"
    trt.init_libnvinfer_plugins.return_value = True
    builder = trt.Builder.return_value
    builder.build_serialized_network.return_value = b"engine-bytes"
    trt.OnnxParser.return_value.parse.return_value = True
    builder.create_builder_config.return_value.get_timing_cache.return_value.serialize.return_value = b"cache"
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    trt = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(SystemInfo, "current", classmethod(
        lambda cls, plugins=None, device=None: cls("10.9.0-fake", "Fake GPU", "9.0", dict(plugins or {}))))
    return trt


def _onnx_file(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    for k, v in {"batch_min": "1", "batch_max": "2", "precision": "fp32"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _first_call(trt, name: str) -> int:
    return next(i for i, c in enumerate(trt.mock_calls) if c[0] == name)


def test_build_initialises_the_plugin_library_before_parsing_and_clears_tf32(fake_trt, tmp_path):
    result = T.build_engine(_onnx_file(tmp_path), tmp_path / "m.engine")
    assert fake_trt.init_libnvinfer_plugins.call_count == 1
    assert _first_call(fake_trt, "init_libnvinfer_plugins") < _first_call(fake_trt, "OnnxParser")
    config = fake_trt.Builder.return_value.create_builder_config.return_value
    config.clear_flag.assert_called_once_with(fake_trt.BuilderFlag.TF32)
    assert json.loads(result.sidecar_path.read_text())["build"]["tf32"] is False


def test_build_keeps_tf32_when_asked(fake_trt, tmp_path):
    T.build_engine(_onnx_file(tmp_path), tmp_path / "m.engine", tf32=True)
    fake_trt.Builder.return_value.create_builder_config.return_value.clear_flag.assert_not_called()


def test_a_failed_plugin_library_is_an_error(fake_trt, tmp_path):
    fake_trt.init_libnvinfer_plugins.return_value = False
    with pytest.raises(T.EngineBuildError, match="init_libnvinfer_plugins"):
        T.build_engine(_onnx_file(tmp_path), tmp_path / "m.engine")


def test_load_initialises_the_plugin_library_before_deserializing(fake_trt, tmp_path):
    T.build_engine(_onnx_file(tmp_path), tmp_path / "m.engine")
    fake_trt.reset_mock()
    fake_trt.init_libnvinfer_plugins.return_value = True
    T.load_engine(tmp_path / "m.engine")
    assert _first_call(fake_trt, "init_libnvinfer_plugins") < _first_call(fake_trt, "Runtime().deserialize_cuda_engine")


class _Context:
    def __init__(self, accept: bool) -> None:
        self.accept, self.shapes = accept, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return self.accept


def test_out_of_profile_shapes_are_refused_with_the_profile_bounds():
    engine = types.SimpleNamespace(get_tensor_profile_shape=lambda name, p: [(1, 31, 64, 64), (2, 31, 64, 64),
                                                                             (4, 31, 64, 64)])
    ok = _Context(True)
    T.set_input_shapes(engine, ok, {"hsi": np.zeros((2, 31, 64, 64)).shape}, "engine e")
    assert ok.shapes == {"hsi": (2, 31, 64, 64)}
    with pytest.raises(InputValidationError, match=r"outside the engine's optimisation profile 0 \(min \(1, 31, 64, "
                                                   r"64\), max \(4, 31, 64, 64\)\)"):
        T.set_input_shapes(engine, _Context(False), {"hsi": (8, 31, 64, 64)}, "engine e")


def test_execution_contexts_are_created_on_the_engine_device(fake_trt, monkeypatch):
    """TensorRT allocates a context's memory on the *current* device: the runner makes its device current first."""
    import torch

    current = []

    class _Device:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()

    seen = []
    engine = mock.MagicMock(num_io_tensors=0)
    engine.create_execution_context.side_effect = lambda: seen.append(current[-1] if current else None)
    monkeypatch.setattr(torch.cuda, "device", _Device)
    T.EngineRunner(T.LoadedEngine(engine, {}, "e.engine"), "cuda:1")
    assert seen == [torch.device("cuda", 1)]


def test_plugin_buffers_are_viewed_never_copied():
    """A JIT plugin writes its outputs into TensorRT's buffers: a view that turned out to be a copy (e.g. made on
    another device) would lose them, so it is refused."""
    import torch
    from trt_standin import Tensor

    from sschsr_deploy.engine.plugins import _torch_views

    t = torch.arange(6.0)
    (v,) = _torch_views(Tensor(t))
    assert v.data_ptr() == t.data_ptr()
    with mock.patch("torch.as_tensor", return_value=t.clone()), pytest.raises(RuntimeError, match="copied"):
        _torch_views(Tensor(t))
