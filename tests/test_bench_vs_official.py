"""``benchmarks/bench_vs_official.py`` on the smallest run it allows: the stand-in and one of our paths at 128², each in
its own worker process, the rotated rounds, the golden-case check and the table; a configuration that cannot be built
is reported and the run goes on; and the stand-in really is the official formulation."""

from __future__ import annotations

import json
import os
import platform
import sys

import pytest
import torch
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("bench_vs_official")
    # the spawned workers import the module by name (benchmarks/ is on sys.path): the parent's copy must be the one
    # pickle finds under that name
    previous = sys.modules.get("bench_vs_official")
    sys.modules["bench_vs_official"] = module
    yield module
    if previous is None:
        sys.modules.pop("bench_vs_official", None)
    else:
        sys.modules["bench_vs_official"] = previous


def test_smallest_run_writes_ratios_and_the_golden_check(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path))
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)  # the stand-in's worker gets glibc's defaults, ours the package's

    def broken_export(model, size, precision, workdir, calibration_scenes):
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "not_a_model.onnx"
        path.write_bytes(b"not an ONNX file")
        return path, {"export_s": 0.0}

    monkeypatch.setattr(bench, "_export", broken_export)  # its worker cannot build a session: reported, not fatal
    assert bench.main(["--sizes", "128", "--rounds", "2", "--configs", "torch bf16 channels-last",
                       "onnxruntime fp32", "--workdir", str(tmp_path / "cache")]) == 0
    result = json.loads((tmp_path / "vs_official_cpu.json").read_text())
    rows = result["sizes"]["128"]["rows"]
    assert set(rows) == {bench.OFFICIAL, "torch bf16 channels-last", "onnxruntime fp32"}
    assert len(rows[bench.OFFICIAL]["times_s"]) == 2 and rows[bench.OFFICIAL]["speedup_vs_official"] == 1.0
    assert 1e-4 < rows["torch bf16 channels-last"]["rel_l2_vs_official_fp32"] < 0.2  # reduced, not broken
    assert rows["onnxruntime fp32"]["unavailable"].split(":")[0].isidentifier()  # "<type>: <message>"
    assert "median_s" not in rows["onnxruntime fp32"]
    # each configuration in its own process: the stand-in with glibc's defaults, ours with the package's setup
    assert result["config"]["processes"] == "one per configuration"
    assert rows[bench.OFFICIAL]["allocator"] == "glibc defaults"
    ours = rows["torch bf16 channels-last"]["allocator"]
    assert set(ours) == {"arenas", "large_blocks"} and all(isinstance(v, bool) for v in ours.values())
    if platform.libc_ver()[0] == "glibc":
        assert ours == {"arenas": True, "large_blocks": True}  # applied in its worker (no MALLOC_* set)
    assert rows["torch bf16 channels-last"]["first_call_s"] > 0
    golden = result["sizes"]["128"]["golden_case_A"]
    assert set(golden) == {bench.OFFICIAL, "torch bf16 channels-last"}
    assert golden[bench.OFFICIAL]["rel_l2"] < 1e-5  # the stand-in reproduces the official model's output
    assert result["environment"]["cpu_count"] and "stand-in" in result["stand_in"]
    runs = result["sizes"]["128"]["runs"]
    assert len(runs) == 1 and set(runs[0]["speedup"]) == {"torch bf16 channels-last"}
    assert runs[0]["stand_in_median_s"] == round(rows[bench.OFFICIAL]["median_s"], 4)
    assert result["sizes"]["128"]["over_runs"]["torch bf16 channels-last"]["runs"] == 1
    out = capsys.readouterr().out
    assert "| torch bf16 channels-last |" in out and "onnxruntime fp32 unavailable" in out
    assert "| 128² | torch bf16 channels-last | 1 |" in out


def test_runs_accumulate_and_the_lowest_ratio_is_kept(bench, tmp_path, monkeypatch):
    """``--runs K`` measures K times; ``--merge`` appends to a size's history (other sizes kept), ``--reset-runs``
    starts it afresh; ``over_runs`` is the lowest / median / highest ratio of each configuration over its runs."""
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path))
    stand_in_times = iter([6.0, 9.0, 8.0, 7.0, 6.5, 7.5])

    def fake_measure(size, configs, args):
        t = next(stand_in_times)
        rows = {bench.OFFICIAL: {"median_s": t, "speedup_vs_official": 1.0},
                "torch bf16 channels-last compiled": {"median_s": 2.0, "speedup_vs_official": t / 2.0},
                "onnxruntime int8": {"unavailable": "RuntimeError: no"}}
        return {"rows": rows, "rounds": args.rounds, "check_against_profile": None, "golden_case_A": None}

    monkeypatch.setattr(bench, "measure_size", fake_measure)
    cfg = ["--configs", "torch bf16 channels-last compiled", "--workdir", str(tmp_path / "cache")]
    assert bench.main(["--sizes", "256", "--runs", "2", *cfg]) == 0
    assert bench.main(["--sizes", "256", "--runs", "1", "--merge", *cfg]) == 0
    result = json.loads((tmp_path / "vs_official_cpu.json").read_text())
    size = result["sizes"]["256"]
    assert [r["stand_in_median_s"] for r in size["runs"]] == [6.0, 9.0, 8.0]
    assert size["rows"][bench.OFFICIAL]["median_s"] == 8.0  # the rows are the latest run's
    summary = size["over_runs"]["torch bf16 channels-last compiled"]
    assert summary == {"runs": 3, "min": 3.0, "median": 4.0, "max": 4.5}
    assert size["over_runs"][bench.OFFICIAL] == {"runs": 3, "median_s_min": 6.0, "median_s_max": 9.0}
    assert "onnxruntime int8" not in size["over_runs"]  # never measured: not a run of it
    assert bench.main(["--sizes", "128", "--merge", *cfg]) == 0  # another size: 256²'s history stays
    assert bench.main(["--sizes", "256", "--merge", "--reset-runs", *cfg]) == 0
    result = json.loads((tmp_path / "vs_official_cpu.json").read_text())
    assert len(result["sizes"]["128"]["runs"]) == 1
    assert [r["stand_in_median_s"] for r in result["sizes"]["256"]["runs"]] == [6.5]
    assert "| 256² | torch bf16 channels-last compiled | 1 | 3.25× |" in bench.runs_markdown(result)


def test_rounds_rotate_and_a_failing_configuration_is_dropped(bench):
    """Round r starts at configuration r mod n; a worker that fails mid-run is reported and the rounds go on."""
    calls: list[str] = []

    def timer(name: str, fail_at: int | None = None):
        def run() -> float:
            calls.append(name)
            if fail_at is not None and calls.count(name) == fail_at:
                raise bench.WorkerError("RuntimeError: out of memory")
            return 1.0
        return run

    times, failed = bench.timed_rounds({"a": timer("a"), "b": timer("b", fail_at=2), "c": timer("c")}, 4)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "a", "c"]
    assert failed == {"b": "RuntimeError: out of memory"}
    assert times == {"a": [1.0] * 4, "c": [1.0] * 4}


def test_compiled_configurations_only_when_asked(bench):
    assert set(bench.COMPILED) == {"torch bf16 channels-last compiled", "torch fp32 channels-last compiled"}
    assert not set(bench.COMPILED) & set(bench.default_configs())
    assert "onnxruntime fp16" not in bench.default_configs(compiled=True)
    assert bench.default_configs(compiled=True) == [c for c in bench.CONFIGS if c != "onnxruntime fp16"]


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
