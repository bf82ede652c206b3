"""Static TensorRT ONNX-parser support check: the data file, and that unsupported nodes are flagged."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sschsr_deploy.engine.trt_support import check_tensorrt_support, supported_operators  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=20, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, elem=TensorProto.FLOAT, shape=(1, 8, 16, 16)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_data_file_records_source_and_version():
    data = supported_operators()
    assert data["source_url"].startswith("https://github.com/onnx/onnx-tensorrt")
    assert data["tensorrt_version"] == "10.15"
    ops = data["operators"]
    for op in ("Conv", "DeformConv", "GridSample", "LayerNormalization", "Gelu", "InstanceNormalization", "Einsum"):
        assert ops[op]["supported"], op
    for op in ("Col2Im", "Unique", "DFT", "ConvInteger"):
        assert not ops[op]["supported"], op
    assert "pads" in ops["DeformConv"]["restrictions"]


def test_supported_graph_passes():
    w = numpy_helper.from_array(np.zeros((8, 8, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    report = check_tensorrt_support(_model(nodes, [_vi("x")], [_vi("y")], [w]))
    assert report.ok, report.summary()
    assert report.op_counts == {"Conv": 1, "Relu": 1}


def test_unsupported_op_is_flagged():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unique", ["r"], ["y"], sorted=1)]
    report = check_tensorrt_support(_model(nodes, [_vi("x")], [helper.make_tensor_value_info("y", 1, None)]))
    assert not report.ok
    assert "Unique" in report.unsupported
    assert "UNSUPPORTED Unique" in report.summary()


def test_unknown_custom_domain_and_missing_plugin_are_flagged():
    nodes = [
        helper.make_node("MMCVModulatedDeformConv2d", ["x"], ["a"], domain="mmcv"),
        helper.make_node("NoSuchOp", ["a"], ["y"], domain="sschsr"),
    ]
    model = _model(nodes, [_vi("x")], [_vi("y")], extra_opsets=[("mmcv", 1), ("sschsr", 1)])
    report = check_tensorrt_support(model, infer_shapes=False)
    assert set(report.unsupported) == {"mmcv::MMCVModulatedDeformConv2d", "sschsr::NoSuchOp"}


def test_our_plugin_nodes_count_as_supported():
    nodes = [
        helper.make_node("SpectralAttention", ["x", "x", "x", "t"], ["a"], domain="sschsr", heads=2),
        helper.make_node("PatchMatch", ["a", "a"], ["i", "s"], domain="sschsr", patch_size=3),
    ]
    t = numpy_helper.from_array(np.ones((2, 1, 1), np.float32), "t")
    model = _model(nodes, [_vi("x")], [_vi("s", shape=(1, 14, 14))], [t], extra_opsets=[("sschsr", 1)])
    report = check_tensorrt_support(model, infer_shapes=False)
    assert report.ok, report.summary()
    assert report.plugin_ops == ["sschsr::PatchMatch", "sschsr::SpectralAttention"]


def test_type_outside_support_list_is_flagged():
    # DeformConv is FP32/FP16 only in the parser; a bf16 one must be refused
    nodes = [helper.make_node("DeformConv", ["x", "w", "o"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    bf16 = TensorProto.BFLOAT16
    inputs = [_vi("x", bf16), _vi("w", bf16, (8, 8, 3, 3)), _vi("o", bf16, (1, 18, 16, 16))]
    report = check_tensorrt_support(_model(nodes, inputs, [_vi("y", bf16)]), infer_shapes=False)
    assert not report.ok
    assert any("DeformConv" in p and "BF16" in p for p in report.type_problems)


def test_opset_out_of_range_is_flagged():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    report = check_tensorrt_support(_model(nodes, [_vi("x")], [_vi("y")], opset=8), infer_shapes=False)
    assert "opset 8" in report.unsupported
