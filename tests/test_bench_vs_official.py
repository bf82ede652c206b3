"""``benchmarks/bench_vs_official.py`` on the smallest run it allows: the stand-in and one of our paths at 128², the
rotated rounds, the golden-case check and the table; and the stand-in really is the official formulation."""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_vs_official")


def test_smallest_run_writes_ratios_and_the_golden_check(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path))
    assert bench.main(["--sizes", "128", "--rounds", "2", "--configs", "torch bf16 channels-last",
                       "--workdir", str(tmp_path / "cache")]) == 0
    result = json.loads((tmp_path / "vs_official_cpu.json").read_text())
    rows = result["sizes"]["128"]["rows"]
    assert set(rows) == {bench.OFFICIAL, "torch bf16 channels-last"}
    assert len(rows[bench.OFFICIAL]["times_s"]) == 2 and rows[bench.OFFICIAL]["speedup_vs_official"] == 1.0
    assert 1e-4 < rows["torch bf16 channels-last"]["rel_l2_vs_official_fp32"] < 0.2  # reduced, not broken
    golden = result["sizes"]["128"]["golden_case_A"]
    assert golden[bench.OFFICIAL]["rel_l2"] < 1e-5  # the stand-in reproduces the official model's output
    assert result["environment"]["cpu_count"] and "stand-in" in result["stand_in"]
    assert "| torch bf16 channels-last |" in capsys.readouterr().out


def test_stand_in_takes_the_plain_formulation(bench):
    """Inside the stand-in's forced references the decoder's inference rewrite of the offsets is off too (it would
    make the baseline faster than the official code), and both formulations give the same offsets."""
    from sschsr_deploy.model.decoder import DeformableAggregation
    from sschsr_deploy.ops._backend import forced_backends, reference_forced

    agg = DeformableAggregation(16, offset_groups=2)
    t = torch.randn(1, 3 * 2 * 9, 7, 9)
    pre = torch.randn(1, 9, 7, 9, 2)
    sim = torch.rand(1, 1, 7, 9)
    with torch.no_grad():
        fast = agg.offsets_from_logits(t, pre, sim)
        with forced_backends(**bench.REFERENCE_OPS):
            assert reference_forced("modulated_deform_conv2d")
            plain = agg.offsets_from_logits(t, pre, sim)
    assert not reference_forced("modulated_deform_conv2d")
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)


def test_in_flight_splits_the_windows(bench):
    calls = []
    bench._in_flight([lambda: calls.append("a"), lambda: calls.append("b")], 5)
    assert sorted(calls) == ["a", "a", "a", "b", "b"]
