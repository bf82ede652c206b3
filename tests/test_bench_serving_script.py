"""benchmarks/bench_serving.py's own logic (no server): the --servers spec and the merge of rotated rounds."""

from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark

bench = load_benchmark("bench_serving")


def test_parse_server_spec():
    assert bench.parse_server("2x1") == {"name": "2x1", "instances": 2, "threads": 1, "batch_requests": 0,
                                         "max_queue_delay_us": None}
    assert bench.parse_server("1x2/b8")["batch_requests"] == 8
    assert bench.parse_server("2x1/b4/d0")["max_queue_delay_us"] == 0
    for bad in ("2", "0x1", "1x2/8", "1x2/bx", "axb", "1x2/d0", "1x2/b4/d-1"):
        with pytest.raises(SystemExit, match="IxT"):
            bench.parse_server(bad)


def _level(scenes_per_s, p50, lost=0):
    return {"clients": 2, "responses": 8, "lost": lost, "wrong": 0, "errors": ["e"] * lost, "wall_s": 1.0,
            "latency_ms": {"p50": p50, "p90": p50 + 1, "p99": p50 + 2, "mean": p50},
            "scenes_per_s": scenes_per_s, "hr_mpix_per_s": 0.1, "scenes_run_together_mean": 2.0,
            "overhead_ratio_p50": 1.0, "throughput_ratio": scenes_per_s / 5}


def test_merge_rounds_takes_medians_and_sums_losses():
    rounds = [{"name": "1x2/b8", "server_startup_s": s, "levels": [_level(v, p, lost)]}
              for s, v, p, lost in [(3.0, 5.0, 300.0, 0), (4.0, 9.0, 100.0, 1), (5.0, 6.0, 200.0, 0)]]
    merged = bench.merge_rounds(rounds)
    level = merged["levels"][0]
    assert level["scenes_per_s"] == 6.0 and level["latency_ms"]["p50"] == 200.0 and level["lost"] == 1
    assert [r["scenes_per_s"] for r in level["rounds"]] == [5.0, 9.0, 6.0] and merged["rounds"] == 3
    assert merged["server_startup_s"] == 4.0 and bench.merge_rounds(rounds[:1]) is rounds[0]
