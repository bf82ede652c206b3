"""``benchmarks/bench_backends.py``: a thin script over :mod:`sschsr_deploy.bench` (its timing, memory and
statistics) that adds the ONNX export, the TensorRT build where installed, and the results files of
``benchmarks/common.py``. One run exports the tiny preset at 128² (RAFT 1 iteration; 30–60 s on 2 CPU cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backends.py"


def test_help_lists_the_flags():
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for flag in ("--preset", "--tile", "--batch", "--device", "--raft-iters", "--repeat", "--warmup", "--threads",
                 "--no-compile", "--onnx", "--engine", "--publish"):
        assert flag in res.stdout, flag


def test_writes_torch_and_onnxruntime_results(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "SSCHSR_BENCH_RESULTS_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, str(SCRIPT), "--no-compile", "--repeat", "2", "--warmup", "1", "--tile",
                          "128", "128", "--raft-iters", "1", "--threads", "2", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((tmp_path / "backends_cpu.json").read_text())
    assert data["benchmark"] == "backends" and data["baseline"] == "torch_eager"
    assert data["config"] == {"preset": "tiny", "tile": [128, 128], "batch": 1, "raft_iters": 1, "threads": 2,
                              "repeat": 2, "warmup": 1}
    assert set(data["results"]) == {"torch_eager", "ort_cpu"}
    assert data["unavailable"]["torch_compile"] == "skipped (--no-compile)"
    assert "tensorrt" in data["unavailable"] and data["environment"]["device"] == "cpu"
    eager, ort = data["results"]["torch_eager"], data["results"]["ort_cpu"]
    for row in (eager, ort):  # the fields of the earlier files, from sschsr_deploy.bench's row
        assert row["runs"] == 2 and row["median_ms"] == row["latency_ms"]["p50"] > 0
        assert row["min_ms"] == row["latency_ms"]["min"] and row["tiles_per_s"] == row["throughput"]["tiles_per_s"]
        assert row["megapixels_per_s"] == row["throughput"]["hr_mpix_per_s"] and row["peak_memory_mib"] > 0
    assert ort["providers"][0] == "CPUExecutionProvider" and ort["raft_iters"] == eager["raft_iters"] == 1
    assert ort["vs_first"]["output_rel_l2"] < 1e-4  # the exported file computes what the eager model does
    assert data["ort_over_eager_latency_ratio"] == pytest.approx(ort["median_ms"] / eager["median_ms"])
    assert data["export"]["parity_rel_l2"] < 1e-4
    assert "ONNX Runtime (CPU) / eager latency ratio" in res.stdout
