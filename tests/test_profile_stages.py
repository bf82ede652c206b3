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


def test_ort_trace_aggregation(prof):
    trace = [
        {"cat": "Node", "name": "/decoder/res3/Conv_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/decoder/res3/Conv_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/flownet/Mul_kernel_time", "dur": 2000, "args": {"op_name": "Mul"}},
        {"cat": "Node", "name": "Cast_17_kernel_time", "dur": 500, "args": {"op_name": "Cast"}},
        {"cat": "Node", "name": "/decoder/res3/Conv_fence_before", "dur": 99999, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "dur": 99999},
    ]
    stages, ops = prof.aggregate_ort_trace(trace, runs=2, top=2)
    assert stages == {"decoder": 0.002, "flownet": 0.001, "other": 0.00025}
    assert [o["op"] for o in ops] == ["Conv", "Mul"] and ops[0]["calls"] == 1 and ops[0]["self_ms"] == 2.0
    assert ops[0]["share"] == pytest.approx(4000 / 6500, abs=1e-4)
