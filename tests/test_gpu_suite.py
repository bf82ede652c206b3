"""The GPU suite's own logic, tested on the CPU before a GPU ever runs it (scripts/gpu_suite.py).

A lent GPU machine gives about 14 minutes, so the suite must not discover its own bugs there. These tests run its dry
run, a real end-to-end call on this machine (which has no CUDA: it must fail loudly), its pytest plugin's time
bounds, and its verdict on faked outcomes: build failure, Triton interpreter, a GPU test skipped for a missing device
(a failure) or for a missing optional package (not run, not a failure), timeouts, budget exhaustion, and results
written after every stage.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_suite.py"


def _load_suite_module():
    spec = importlib.util.spec_from_file_location("sschsr_gpu_suite", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gs = _load_suite_module()

GOOD_ENV = {
    "python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cuda_available": True, "device_count": 1,
    "device": "NVIDIA H200", "capability": [9, 0], "mem_free_gib": 139.0, "triton": "3.6.0",
    "triton_interpreting": False, "TRITON_INTERPRET": None,
    "optional": {"tensorrt": False, "onnxruntime": True, "onnx": True, "onnxscript": True},
    "ort_providers": ["CPUExecutionProvider"],
}
GOOD_BUILD = {"built": True, "cuda": True, "openmp_threads": 16, "cuda_kernels": dict.fromkeys(gs.NATIVE_OPS, True)}
CLEAN_SANITIZER = "gpu_sanitizer_cases: ok (48 cases on cuda)\n========= ERROR SUMMARY: 0 errors\n"


def junit(cases: list[tuple[str, str, str]]) -> str:
    """A pytest-style junit XML: (name, outcome, message) with outcome passed / failed / error / skipped / xfail."""
    body = []
    for name, outcome, msg in cases:
        inner = {"passed": "", "failed": f'<failure message="{msg}">boom</failure>',
                 "error": f'<error message="{msg}">boom</error>',
                 "skipped": f'<skipped type="pytest.skip" message="{msg}">tests/x.py:1: {msg}</skipped>',
                 "xfail": f'<skipped type="pytest.xfail" message="{msg}" />'}[outcome]
        body.append(f'<testcase classname="tests.test_x" name="{name}" time="0.1">{inner}</testcase>')
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">' + "".join(body)
            + "</testsuite></testsuites>")


PASSING = [("test_a", "passed", ""), ("test_b", "passed", ""), ("test_c", "passed", "")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Handler = Callable[["gs.Step"], "gs.CommandResult"]


class FakeRunner:
    """Answers each step like a healthy H200 would, unless ``overrides["stage/step"]`` says otherwise; records, for
    every call, how many stage lines ``gpu_suite.jsonl`` held at that moment."""

    def __init__(self, out: Path, clock: Clock, overrides: dict[str, Handler] | None = None,
                 seconds: float = 1.0) -> None:
        self.out, self.clock, self.overrides, self.seconds = out, clock, overrides or {}, seconds
        self.calls: list[tuple[str, int, float]] = []

    def __call__(self, step, timeout, log):
        jsonl = self.out / "gpu_suite.jsonl"
        lines = len(jsonl.read_text().splitlines()) if jsonl.exists() else 0
        key = f"{step.stage}/{step.name}"
        self.calls.append((key, lines, timeout))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"+ {step.shell()}\nfake output of {key}\n")
        self.clock.now += self.seconds
        if key in self.overrides:
            return self.overrides[key](step)
        return self.default(step)

    def default(self, step):
        if step.name == "probe":
            return gs.CommandResult(0, 1.0, False, gs.JSON_MARK + json.dumps(GOOD_ENV))
        if step.name.startswith("verify"):
            return gs.CommandResult(0, 1.0, False, gs.JSON_MARK + json.dumps(GOOD_BUILD))
        if step.junit is not None:
            step.junit.parent.mkdir(parents=True, exist_ok=True)
            step.junit.write_text(junit(PASSING))
            return gs.CommandResult(0, 1.0, False, "3 passed")
        for path in step.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"configs": [{"name": "x"}]}))
        if step.stage == "sanitizer":
            return gs.CommandResult(0, 1.0, False, CLEAN_SANITIZER)
        return gs.CommandResult(0, 1.0, False, "")

    def keys(self) -> list[str]:
        return [k for k, _, _ in self.calls]


def fake_root(tmp_path: Path) -> Path:
    """A repository stand-in for the build fingerprint and stamp (the real build/ folder stays untouched)."""
    root = tmp_path / "repo"
    (root / "csrc" / "cuda").mkdir(parents=True)
    (root / "csrc" / "cuda" / "k.cu").write_text("__global__ void k() {}\n")
    (root / "setup.py").write_text("# setup\n")
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "sschsr_deploy").mkdir()
    return root


def make_suite(tmp_path: Path, overrides: dict[str, Handler] | None = None, *, budget: float = 0.0,
               seconds: float = 1.0, which: Callable[[str], str | None] | None = None, root: Path | None = None):
    out = tmp_path / "out"
    clock = Clock()
    runner = FakeRunner(out, clock, overrides, seconds)
    lines: list[str] = []
    suite = gs.Suite(out, runner=runner, python="python3", budget=budget, clock=clock, echo=lines.append,
                     which=which or (lambda name: f"/usr/bin/{name}"), root=root or fake_root(tmp_path))
    return suite, runner, lines


def result(rc: int = 0, output: str = "", timed_out: bool = False, seconds: float = 1.0) -> Handler:
    return lambda step: gs.CommandResult(rc, seconds, timed_out, output)


def with_junit(cases: list[tuple[str, str, str]], rc: int = 0) -> Handler:
    def handler(step):
        step.junit.parent.mkdir(parents=True, exist_ok=True)
        step.junit.write_text(junit(cases))
        return gs.CommandResult(rc, 1.0, False, "")

    return handler


def env_with(**changes) -> Handler:
    info = {**GOOD_ENV, **changes}
    return result(0, gs.JSON_MARK + json.dumps(info))


ALL = list(gs.STAGE_ORDER)


# ---- verdicts -------------------------------------------------------------------------------------------------------


def test_all_good_is_a_pass_with_optional_stages_not_run(tmp_path):
    suite, runner, _ = make_suite(tmp_path)
    results = suite.run(gs.resolve_stages("all"))
    line = gs.summary_line(results)
    assert gs.verdict(results) == "PASS", line
    assert line.startswith("gpu_suite: PASS — env NVIDIA H200, sm_90")
    assert "kernels 3 passed" in line and "bench 3/3 benchmarks written" in line
    assert "tensorrt not run (no TensorRT)" in line
    assert "ort-cuda not run (no onnxruntime-gpu (CUDAExecutionProvider))" in line
    assert "sanitizer memcheck / racecheck / synccheck clean" in line
    assert "tensorrt/pytest" not in runner.keys() and "ort-cuda/pytest" not in runner.keys()
    pip = next(c for c in runner.calls if c[0] == "build/pip")
    assert pip[0] == "build/pip"
    summary = json.loads((suite.out / "summary.json").read_text())
    assert summary["complete"] and summary["verdict"] == "PASS" and summary["line"] == line


def test_results_are_appended_after_every_stage(tmp_path):
    suite, runner, _ = make_suite(tmp_path)
    names = gs.resolve_stages("all")
    suite.run(names)
    first_call = {}
    for key, lines, _ in runner.calls:
        first_call.setdefault(key.split("/")[0], lines)
    ran = [n for n in names if n in first_call]
    assert len(ran) >= 8
    for name in ran:  # when a stage starts, every earlier stage already has its line
        assert first_call[name] == names.index(name), (name, first_call)
    records = [json.loads(x) for x in (suite.out / "gpu_suite.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == names
    for name in names:
        assert json.loads((suite.out / "stages" / f"{name}.json").read_text())["stage"] == name


def test_summary_is_incomplete_while_running(tmp_path):
    seen = {}

    def kernels(step):
        seen.update(json.loads((tmp_path / "out" / "summary.json").read_text()))
        return FakeRunner.default(None, step)  # type: ignore[arg-type]

    suite, _, _ = make_suite(tmp_path, {"kernels/pytest": kernels})
    suite.run(["env", "build", "kernels"])
    assert seen["complete"] is False and seen["verdict"] == "INCOMPLETE"
    assert [s["stage"] for s in seen["stages"]] == ["env", "build"]


def test_build_failure_fails(tmp_path):
    suite, _, _ = make_suite(tmp_path, {"build/pip": result(1, "error: command 'nvcc' failed")})
    results = suite.run(["env", "build", "kernels"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "build FAIL (pip install failed" in line


def test_extension_without_cuda_kernels_fails(tmp_path):
    status = {**GOOD_BUILD, "cuda": False}
    suite, _, _ = make_suite(tmp_path, {"build/verify": result(0, gs.JSON_MARK + json.dumps(status))})
    results = suite.run(["env", "build"])
    assert gs.verdict(results) == "FAIL"
    assert "built without CUDA" in gs.summary_line(results)
    missing = {**GOOD_BUILD, "cuda_kernels": {**GOOD_BUILD["cuda_kernels"], "patch_match": False}}
    suite, _, _ = make_suite(tmp_path / "b", {"build/verify": result(0, gs.JSON_MARK + json.dumps(missing))})
    results = suite.run(["env", "build"])
    assert gs.verdict(results) == "FAIL" and "no CUDA kernel registered for patch_match" in gs.summary_line(results)


def test_existing_build_is_reused_but_verified(tmp_path):
    root = fake_root(tmp_path)
    suite, runner, _ = make_suite(tmp_path / "one", root=root)
    suite.run(["env", "build"])
    (root / "sschsr_deploy" / "_C.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    suite, runner, _ = make_suite(tmp_path / "two", root=root)
    results = suite.run(["env", "build"])
    assert gs.verdict(results) == "PASS"
    assert "build/pip" not in runner.keys() and "build/verify-existing" in runner.keys()
    assert "reused" in results[1].detail
    # a changed source invalidates the stamp: built again
    (root / "csrc" / "cuda" / "k.cu").write_text("__global__ void k2() {}\n")
    suite, runner, _ = make_suite(tmp_path / "three", root=root)
    suite.run(["env", "build"])
    assert "build/pip" in runner.keys()
    # a reused build that no longer verifies is rebuilt, not trusted
    suite, runner, _ = make_suite(tmp_path / "four", root=root, overrides={
        "build/verify-existing": result(0, gs.JSON_MARK + json.dumps({"built": False, "error": "undefined symbol"}))})
    results = suite.run(["env", "build"])
    assert "build/pip" in runner.keys() and gs.verdict(results) == "PASS"


def test_triton_interpreter_fails(tmp_path):
    suite, _, _ = make_suite(tmp_path, {"env/probe": env_with(triton_interpreting=True, TRITON_INTERPRET="1")})
    results = suite.run(["env", "triton-configs"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL" and "interpreter" in line


def test_no_cuda_fails_and_runs_nothing_else(tmp_path):
    suite, runner, _ = make_suite(tmp_path, {"env/probe": env_with(cuda_available=False)})
    results = suite.run(gs.resolve_stages("kernels,bench"))
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "CUDA is not available" in line and "kernels NOT RUN (no CUDA device)" in line
    assert all(k.startswith("env/") for k in runner.keys())


def test_gpu_test_skipped_for_a_missing_device_fails(tmp_path):
    cases = PASSING + [("test_d", "skipped", "needs a CUDA device"), ("test_e", "skipped", "needs a CUDA device")]
    suite, _, _ = make_suite(tmp_path, {"kernels/pytest": with_junit(cases)})
    results = suite.run(["env", "build", "kernels"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "kernels FAIL (2 skipped: needs a CUDA device)" in line


def test_gpu_test_skipped_for_a_missing_optional_package_is_not_a_failure(tmp_path):
    cases = PASSING + [("test_trt", "skipped", "needs TensorRT")]
    all_skipped = [("test_t1", "skipped", "needs TensorRT"), ("test_t2", "skipped", "could not import 'tensorrt'")]
    env = env_with(optional={**GOOD_ENV["optional"], "tensorrt": True})
    suite, _, _ = make_suite(tmp_path, {"kernels/pytest": with_junit(cases), "env/probe": env,
                                        "tensorrt/pytest": with_junit(all_skipped)})
    results = suite.run(["env", "build", "kernels", "tensorrt"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "PASS", line
    assert "kernels 3 passed, 1 skipped (no TensorRT)" in line
    assert "tensorrt not run (no TensorRT)" in line


def test_failed_or_missing_tests_fail(tmp_path):
    cases = PASSING + [("test_bad", "failed", "assert 1 == 2"), ("test_err", "error", "fixture")]
    suite, _, _ = make_suite(tmp_path, {"kernels/pytest": with_junit(cases, rc=1),
                                        "determinism/pytest": with_junit([], rc=5)})
    results = suite.run(["env", "build", "kernels", "determinism"])
    line = gs.summary_line(results)
    assert "kernels FAIL (2 failed: tests.test_x::test_bad, tests.test_x::test_err)" in line
    assert "determinism FAIL (no tests ran (rc=5))" in line


def test_xfail_is_reported_not_failed(tmp_path):
    suite, _, _ = make_suite(tmp_path, {"kernels/pytest": with_junit(PASSING + [("t", "xfail", "known")])})
    results = suite.run(["env", "build", "kernels"])
    assert gs.verdict(results) == "PASS" and "3 passed, 1 xfailed" in gs.summary_line(results)


def test_stage_timeout_fails_and_names_the_running_test(tmp_path):
    def hung(step):  # pytest killed at the stage timeout: no junit, the plugin's progress log only
        step.progress.parent.mkdir(parents=True, exist_ok=True)
        step.progress.write_text("\n".join(json.dumps(r) for r in [
            {"event": "start", "nodeid": "tests/t.py::test_ok"},
            {"event": "report", "nodeid": "tests/t.py::test_ok", "when": "call", "outcome": "passed"},
            {"event": "finish", "nodeid": "tests/t.py::test_ok"},
            {"event": "start", "nodeid": "tests/t.py::test_hangs"},
        ]) + "\n")
        return gs.CommandResult(-15, 300.0, True, "")

    suite, _, _ = make_suite(tmp_path, {"cuda-graph/pytest": hung})
    results = suite.run(["env", "build", "cuda-graph", "determinism"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "cuda-graph TIMEOUT (timeout after 300 s in tests/t.py::test_hangs)" in line
    assert "determinism 3 passed" in line  # the next stage still ran
    counts = results[2].info["counts"]
    assert counts["passed"] == 1 and counts["source"] == "progress"


def test_budget_exhaustion_fails_with_not_run_stages(tmp_path):
    suite, runner, _ = make_suite(tmp_path, budget=200.0, seconds=60.0)
    results = suite.run(gs.resolve_stages("all"))
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "NOT RUN (out of time" in line
    assert all(timeout <= 200 for _, _, timeout in runner.calls)  # no step was allowed past the budget


def test_step_timeouts_are_capped_by_the_budget(tmp_path):
    suite, runner, _ = make_suite(tmp_path, budget=100.0, seconds=10.0)
    suite.run(["env", "build", "kernels"])
    allowed = dict((k, t) for k, _, t in runner.calls)
    assert allowed["kernels/pytest"] <= 100 - gs.RESERVE_S - 30  # three steps of 10 s went before it


def test_sanitizer(tmp_path, monkeypatch):
    monkeypatch.setattr(gs, "sanitizer_locations", lambda: [])
    suite, runner, _ = make_suite(tmp_path, which=lambda name: None if name == "compute-sanitizer" else name)
    results = suite.run(["env", "build", "sanitizer"])
    assert gs.verdict(results) == "PASS" and "sanitizer not run (no compute-sanitizer)" in gs.summary_line(results)
    assert not [k for k in runner.keys() if k.startswith("sanitizer/")]
    bad = "========= Invalid __global__ read of size 4\n========= ERROR SUMMARY: 2 errors\n"
    suite, runner, _ = make_suite(tmp_path / "b", {"sanitizer/memcheck": result(1, bad)})
    results = suite.run(["env", "build", "sanitizer"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL" and "memcheck: rc=1, 2 errors, cases did not finish" in line
    assert "sanitizer/synccheck" in runner.keys()  # the other tools still ran
    suite, runner, _ = make_suite(tmp_path / "c", {"sanitizer/plain": result(1, "RuntimeError: CUDA error")})
    results = suite.run(["env", "build", "sanitizer"])
    assert "the cases fail without the sanitizer" in gs.summary_line(results)
    assert "sanitizer/memcheck" not in runner.keys()


def test_bench_without_result_file_fails(tmp_path):
    suite, _, _ = make_suite(tmp_path, {"bench/bench_spectral_attention": result(0, "")})
    results = suite.run(["env", "build", "bench"])
    line = gs.summary_line(results)
    assert gs.verdict(results) == "FAIL"
    assert "bench_spectral_attention: no readable result spectral_attention_cuda.json" in line


def test_ort_cuda_runs_only_with_the_cuda_provider(tmp_path):
    env = env_with(ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    suite, runner, _ = make_suite(tmp_path, {"env/probe": env})
    results = suite.run(["env", "ort-cuda"])
    assert "ort-cuda/pytest" in runner.keys() and "ort-cuda 3 passed" in gs.summary_line(results)


# ---- selection, parsing ---------------------------------------------------------------------------------------------


def test_resolve_stages():
    assert gs.resolve_stages(None) == ALL
    assert gs.resolve_stages("build test") == ["env", "build", "kernels", "triton-configs", "cuda-graph",
                                               "determinism", "tensorrt", "ort-cuda"]
    assert gs.resolve_stages("bench") == ["env", "build", "bench"]
    assert gs.resolve_stages("triton-configs,env") == ["env", "triton-configs"]
    assert gs.resolve_stages(["sanitizer"]) == ["env", "build", "sanitizer"]
    with pytest.raises(ValueError, match="unknown stage 'test_all'"):
        gs.resolve_stages("test_all")


def test_cuda_arch_matches_setup_py():
    assert gs.cuda_arch((9, 0)) == "90" and gs.cuda_arch([8, 6]) == "86" and gs.cuda_arch((10, 0)) == "100"
    setup = (ROOT / "setup.py").read_text()
    assert 'os.environ.get("SSCHSR_CUDA_ARCHS", "80;90").split(";")' in setup  # one arch = one entry


def test_allowed_skips_are_only_missing_optional_packages():
    assert gs.allowed_skip("needs TensorRT") == "tensorrt"
    assert gs.allowed_skip("could not import 'onnxruntime': No module named 'onnxruntime'") == "onnxruntime-gpu"
    assert gs.allowed_skip("onnxruntime has no CUDAExecutionProvider here") == "onnxruntime-gpu"
    assert gs.allowed_skip("could not import 'onnx': No module named 'onnx'") == "onnx"
    for reason in ("needs a CUDA device", "native extension not built", "extension built without CUDA",
                   "this GPU has no bf16", "not enough free GPU memory for a >2**31-element case",
                   "could not import 'torchvision.ops'", "TensorRT is installed: the unavailable path"):
        assert gs.allowed_skip(reason) is None, reason


def test_coverage_flags_gpu_tests_no_stage_runs(tmp_path):
    assert gs.coverage_problems(ROOT) == []
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_new_gpu.py").write_text("import pytest\npytestmark = pytest.mark.gpu\n")
    (tmp_path / "tests" / "test_cpu.py").write_text("def test_x():\n    pass\n")
    assert gs.coverage_problems(tmp_path) == [
        "tests/test_new_gpu.py has gpu/tensorrt tests but no stage runs it (add it to STAGES)"]


def test_dry_run_reports_missing_files(tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "common.py").write_text("")
    lines: list[str] = []
    suite = gs.Suite(tmp_path / "out", python="python3", echo=lines.append, root=root)
    assert gs.dry_run(suite, ["env", "build"]) == 1
    assert any("missing setup.py" in x for x in lines) and lines[-1].startswith("gpu_suite dry run: FAILED")


# ---- real subprocesses: the plugin, the dry run, an end-to-end call here ------------------------------------------


def _pytest_with_plugin(tmp_path: Path, body: str, *args: str, timeout: float = 60) -> tuple:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(body))
    junit_path, progress = tmp_path / "junit.xml", tmp_path / "progress.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", gs.PLUGIN,
           f"--suite-progress={progress}", f"--junitxml={junit_path}", "--rootdir", str(tmp_path), *args,
           str(tmp_path / "test_sample.py")]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    return res, junit_path, progress


def test_junit_and_progress_from_a_real_pytest_run(tmp_path):
    res, junit_path, progress = _pytest_with_plugin(tmp_path, """
        import pytest
        def test_ok(): pass
        def test_bad(): assert False
        def test_no_gpu(): pytest.skip("needs a CUDA device")
        @pytest.mark.skip(reason="needs TensorRT")
        def test_no_trt(): pass
        @pytest.mark.xfail(reason="known", strict=True)
        def test_known(): assert False
    """)
    assert res.returncode == 1, res.stdout + res.stderr
    for counts in (gs.parse_junit(junit_path), gs.parse_progress(progress)):
        assert counts.passed == 1 and len(counts.failed) == 1 and counts.failed[0].endswith("test_bad")
        assert counts.skipped_allowed == {"tensorrt": 1} and counts.xfailed == 1
        assert list(counts.skipped_bad) == ["needs a CUDA device"]
        assert counts.running is None


def test_plugin_soft_timeout_fails_the_test_and_goes_on(tmp_path):
    res, junit_path, progress = _pytest_with_plugin(tmp_path, """
        import time
        def test_slow(): time.sleep(30)
        def test_after(): pass
    """, "--suite-test-timeout=1")
    assert res.returncode == 1
    counts = gs.parse_junit(junit_path)
    assert counts.passed == 1 and [n.split("::")[-1] for n in counts.failed] == ["test_slow"]
    assert "per-test timeout of 1 s" in junit_path.read_text()
    assert "soft timeout" in (tmp_path / "progress.jsonl.stacks").read_text()
    assert counts.timeouts == counts.failed
    assert [n.split("::")[-1] for n in gs.parse_progress(progress).timeouts] == ["test_slow"]
    step = gs.Step("kernels", "pytest", [], 10, junit=junit_path, progress=progress)
    judged = gs.judge_pytest(gs.StageResult("kernels", "ok"), gs.CommandResult(res.returncode, 3.0), step)
    assert judged.status == "fail" and "1 hit the per-test timeout" in judged.short()


def test_plugin_hard_timeout_ends_a_test_stuck_outside_python(tmp_path):
    # SIGALRM blocked: like a main thread stuck in a CUDA call, the soft bound cannot fire; the watchdog must
    res, junit_path, progress = _pytest_with_plugin(tmp_path, """
        import signal, time
        def test_first(): pass
        def test_stuck():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(60)
    """, "--suite-test-timeout=1", "--suite-test-grace=1", timeout=40)
    assert res.returncode != 0 and not junit_path.exists()
    counts = gs.parse_progress(progress)
    assert counts.passed == 1 and counts.running is not None and counts.running.endswith("test_stuck")
    step = gs.Step("kernels", "pytest", [], 10, junit=junit_path, progress=progress)
    judged = gs.judge_pytest(gs.StageResult("kernels", "ok"), gs.CommandResult(res.returncode, 3.0), step)
    assert judged.status == "fail" and "pytest died during" in judged.short()
    assert "Thread" in (tmp_path / "progress.jsonl.stacks").read_text()  # the watchdog dumped the stacks


def test_dry_run_checks_everything_without_gpu_work(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.rstrip().splitlines()[-1] == "gpu_suite dry run: OK (10 stages planned, 0 problems)"
    for name in gs.STAGE_ORDER:
        assert f"\n[{name}] " in res.stdout
    for f in {f for s in gs.STAGES.values() for f in s.files}:
        assert f"tests from {f} " in res.stdout
    assert "compute-sanitizer --tool racecheck" in res.stdout and "--quick" in res.stdout
    assert not (out / "summary.json").exists() and not (out / "gpu_suite.jsonl").exists()


def test_wrapper_keeps_the_stages_variable(tmp_path):
    env = {**os.environ, "STAGES": "build bench", "SSCHSR_GPU_SUITE_DRY_RUN": "1", "OUT": str(tmp_path)}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_suite.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stages env, build, bench;" in res.stdout and "[kernels]" not in res.stdout
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_suite.sh"), "--dry-run", "--stages", "env",
                          "--out", str(tmp_path)], env={**env, "STAGES": "bench"}, capture_output=True, text=True,
                         timeout=120)
    assert "stages env;" in res.stdout  # the flag wins over the variable


def test_a_real_call_without_cuda_fails_loudly(tmp_path):
    """End to end with the real runner on this CUDA-less machine: non-zero exit, nothing run past env, results."""
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "--stages", "kernels", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    if "'cuda_available': True" in res.stdout or '"cuda_available": true' in (out / "summary.json").read_text():
        pytest.skip("this machine has CUDA: the no-CUDA path cannot be exercised")
    assert res.returncode == 1, res.stdout
    last = res.stdout.rstrip().splitlines()[-1]
    assert last.startswith("gpu_suite: FAIL — env FAIL (") and "CUDA is not available" in last
    assert "build NOT RUN (no CUDA device)" in last and "kernels NOT RUN (no CUDA device)" in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "FAIL" and summary["complete"] and summary["env"]["torch"]
    assert len((out / "gpu_suite.jsonl").read_text().splitlines()) == 3
    assert (out / "logs" / "env-probe.log").exists()


def test_probe_snippets_run_here():
    """ENV_PROBE and BUILD_VERIFY are code run only on the GPU machine: run them here, where they must not crash."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", gs.ENV_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    info = gs.find_json(res.stdout)
    assert res.returncode == 0 and info is not None, res.stderr
    assert info["triton_interpreting"] is False and set(info["optional"]) >= {"tensorrt", "onnxruntime"}
    res = subprocess.run([sys.executable, "-c", gs.BUILD_VERIFY], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    status = gs.find_json(res.stdout)
    assert res.returncode == 0 and status is not None, res.stderr
    assert "built" in status and set(status["cuda_kernels"]) == set(gs.NATIVE_OPS)


def test_sanitizer_cases_script_on_the_cpu_kernels():
    """The cases compute-sanitizer runs, on the native CPU kernels: their calls and checks are right."""
    pytest.importorskip("sschsr_deploy._C", reason="native extension not built")
    res = subprocess.run([sys.executable, str(ROOT / gs.SANITIZER_CASES), "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "gpu_sanitizer_cases: ok (24 cases on cpu)" in res.stdout
