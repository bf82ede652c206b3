"""``benchmarks/bench_memory.py``: peak memory of ``infer`` per scene size, one fresh process per size.

One real run at 256² (a single 256-px window of the tiny model: one ``infer`` subprocess, ~30 s on 2 loaded cores)
checks the plumbing — inputs written by a child, the command line, the sampled ``VmHWM`` / ``RssAnon`` and
``os.wait4``'s ``ru_maxrss``, the JSON and the plot; the ratio and goal logic is checked on made-up rows.
"""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_memory")


def test_ratios_and_goal_use_the_smallest_successful_size(bench):
    rows = [
        {"size": 4096, "returncode": 0, "peak_rss_mib": 840.0, "peak_rss_anon_mib": 500.0},
        {"size": 512, "returncode": 0, "peak_rss_mib": 700.0, "peak_rss_anon_mib": 400.0},
        {"size": 256, "returncode": 1, "peak_rss_mib": 10.0, "peak_rss_anon_mib": 5.0},  # failed: not a baseline
    ]
    summary = bench.summarise(rows)
    assert summary["baseline_size"] == 512
    assert summary["goal"] == {"size": 4096, "max_ratio": 1.2, "baseline_size": 512, "measured": True, "ratio": 1.2,
                               "complete": True, "met": True}
    assert rows[0]["ratio_peak_rss"] == 1.2 and rows[0]["ratio_peak_rss_anon"] == 1.25
    assert "ratio_peak_rss" not in rows[2]
    rows[0]["peak_rss_mib"] = 841.0
    assert bench.summarise(rows)["goal"]["met"] is False
    assert bench.summarise(rows[1:2])["goal"]["measured"] is False
    # a run stopped by --timeout: its peak so far gets a ratio, but the goal is not claimed
    rows[0].update(returncode=-9, timed_out=True, peak_rss_mib=770.0)
    goal = bench.summarise(rows)["goal"]
    assert goal["ratio"] == 1.1 and goal["complete"] is False and goal["met"] is False


def test_one_size_end_to_end(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path / "results"))
    code = bench.main(["--sizes", "256", "--tile", "256", "--threads", "1", "--tmp", str(tmp_path)])
    data = json.loads((tmp_path / "results" / "memory_cpu.json").read_text())
    assert code == 0, data["results"]
    assert (tmp_path / "results" / "memory_cpu.png").exists()
    (row,) = data["results"]
    assert row["size"] == 256 and row["returncode"] == 0 and row["complete"] and not row["timed_out"]
    assert row["output_mib"] > 7.5  # 256² x 31 float32
    # a whole process with torch and the model: hundreds of MiB, and the anonymous part is below the total
    assert 100 < row["peak_rss_anon_mib"] < row["peak_rss_mib"] < 8000 and row["ru_maxrss_mib"] > 100
    assert row["ratio_peak_rss"] == 1.0 and data["baseline_size"] == 256 and data["goal"]["measured"] is False
    assert data["environment"]["device"] == "cpu" and "sschsr_deploy" in data["environment"]
    assert data["settings"]["weights"] == "tiny-x4" and data["settings"]["tile"] == 256
    assert not list(tmp_path.glob("bench_memory_*"))  # inputs and output removed
    assert '"size": 256' in capsys.readouterr().out


def test_deviation_keeps_the_memory_results(bench, tmp_path, monkeypatch):
    out = tmp_path / "results"
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(out))
    out.mkdir()
    (out / "memory_cpu.json").write_text(json.dumps({"results": [{"size": 512}], "goal": {"size": 4096}}))
    assert bench.main(["--skip-memory", "--deviation", "256:1:nodata"]) == 0
    data = json.loads((out / "memory_cpu.json").read_text())
    assert data["results"] == [{"size": 512}] and data["goal"] == {"size": 4096}
    (row,) = data["matching_deviation"]
    assert row["scene"] == "256:1:nodata" and row["nodata"] and row["streamed_exact"]  # small: the exact path
    assert row["hsi_rgb_sr_max_abs"] == 0.0 and row["output_max_abs"] == 0.0 and row["output_windows"] == "4 x 256²"
