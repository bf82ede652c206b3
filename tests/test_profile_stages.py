"""``benchmarks/profile_stages.py``: the torch path on a small scene (stages from hooks, operators from the profiler,
the JSON), and the ONNX Runtime trace aggregation on a made-up trace."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def prof():
    return load_benchmark("profile_stages")


def test_torch_profile_names_every_stage(prof, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path))
    assert prof.main(["--size", "128", "--repeat", "1", "--top", "5", "--precision", "bf16"]) == 0
    result = json.loads((tmp_path / "profile_torch_bf16_128.json").read_text())
    assert set(result["stages_s"]) == set(prof.STAGES) and all(v > 0 for v in result["stages_s"].values())
    assert sum(result["stages_s"].values()) <= result["total_s"] * 1.05
    assert len(result["ops"]) == 5 and result["ops"][0]["self_ms"] >= result["ops"][-1]["self_ms"]
    assert 0 < result["rel_l2_vs_fp32"] < 0.05  # bf16 moves the output a little, never nothing
    assert "stage decoder" in capsys.readouterr().out


def test_by_shape_and_compiled_plumbing(prof, tmp_path, monkeypatch, capsys):
    """``--by-shape`` lists the convolutions per input / weight shape; ``--compile`` goes through ``torch.compile``
    with freezing and Inductor's kernel profiling on, and times no stages (hooks would break its one graph).
    ``torch.compile`` is stood in for by the model itself here (compiling takes minutes)."""
    import torch
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path))
    compiled, frozen = [], []

    def fake_compile(model, **kw):
        compiled.append(kw)

        def call(*inputs):
            frozen.append(inductor_config.freezing)
            return model(*inputs)
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(inductor_config.cpp, "enable_kernel_profile", False)
    monkeypatch.setattr(inductor_config, "freezing", False)
    assert prof.main(["--size", "128", "--repeat", "1", "--top", "4", "--compile", "--by-shape",
                      "--channels-last"]) == 0
    result = json.loads((tmp_path / "profile_torch_fp32_cl_compiled_128.json").read_text())
    assert compiled == [{"dynamic": False}] and inductor_config.cpp.enable_kernel_profile
    assert result["compiled"] is True and result["stages_s"] == {} and result["first_call_s"] > 0
    shapes = result["conv_shapes"]
    assert len(shapes) == 4 and shapes[0]["self_ms"] >= shapes[-1]["self_ms"]
    assert all(len(c["shapes"][0]) == 4 and len(c["shapes"][1]) == 4 for c in shapes)  # input and weight
    assert set(result["allocator"]) == {"arenas", "large_blocks"}
    out = capsys.readouterr().out
    assert "  conv " in out and "stage " not in out
    assert frozen and all(frozen) and not inductor_config.freezing  # frozen while called, restored after


def test_ort_trace_aggregation(prof):
    trace = [
        {"cat": "Node", "name": "/decoder/res3/Conv_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/decoder/res3/Conv_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/flownet/Mul_kernel_time", "dur": 2000, "args": {"op_name": "Mul"}},
        {"cat": "Node", "name": "Cast_17_kernel_time", "dur": 500, "args": {"op_name": "Cast"}},
        {"cat": "Node", "name": "node_conv2d_5_kernel_time", "dur": 500, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv2d_6_nchwc_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "node_MatMul_7/MatmulTransposeFusion/_kernel_time", "dur": 100,
         "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/decoder/res3/Conv_fence_before", "dur": 99999, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "dur": 99999},
    ]
    renamed = {"node_conv2d_5": "similar", "node_conv2d_6": "similar", "node_MatMul_7": "similar"}  # as ORT runs them
    stages, ops = prof.aggregate_ort_trace(trace, runs=2, top=2, stages_of=renamed)
    assert stages == {"decoder": 0.002, "flownet": 0.001, "other": 0.00025, "similar": 0.0004}
    assert [o["op"] for o in ops] == ["Conv", "Mul"] and ops[0]["calls"] == 2 and ops[0]["self_ms"] == 2.4
    assert ops[0]["share"] == pytest.approx(4800 / 7300, abs=1e-4)


def test_node_stages_from_the_exporters_scopes(prof, tmp_path):
    """The dynamo exporter names nodes ``node_conv2d_N``; their module scopes say the stage."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def node(name: str, scopes: str | None):
        n = helper.make_node("Relu", ["x"], [name + "_y"], name=name)
        if scopes is not None:
            n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
        return n

    graph = helper.make_graph(
        [node("node_conv2d_1", "['', 'model', 'model.decoder', 'model.decoder.res3', 'conv2d_1']"),
         node("node_mul_2", "['', 'model', 'model.flownet', 'mul_2']"), node("node_cast_3", "['', 'cast_3']"),
         node("node_add_4", None)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert prof.node_stages(str(path)) == {"node_conv2d_1": "decoder", "node_mul_2": "flownet"}
