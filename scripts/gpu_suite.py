#!/usr/bin/env python3
"""The one-call GPU suite: on a lent GPU machine, show in one short run whether the CUDA and Triton code works.

Nobody has run this code on a GPU before, and a machine is lent for about 14 minutes in all, at most 9 minutes per
command, without network. So the suite is a list of stages that can run separately, each bounded in time, writing its
results as soon as it ends, and a verdict that never passes quietly.

Usage (from the repository root; results go to ``$OUT``, else ``./gpu-results``)::

    python3 scripts/gpu_suite.py                          # every stage, within --budget seconds
    python3 scripts/gpu_suite.py --stages env,build,kernels
    STAGES="build test" bash scripts/gpu_suite.sh         # the older selection (aliases: test, all)
    python3 scripts/gpu_suite.py --dry-run                # or SSCHSR_GPU_SUITE_DRY_RUN=1: check, run nothing
    python3 scripts/gpu_suite.py --list                   # stages, expected times and timeouts

``env`` always runs first (it reads the device: arch for the build, optional packages). Stages that need the native
extension pull in ``build``, which reuses the build left by an earlier call on the same (still warm) machine when its
fingerprint (sources, arch, torch, python) matches and ``native_status()`` confirms CUDA kernels: it always verifies.

Stages, expected time on one H200 with 16 cores, and the default wall-clock timeout of each (subprocesses are killed
with their process group at the timeout; pytest stages also bound each test, see ``gpu_suite_pytest.py``):

==============  =====================================================================  ==========  =======  ========
stage           what                                                                   expected    timeout  per test
==============  =====================================================================  ==========  =======  ========
env             nvidia-smi; torch / CUDA / triton versions, device, free memory        10 s        60 s     -
build           pip install --no-build-isolation --no-deps -e . for the GPU present    60-120 s    420 s    -
                (MAX_JOBS, SSCHSR_CUDA_ARCHS); native_status() must show CUDA kernels  5 s reused
kernels         pytest -m gpu: CUDA kernel tests and Triton GPU tests                  120-240 s   420 s    120 s
triton-configs  every Triton autotune configuration forced once vs the reference       60-120 s    300 s    150 s
cuda-graph      capture + replay of each op and of the model (native, Triton) vs       60-150 s    300 s    240 s
                eager; the pipeline's CUDA stream test
determinism     bitwise repeats of every kernel; >2**31-element cases (int64)          30-90 s     240 s    150 s
sanitizer       compute-sanitizer memcheck / racecheck / synccheck, small cases        90-200 s    420 s    -
tensorrt        pytest -m tensorrt (not run without TensorRT)                          0 / 300 s   420 s    300 s
ort-cuda        ONNX Runtime CUDA provider test (not run without the provider)         0 / 60 s    240 s    180 s
bench           bench_deform_conv / bench_spectral_attention / bench_patch_match --quick        60-150 s    360 s    -
==============  =====================================================================  ==========  =======  ========

All of it is about 9-13 minutes including the build: more than one 9-minute command. ``--budget`` (default 510 s)
bounds one call: a stage gets at most what is left, a stage that no longer fits is reported "not run (out of time)"
and fails the verdict (give the device command a limit ~30 s above the budget). Run it in two or three calls, most
valuable first::

    python3 scripts/gpu_suite.py --stages env,build,kernels,triton-configs          # ~4-7 min
    python3 scripts/gpu_suite.py --stages cuda-graph,determinism,sanitizer          # ~3-6 min (+ build if cold)
    python3 scripts/gpu_suite.py --stages bench,tensorrt,ort-cuda                   # ~1-3 min (+ build if cold)

The later calls reuse the build only while the machine is still warm (it goes back after a short idle time: issue
the next call at once); on a fresh machine their ``build`` stage rebuilds (1-2 min), which the budget accounts for.

Outputs in ``$OUT``: ``gpu_suite.jsonl`` (one line appended per stage as it ends), ``stages/<stage>.json``,
``summary.json`` (rewritten after every stage, ``complete`` true at the end), ``logs/``, ``junit/``, ``progress/``
and ``bench/`` (benchmark JSON + PNG; the committed ``benchmarks/results/`` is never written).

Verdict: PASS only if every selected stage passed or was "not run" for a missing optional dependency (TensorRT,
onnxruntime-gpu / CUDAExecutionProvider, onnx, compute-sanitizer). It FAILS when the extension did not build or lacks
CUDA kernels, when CUDA is unavailable, when Triton runs in the interpreter, when a stage fails or times out or runs
out of budget, when a pytest stage runs no test, or when a test is skipped for any reason but a missing optional
package (skip reasons are read from the junit XML; ``OPTIONAL`` below lists the allowed ones).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
PLUGIN = "gpu_suite_pytest"  # scripts/gpu_suite_pytest.py, importable through PYTHONPATH
JSON_MARK = "GPU_SUITE_JSON "
PER_TEST_TIMEOUT = "per-test timeout"  # in the failure message of gpu_suite_pytest's soft bound
DEFAULT_BUDGET_S = 510.0  # one device command may run 9 minutes: leave room for start-up and the copy back
RESERVE_S = 5.0  # kept back from the budget for writing results


# ---------------------------------------------------------------------------------------------------------------------
# Optional dependencies: the only reasons a stage may be "not run" or a GPU test skipped without failing the suite.


@dataclass(frozen=True)
class OptionalDep:
    label: str  # shown as "not run (no <label>)"
    skip_patterns: tuple[str, ...]  # regexes: a skip reason matching one names this missing package


OPTIONAL: dict[str, OptionalDep] = {
    "tensorrt": OptionalDep("TensorRT", (r"needs TensorRT", r"TensorRT is not installed",
                                         r"could not import 'tensorrt'", r"No module named 'tensorrt'")),
    "onnxruntime-gpu": OptionalDep("onnxruntime-gpu (CUDAExecutionProvider)", (
        r"no CUDAExecutionProvider", r"could not import 'onnxruntime'", r"No module named 'onnxruntime'")),
    "onnx": OptionalDep("onnx / onnxscript", (r"could not import 'onnx'", r"could not import 'onnxscript'",
                                              r"No module named 'onnx'", r"No module named 'onnxscript'")),
    "compute-sanitizer": OptionalDep("compute-sanitizer", ()),
}


def allowed_skip(reason: str) -> str | None:
    """The optional dependency a skip reason names as missing, or None (then the skip fails the suite)."""
    for key, dep in OPTIONAL.items():
        if any(re.search(p, reason) for p in dep.skip_patterns):
            return key
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class StageDef:
    name: str
    timeout: float  # wall-clock seconds for the whole stage
    expected: str  # on an H200 (documentation, --list)
    what: str
    per_test: float = 0.0  # pytest stages: per-test bound
    min_seconds: float = 20.0  # not started with less than this left in the budget
    needs_native: bool = False  # pulls in the build stage
    files: tuple[str, ...] = ()  # pytest stages: test files
    marker: str = ""  # pytest stages: -m expression


STAGES: dict[str, StageDef] = {s.name: s for s in (
    StageDef("env", 60, "10 s", "nvidia-smi, versions, device, free memory", min_seconds=10),
    StageDef("build", 420, "60-120 s (5 s reused)", "pip install -e . for the GPU present; verify CUDA kernels",
             min_seconds=30),
    StageDef("kernels", 420, "120-240 s", "CUDA kernel + Triton GPU tests", per_test=120, needs_native=True,
             files=("tests/test_deform_conv_gpu.py", "tests/test_spectral_attention_gpu.py",
                    "tests/test_patch_match_gpu.py", "tests/test_deform_conv_triton.py",
                    "tests/test_spectral_attention_triton.py", "tests/test_patch_match_triton.py"),
             marker="gpu and not tensorrt"),
    StageDef("triton-configs", 300, "60-120 s", "every Triton autotune configuration vs the reference", per_test=150,
             files=("tests/test_gpu_suite_triton_configs.py",), marker="gpu"),
    StageDef("cuda-graph", 300, "60-150 s", "CUDA graph capture/replay (native, Triton) + pipeline streams",
             per_test=240, needs_native=True, files=("tests/test_cuda_graph_gpu.py", "tests/test_pipeline.py"),
             marker="gpu and not tensorrt"),
    StageDef("determinism", 240, "30-90 s", "bitwise repeats, >2**31-element cases", per_test=150, needs_native=True,
             files=("tests/test_determinism_gpu.py",), marker="gpu"),
    StageDef("sanitizer", 420, "90-200 s", "compute-sanitizer memcheck/racecheck/synccheck", needs_native=True,
             min_seconds=60),
    StageDef("tensorrt", 420, "0 / 300 s", "TensorRT engine tests", per_test=300, min_seconds=60,
             files=("tests/test_tensorrt.py", "tests/test_runtime_backends.py"), marker="tensorrt"),
    StageDef("ort-cuda", 240, "0 / 60 s", "ONNX Runtime CUDA provider tests", per_test=180,
             files=("tests/test_runtime_backends.py",), marker="gpu and not tensorrt"),
    StageDef("bench", 360, "60-150 s", "kernel benchmarks --quick with same-run baselines", needs_native=True,
             min_seconds=60),
)}
STAGE_ORDER = tuple(STAGES)
ALIASES = {
    "all": STAGE_ORDER,
    "test": ("kernels", "triton-configs", "cuda-graph", "determinism", "tensorrt", "ort-cuda"),
    "tests": ("kernels", "triton-configs", "cuda-graph", "determinism", "tensorrt", "ort-cuda"),
}
BENCHMARKS = (("benchmarks/bench_deform_conv.py", "deform_conv_cuda.json"),
              ("benchmarks/bench_spectral_attention.py", "spectral_attention_cuda.json"),
              ("benchmarks/bench_patch_match.py", "patch_match_cuda.json"))
BENCH_STEP_TIMEOUT = 200.0
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
SANITIZER_STEP_TIMEOUT = 150.0
SANITIZER_CASES = "scripts/gpu_sanitizer_cases.py"
NATIVE_OPS = ("modulated_deform_conv2d", "patch_match", "spectral_attention", "gram_and_norms")


def resolve_stages(spec: str | Iterable[str] | None) -> list[str]:
    """Stage names in run order from ``"a,b"`` / ``"a b"`` / aliases; ``env`` first, ``build`` when needed."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        words: list[str] = list(STAGE_ORDER)
    elif isinstance(spec, str):
        words = [w for w in re.split(r"[\s,]+", spec.strip()) if w]
    else:
        words = list(spec)
    chosen: set[str] = set()
    for w in words:
        if w in ALIASES:
            chosen.update(ALIASES[w])
        elif w in STAGES:
            chosen.add(w)
        else:
            raise ValueError(f"unknown stage {w!r}; stages: {', '.join(STAGE_ORDER)}; aliases: {', '.join(ALIASES)}")
    chosen.add("env")
    if any(STAGES[s].needs_native for s in chosen):
        chosen.add("build")
    return [s for s in STAGE_ORDER if s in chosen]


def cuda_arch(capability: Iterable[int]) -> str:
    """``SSCHSR_CUDA_ARCHS`` entry for a compute capability, as setup.py reads it: (9, 0) -> "90"."""
    major, minor = (int(v) for v in capability)
    return f"{major}{minor}"


# ---------------------------------------------------------------------------------------------------------------------
# Commands and their runner (replaced by a fake in tests/test_gpu_suite.py)


@dataclass
class Step:
    stage: str
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    junit: Path | None = None
    progress: Path | None = None
    outputs: list[Path] = field(default_factory=list)  # files the step must produce
    requires: list[Path] = field(default_factory=list)  # repository files it reads (checked by the dry run)

    def shell(self) -> str:
        """The command as a shell line; the probe snippets passed with ``-c`` are shown by name."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if k != "PYTHONPATH")
        words = [f"<{SNIPPET_NAMES[a]}>" if a in SNIPPET_NAMES else shlex.quote(a) for a in self.argv]
        return (env + " " if env else "") + " ".join(words)


@dataclass
class CommandResult:
    rc: int
    seconds: float
    timed_out: bool = False
    output: str = ""  # the tail of stdout + stderr


class Runner(Protocol):
    def __call__(self, step: Step, timeout: float, log: Path) -> CommandResult: ...


def subprocess_runner(step: Step, timeout: float, log: Path) -> CommandResult:
    """Run ``step`` in its own process group, output to ``log``; kill the whole group at ``timeout``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **step.env}
    t0 = time.monotonic()
    timed_out = False
    with log.open("w", encoding="utf-8", errors="replace") as f:
        f.write(f"+ {step.shell()}\n")
        f.flush()
        try:
            proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            f.write(f"cannot start: {exc}\n")
            return CommandResult(127, time.monotonic() - t0, False, f"cannot start {step.argv[0]}: {exc}")
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.returncode if proc.returncode is not None else -9
    seconds = time.monotonic() - t0
    if timed_out:
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n[gpu_suite] killed after {seconds:.0f} s (timeout {timeout:.0f} s)\n")
    return CommandResult(rc, seconds, timed_out, tail(log))


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, chars: int = 20000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode("utf-8", errors="replace")


def find_json(output: str) -> dict | None:
    """The last ``GPU_SUITE_JSON {...}`` line a probe printed."""
    found = None
    for line in output.splitlines():
        if line.startswith(JSON_MARK):
            try:
                found = json.loads(line[len(JSON_MARK):])
            except json.JSONDecodeError:
                continue
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Test outcomes: junit XML first, the plugin's progress log when pytest died before writing it


@dataclass
class Outcomes:
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # node ids (failures and errors)
    skipped_allowed: dict[str, int] = field(default_factory=dict)  # optional dep -> count
    skipped_bad: dict[str, list[str]] = field(default_factory=dict)  # reason -> node ids
    xfailed: int = 0
    timeouts: list[str] = field(default_factory=list)  # failed at the plugin's per-test bound
    running: str | None = None  # the test that had started but not finished when the process ended
    source: str = "junit"

    @property
    def ran(self) -> int:
        return self.passed + len(self.failed)


def _classify_skip(counts: Outcomes, nodeid: str, reason: str) -> None:
    dep = allowed_skip(reason)
    if dep is not None:
        counts.skipped_allowed[dep] = counts.skipped_allowed.get(dep, 0) + 1
    else:
        counts.skipped_bad.setdefault(reason.strip() or "(no reason given)", []).append(nodeid)


def parse_junit(path: Path) -> Outcomes:
    """Outcome of every testcase in a pytest junit XML (``<skipped message=...>`` carries the skip reason)."""
    counts = Outcomes(source="junit")
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        nodeid = "::".join(x for x in (case.get("classname", ""), case.get("name", "")) if x)
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts.failed.append(nodeid)
            if PER_TEST_TIMEOUT in (bad.get("message") or "") + (bad.text or ""):
                counts.timeouts.append(nodeid)
            continue
        skipped = case.find("skipped")
        if skipped is not None:
            if skipped.get("type") == "pytest.xfail":
                counts.xfailed += 1
            else:
                _classify_skip(counts, nodeid, skipped.get("message") or (skipped.text or ""))
            continue
        counts.passed += 1
    return counts


def parse_progress(path: Path) -> Outcomes:
    """Outcomes from ``gpu_suite_pytest``'s JSON lines, for a pytest killed before writing its junit XML."""
    counts = Outcomes(source="progress")
    started: dict[str, bool] = {}
    outcome: dict[str, tuple[str, str, bool]] = {}  # nodeid -> (outcome, reason, xfail) of the decisive phase
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return counts
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        ev, nodeid = rec.get("event"), rec.get("nodeid", "")
        if ev == "start":
            started[nodeid] = False
        elif ev == "finish":
            started[nodeid] = True
        elif ev == "report":
            prev = outcome.get(nodeid)
            now = (rec.get("outcome", ""), rec.get("reason", ""), bool(rec.get("xfail")))
            if prev is None or prev[0] == "passed" or now[0] == "failed":
                outcome[nodeid] = now
        elif ev == "collect":
            if rec.get("outcome") == "failed":
                counts.failed.append(nodeid or "(collection)")
            elif rec.get("outcome") == "skipped":
                _classify_skip(counts, nodeid, rec.get("reason", ""))
    for nodeid, (out, reason, xfail) in outcome.items():
        if out == "failed":
            counts.failed.append(nodeid)
            if PER_TEST_TIMEOUT in reason:
                counts.timeouts.append(nodeid)
        elif out == "skipped":
            if xfail:
                counts.xfailed += 1
            else:
                _classify_skip(counts, nodeid, reason)
        elif out == "passed" and started.get(nodeid, True):
            counts.passed += 1
    unfinished = [n for n, done in started.items() if not done]
    if unfinished:  # the process ended inside this test: killed at a time bound, or crashed
        counts.running = unfinished[-1]
        if counts.running not in counts.failed:
            counts.failed.append(counts.running)
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class StageResult:
    stage: str
    status: str  # ok | fail | timeout | optional (not run: missing optional dep) | not-run (counts as a failure)
    detail: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "timeout", "not-run")

    def short(self) -> str:
        if self.status == "ok":
            return f"{self.stage} {self.detail or 'ok'}"
        if self.status == "optional":
            return f"{self.stage} not run ({self.detail})"
        if self.status == "not-run":
            return f"{self.stage} NOT RUN ({self.detail})"
        word = "TIMEOUT" if self.status == "timeout" else "FAIL"
        return f"{self.stage} {word} ({'; '.join(self.problems) or self.detail})"


def verdict(results: list[StageResult]) -> str:
    return "FAIL" if not results or any(r.failed for r in results) else "PASS"


def summary_line(results: list[StageResult], complete: bool = True) -> str:
    v = verdict(results) if complete else "INCOMPLETE"
    return f"gpu_suite: {v} — " + ", ".join(r.short() for r in results)


# ---------------------------------------------------------------------------------------------------------------------
# The suite


ENV_PROBE = r"""
import importlib.util, json, os, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"), "cuda_home": os.environ.get("CUDA_HOME")}
import torch
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            device_count=torch.cuda.device_count())
if info["cuda_available"]:
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                sm_count=props.multi_processor_count, mem_free_gib=round(free / 2**30, 1),
                mem_total_gib=round(total / 2**30, 1))
try:
    import triton
    info["triton"] = triton.__version__
except ImportError as exc:
    info["triton"] = None
    info["triton_error"] = str(exc)
from sschsr_deploy.kernels import triton_interpreting
info["triton_interpreting"] = bool(triton_interpreting())
info["optional"] = {m: importlib.util.find_spec(m) is not None
                    for m in ("tensorrt", "onnxruntime", "onnx", "onnxscript", "torchvision", "matplotlib",
                              "pytest_timeout")}
if info["optional"]["onnxruntime"]:
    try:
        import onnxruntime
        info["ort_version"] = onnxruntime.__version__
        info["ort_providers"] = list(onnxruntime.get_available_providers())
    except Exception as exc:  # a broken install is reported, not fatal here
        info["ort_error"] = str(exc)
print("GPU_SUITE_JSON " + json.dumps(info))
"""

BUILD_VERIFY = r"""
import glob, json
import torch
import sschsr_deploy.ops
from sschsr_deploy.ops import _backend
status = _backend.native_status()
status["cuda_kernels"] = {op: bool(_backend.has_kernel(op, "cuda"))
                          for op in ("modulated_deform_conv2d", "patch_match", "spectral_attention", "gram_and_norms")}
status["so"] = sorted(glob.glob("sschsr_deploy/_C*.so"))
status["torch"] = torch.__version__
print("GPU_SUITE_JSON " + json.dumps(status))
"""
SNIPPET_NAMES = {ENV_PROBE: "ENV_PROBE", BUILD_VERIFY: "BUILD_VERIFY"}


class Suite:
    """Plans and runs the stages; every outside effect goes through ``runner``, ``which`` and ``clock``."""

    def __init__(self, out: Path, *, runner: Runner = subprocess_runner, python: str = sys.executable,
                 budget: float = DEFAULT_BUDGET_S, which: Callable[[str], str | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, echo: Callable[[str], None] = print,
                 root: Path = ROOT) -> None:
        self.out = out
        self.runner = runner
        self.python = python
        self.budget = budget
        self.which = which or _which
        self.clock = clock
        self.echo = echo
        self.root = root
        self.start = clock()
        self.env_info: dict[str, Any] = {}
        self.results: list[StageResult] = []

    # ---- time
    def left(self) -> float:
        if self.budget <= 0:
            return float("inf")
        return self.budget - RESERVE_S - (self.clock() - self.start)

    # ---- plans: every command a stage may run, resolved (used by run and by the dry run)
    def pytest_step(self, stage: StageDef) -> Step:
        junit = self.out / "junit" / f"{stage.name}.xml"
        progress = self.out / "progress" / f"{stage.name}.jsonl"
        argv = [self.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", PLUGIN,
                f"--suite-test-timeout={stage.per_test:g}", f"--suite-progress={progress}",
                f"--junitxml={junit}", "-m", stage.marker, *stage.files]
        return Step(stage.name, "pytest", argv, stage.timeout, env=self.pytest_env(), junit=junit, progress=progress,
                    requires=[self.root / f for f in stage.files] + [SCRIPTS / f"{PLUGIN}.py"])

    def pytest_env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": str(SCRIPTS) + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}

    def sanitizer_path(self) -> str | None:
        """compute-sanitizer on PATH, else where CUDA toolkits put it."""
        found = self.which("compute-sanitizer")
        if found:
            return found
        return next((str(p) for p in sanitizer_locations() if p.is_file()), None)

    def build_env(self, arch: str) -> dict[str, str]:
        return {"SSCHSR_CUDA_ARCHS": arch, "SSCHSR_BUILD_CUDA": "1",
                "MAX_JOBS": os.environ.get("MAX_JOBS") or str(max(1, min(16, os.cpu_count() or 1))),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}

    def plan(self, name: str, arch: str = "90") -> list[Step]:
        s = STAGES[name]
        if name == "env":
            steps = []
            smi = self.which("nvidia-smi")
            if smi:
                steps.append(Step(name, "nvidia-smi", [smi], 30))
            steps.append(Step(name, "probe", [self.python, "-c", ENV_PROBE], 90, env={"PYTHONUNBUFFERED": "1"}))
            return steps
        if name == "build":
            return [Step(name, "pip", [self.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                                       "--no-index", "-e", "."], s.timeout, env=self.build_env(arch),
                         requires=[self.root / "setup.py", self.root / "pyproject.toml"]),
                    Step(name, "verify", [self.python, "-c", BUILD_VERIFY], 90)]
        if name == "sanitizer":
            tool = self.sanitizer_path() or "compute-sanitizer"
            cases = [self.python, SANITIZER_CASES]
            env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "PYTHONUNBUFFERED": "1"}  # every allocation its own
            steps = [Step(name, "plain", cases, 120, env={"PYTHONUNBUFFERED": "1"},
                          requires=[self.root / SANITIZER_CASES])]
            for t in SANITIZER_TOOLS:
                flt = [] if t == "memcheck" else ["--kernel-name", "kns=sschsr"]  # our kernels only (namespace)
                steps.append(Step(name, t, [tool, "--tool", t, "--error-exitcode", "1", *flt, *cases],
                                  SANITIZER_STEP_TIMEOUT, env=env))
            return steps
        if name == "bench":
            out = self.out / "bench"
            return [Step(name, Path(script).stem, [self.python, script, "--device", "cuda", "--quick"],
                         BENCH_STEP_TIMEOUT, env={"SSCHSR_BENCH_RESULTS_DIR": str(out), "PYTHONUNBUFFERED": "1"},
                         outputs=[out / result], requires=[self.root / script, self.root / "benchmarks/common.py"])
                    for script, result in BENCHMARKS]
        return [self.pytest_step(s)]

    # ---- running
    def exec(self, step: Step, deadline: float) -> tuple[CommandResult | None, dict]:
        """Run one step within the stage deadline and the budget; (None, record) when no time is left for it."""
        allowed = min(step.timeout, deadline - self.clock(), self.left())
        log = self.out / "logs" / f"{step.stage}-{step.name}.log"
        record: dict[str, Any] = {"name": step.name, "command": step.shell(), "log": str(log.relative_to(self.out))}
        if allowed < 3:
            record.update(rc=None, skipped="no time left")
            return None, record
        for p in (step.junit, step.progress):
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.unlink(missing_ok=True)
        shown = step.shell()
        self.echo(f"+ [{step.stage}] {shown if len(shown) < 400 else shown[:400] + ' …'}")
        res = self.runner(step, allowed, log)
        record.update(rc=res.rc, seconds=round(res.seconds, 1), timed_out=res.timed_out, timeout=round(allowed))
        self.echo(f"  [{step.stage}/{step.name}] rc={res.rc} in {res.seconds:.0f} s"
                  + (f" — TIMEOUT (limit {allowed:.0f} s)" if res.timed_out else ""))
        return res, record

    def run(self, names: list[str]) -> list[StageResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_suite.jsonl").touch()
        for name in names:
            result = self.run_stage(name)
            self.results.append(result)
            self.record(result)
            self.echo(f"[{name}] {result.short()} ({result.seconds:.0f} s)")
            if result.failed:
                self.echo_failure_tail(result)
        self.write_summary(complete=True)
        return self.results

    def run_stage(self, name: str) -> StageResult:
        s = STAGES[name]
        t0 = self.clock()
        if name != "env" and self.env_info and not self.env_info.get("cuda_available"):
            return StageResult(name, "not-run", "no CUDA device")
        left = self.left()
        if left < s.min_seconds:
            return StageResult(name, "not-run", f"out of time: {max(0.0, left):.0f} s left of the budget")
        deadline = self.clock() + s.timeout
        try:
            result = getattr(self, "stage_" + name.replace("-", "_"))(s, deadline)
        except Exception as exc:  # a bug in the suite itself must not hide the other stages
            result = StageResult(name, "fail", problems=[f"suite error: {type(exc).__name__}: {exc}"])
        result.seconds = self.clock() - t0
        return result

    def record(self, result: StageResult) -> None:
        data = asdict(result)
        data["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with (self.out / "gpu_suite.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(data) + "\n")
            f.flush()
            os.fsync(f.fileno())
        (self.out / "stages").mkdir(exist_ok=True)
        (self.out / "stages" / f"{result.stage}.json").write_text(json.dumps(data, indent=2) + "\n")
        self.write_summary(complete=False)

    def write_summary(self, complete: bool) -> None:
        data = {"verdict": verdict(self.results) if complete else "INCOMPLETE", "complete": complete,
                "line": summary_line(self.results, complete), "budget_s": self.budget,
                "elapsed_s": round(self.clock() - self.start, 1), "env": self.env_info,
                "stages": [asdict(r) for r in self.results]}
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.out / "summary.json")

    def echo_failure_tail(self, result: StageResult, lines: int = 25) -> None:
        for st in result.steps[::-1]:
            if st.get("rc") not in (0, None) or st.get("timed_out"):
                text = tail(self.out / st["log"], 6000).splitlines()[-lines:]
                self.echo(f"  --- last lines of {st['log']}:")
                for line in text:
                    self.echo("  | " + line)
                return

    # ---- stages
    def stage_env(self, s: StageDef, deadline: float) -> StageResult:
        r = StageResult(s.name, "ok")
        info: dict[str, Any] = {}
        for step in self.plan("env"):
            res, rec = self.exec(step, deadline)
            r.steps.append(rec)
            if res is None:
                r.problems.append(f"{step.name}: no time left")
                continue
            if step.name == "nvidia-smi" and res.rc != 0:
                info["nvidia_smi"] = f"rc={res.rc}"  # informative only: torch decides below
            if step.name == "probe":
                if res.timed_out:
                    r.problems.append("device probe timed out")
                    r.status = "timeout"
                probe = find_json(res.output)
                if probe is None:
                    r.problems.append(f"device probe printed no result (rc={res.rc})")
                else:
                    info.update(probe)
        if not self.which("nvidia-smi"):
            info["nvidia_smi"] = "not found"
        self.env_info = info
        r.info = info
        if info:
            if not info.get("cuda_available"):
                r.problems.append("CUDA is not available to torch")
            if not info.get("torch_cuda"):
                r.problems.append("torch is a CPU-only build")
            if info.get("triton_interpreting") or str(info.get("TRITON_INTERPRET", "") or "").lower() in (
                    "1", "true", "on", "yes"):
                r.problems.append("Triton runs in the interpreter (TRITON_INTERPRET is set)")
            if not info.get("triton"):
                r.problems.append("triton is not importable")
        if r.problems and r.status == "ok":
            r.status = "fail"
        cap = info.get("capability")
        r.detail = (f"{info.get('device', '?')}, sm_{cuda_arch(cap) if cap else '?'}, torch {info.get('torch')}, "
                    f"triton {info.get('triton')}")
        return r

    def arch(self) -> str | None:
        if os.environ.get("SSCHSR_CUDA_ARCHS"):
            return os.environ["SSCHSR_CUDA_ARCHS"]
        cap = self.env_info.get("capability")
        return cuda_arch(cap) if cap else None

    def fingerprint(self, arch: str) -> str:
        h = hashlib.sha256()
        files = sorted(p for p in (self.root / "csrc").rglob("*") if p.is_file())
        files += [self.root / "setup.py", self.root / "pyproject.toml"]
        for p in files:
            h.update(str(p.relative_to(self.root)).encode())
            h.update(p.read_bytes() if p.exists() else b"")
        h.update(f"{arch}|{self.env_info.get('torch')}|{self.env_info.get('python')}|{self.python}".encode())
        return h.hexdigest()

    def verify_build(self, step: Step, deadline: float, r: StageResult) -> tuple[bool, list[str]]:
        res, rec = self.exec(step, deadline)
        r.steps.append(rec)
        if res is None:
            return False, ["no time left to verify the build"]
        status = find_json(res.output)
        if status is None:
            return False, [f"verification printed no result (rc={res.rc})"]
        r.info["native_status"] = status
        why = []
        if not status.get("built"):
            why.append(f"native extension not importable: {status.get('error')}")
        elif not status.get("cuda"):
            why.append("native extension built without CUDA (native_status()['cuda'] is False)")
        missing = [op for op, ok in (status.get("cuda_kernels") or {}).items() if not ok]
        if status.get("built") and (missing or not status.get("cuda_kernels")):
            why.append(f"no CUDA kernel registered for {', '.join(missing) or 'the ops'}")
        return not why, why

    def stage_build(self, s: StageDef, deadline: float) -> StageResult:
        r = StageResult(s.name, "ok")
        arch = self.arch()
        if arch is None:
            return StageResult(s.name, "fail", problems=["no CUDA device capability to build for"])
        pip, verify = self.plan("build", arch)
        reuse_check = Step(s.name, "verify-existing", verify.argv, verify.timeout)
        stamp = self.root / "build" / "gpu_suite_build.json"
        fp = self.fingerprint(arch)
        r.info.update(arch=arch, fingerprint=fp[:16])
        try:
            previous = json.loads(stamp.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous == fp and list(self.root.glob("sschsr_deploy/_C*.so")):
            ok, why = self.verify_build(reuse_check, deadline, r)
            if ok:
                r.detail = f"ok (reused the build of an earlier call, sm_{arch})"
                return r
            r.info["reuse_rejected"] = why
        res, rec = self.exec(pip, deadline)
        r.steps.append(rec)
        if res is None:
            return StageResult(s.name, "not-run", "out of time before the build", steps=r.steps, info=r.info)
        if res.timed_out:
            r.status = "timeout"
            r.problems.append(f"pip install timed out after {res.seconds:.0f} s")
            return r
        if res.rc != 0:
            r.status = "fail"
            r.problems.append(f"pip install failed (rc={res.rc}, see logs/build-pip.log)")
            return r
        ok, why = self.verify_build(verify, deadline, r)
        if not ok:
            r.status = "fail"
            r.problems.extend(why)
            return r
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": fp, "arch": arch}) + "\n")
        r.detail = f"ok (built for sm_{arch} in {res.seconds:.0f} s)"
        return r

    def run_pytest(self, s: StageDef, deadline: float) -> StageResult:
        step = self.pytest_step(s)
        res, rec = self.exec(step, deadline)
        r = StageResult(s.name, "ok", steps=[rec])
        if res is None:
            return StageResult(s.name, "not-run", "out of time", steps=[rec])
        return judge_pytest(r, res, step)

    stage_kernels = run_pytest
    stage_triton_configs = run_pytest
    stage_cuda_graph = run_pytest
    stage_determinism = run_pytest

    def stage_tensorrt(self, s: StageDef, deadline: float) -> StageResult:
        if not (self.env_info.get("optional") or {}).get("tensorrt"):
            return StageResult(s.name, "optional", f"no {OPTIONAL['tensorrt'].label}")
        return self.run_pytest(s, deadline)

    def stage_ort_cuda(self, s: StageDef, deadline: float) -> StageResult:
        opt = self.env_info.get("optional") or {}
        if not (opt.get("onnx") and opt.get("onnxscript")):
            return StageResult(s.name, "optional", f"no {OPTIONAL['onnx'].label}")
        if "CUDAExecutionProvider" not in (self.env_info.get("ort_providers") or []):
            return StageResult(s.name, "optional", f"no {OPTIONAL['onnxruntime-gpu'].label}")
        return self.run_pytest(s, deadline)

    def stage_sanitizer(self, s: StageDef, deadline: float) -> StageResult:
        if self.sanitizer_path() is None:
            return StageResult(s.name, "optional", f"no {OPTIONAL['compute-sanitizer'].label}")
        r = StageResult(s.name, "ok")
        marker = "gpu_sanitizer_cases: ok"
        clean = []
        for step in self.plan("sanitizer"):
            res, rec = self.exec(step, deadline)
            r.steps.append(rec)
            if res is None:
                r.status = "timeout"
                r.problems.append(f"{step.name}: stage timeout reached before it ran")
                continue
            errors = re.findall(r"ERROR SUMMARY: (\d+) error", res.output)
            if errors:
                rec["error_summary"] = int(errors[-1])
            if res.timed_out:
                r.status = "timeout"
                r.problems.append(f"{step.name} timed out after {res.seconds:.0f} s")
            elif res.rc != 0 or marker not in res.output:
                r.status = "fail"
                r.problems.append(f"{step.name}: rc={res.rc}" + (f", {errors[-1]} errors" if errors else "")
                                  + ("" if marker in res.output else ", cases did not finish"))
                if step.name == "plain":
                    r.problems.append("the cases fail without the sanitizer: tools not run")
                    break
            elif step.name != "plain":
                clean.append(step.name)
        if r.status == "ok":
            r.detail = f"{' / '.join(clean)} clean"
        return r

    def stage_bench(self, s: StageDef, deadline: float) -> StageResult:
        r = StageResult(s.name, "ok")
        done = []
        for step in self.plan("bench"):
            step.outputs[0].unlink(missing_ok=True)
            res, rec = self.exec(step, deadline)
            r.steps.append(rec)
            if res is None:
                r.status = "timeout"
                r.problems.append(f"{step.name}: stage timeout reached before it ran")
                continue
            if res.timed_out:
                r.status = "timeout"
                r.problems.append(f"{step.name} timed out after {res.seconds:.0f} s")
                continue
            why = bench_problem(res, step.outputs[0])
            if why:
                r.status = "fail" if r.status == "ok" else r.status
                r.problems.append(f"{step.name}: {why}")
            else:
                done.append(step.name)
        r.detail = f"{len(done)}/{len(BENCHMARKS)} benchmarks written to bench/"
        return r


def bench_problem(res: CommandResult, result: Path) -> str | None:
    if res.rc != 0:
        return f"rc={res.rc}"
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError) as exc:
        return f"no readable result {result.name} ({type(exc).__name__})"
    if not data.get("configs"):
        return f"{result.name} holds no configurations"
    return None


def judge_pytest(r: StageResult, res: CommandResult, step: Step) -> StageResult:
    """Stage status from pytest's exit status and its junit XML (or the progress log when there is none)."""
    counts: Outcomes | None = None
    if step.junit is not None and step.junit.exists():
        try:
            counts = parse_junit(step.junit)
        except ET.ParseError as exc:
            r.problems.append(f"unreadable junit XML: {exc}")
    if counts is None and step.progress is not None:
        counts = parse_progress(step.progress)
    counts = counts or Outcomes(source="none")
    r.info["counts"] = asdict(counts)
    if res.timed_out:
        r.status = "timeout"
        where = f" in {counts.running}" if counts.running else ""
        r.problems.append(f"timeout after {res.seconds:.0f} s{where}")
    elif counts.running:
        r.problems.append(f"pytest died during {counts.running} (rc={res.rc}; per-test bound or crash)")
    bad_fail = [n for n in counts.failed if n != counts.running]
    if bad_fail:
        r.problems.append(f"{len(bad_fail)} failed: {', '.join(bad_fail[:3])}{' …' if len(bad_fail) > 3 else ''}")
    if counts.timeouts:
        r.problems.append(f"{len(counts.timeouts)} hit the per-test timeout: {', '.join(counts.timeouts[:3])}")
    for reason, ids in counts.skipped_bad.items():
        r.problems.append(f"{len(ids)} skipped: {reason}")
    if counts.ran == 0 and not counts.skipped_bad and not counts.skipped_allowed and not r.problems:
        r.problems.append(f"no tests ran (rc={res.rc})")
    if res.rc not in (0,) and not r.problems:
        r.problems.append(f"pytest exit status {res.rc}")
    allowed = ", ".join(f"{n} skipped (no {OPTIONAL[k].label})" for k, n in counts.skipped_allowed.items())
    if r.problems:
        if r.status == "ok":
            r.status = "fail"
        return r
    if counts.ran == 0 and counts.skipped_allowed:
        r.status = "optional"
        r.detail = "no " + " / ".join(OPTIONAL[k].label for k in counts.skipped_allowed)
        return r
    r.detail = f"{counts.passed} passed" + (f", {allowed}" if allowed else "") + (
        f", {counts.xfailed} xfailed" if counts.xfailed else "")
    return r


def _which(name: str) -> str | None:
    return shutil.which(name)


def sanitizer_locations() -> list[Path]:
    """Where CUDA toolkits install compute-sanitizer when it is not on PATH (``bin/`` or its own folder)."""
    homes = dict.fromkeys([os.environ.get("CUDA_HOME") or "/usr/local/cuda", "/usr/local/cuda"])
    return [Path(h) / sub for h in homes for sub in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer")]


# ---------------------------------------------------------------------------------------------------------------------
# Dry run: resolve and check every command without GPU work


def dry_run(suite: Suite, names: list[str]) -> int:
    """Print every stage's commands; check files, tools, snippets, test collection and GPU-test coverage."""
    errors: list[str] = []
    echo = suite.echo
    arch = os.environ.get("SSCHSR_CUDA_ARCHS") or "90 (from the device's capability at run time; H200: 90)"
    echo(f"gpu_suite dry run: stages {', '.join(names)}; OUT={suite.out}; budget {suite.budget:g} s; "
         f"python {suite.python}")
    for snippet_name, code in (("ENV_PROBE", ENV_PROBE), ("BUILD_VERIFY", BUILD_VERIFY)):
        try:
            compile(code, snippet_name, "exec")
        except SyntaxError as exc:
            errors.append(f"{snippet_name} does not compile: {exc}")
    pytest_files: dict[str, StageDef] = {}
    for name in names:
        s = STAGES[name]
        echo(f"\n[{name}] {s.what} — expected {s.expected}, timeout {s.timeout:g} s"
             + (f", per test {s.per_test:g} s" if s.per_test else ""))
        if name == "tensorrt":
            echo("  runs only when `import tensorrt` works (else: not run, no TensorRT)")
        if name == "ort-cuda":
            echo("  runs only when onnx, onnxscript and onnxruntime with CUDAExecutionProvider are present")
        if name == "build":
            echo(f"  arch SSCHSR_CUDA_ARCHS={arch}; skips pip when build/gpu_suite_build.json matches the sources "
                 "and the verification passes")
        if name == "sanitizer":
            tool = suite.sanitizer_path()
            echo(f"  compute-sanitizer: {tool or 'not found here (stage: not run, no compute-sanitizer)'}")
        for step in suite.plan(name, "90"):
            echo(f"  $ {step.shell()}   (timeout {step.timeout:g} s)")
            for p in step.requires:
                if not p.exists():
                    errors.append(f"{name}/{step.name}: missing {p.relative_to(suite.root)}")
            if step.outputs:
                echo(f"    must write {', '.join(str(o) for o in step.outputs)}")
        for f in s.files:
            pytest_files.setdefault(f, s)
    nvcc = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "bin" / "nvcc"
    for tool in ("nvidia-smi", "nvcc", "ninja", "cmake"):
        found = suite.which(tool) or (str(nvcc) if tool == "nvcc" and nvcc.exists() else None)
        echo(f"tool {tool}: {found or 'missing here'}")
    common = (suite.root / "benchmarks" / "common.py").read_text()
    if "bench" in names and "SSCHSR_BENCH_RESULTS_DIR" not in common:
        errors.append("benchmarks/common.py does not honour SSCHSR_BENCH_RESULTS_DIR: bench would overwrite "
                      "benchmarks/results/")
    for script, _ in BENCHMARKS:
        text = (suite.root / script).read_text() if (suite.root / script).exists() else ""
        if "bench" in names and not ("--quick" in text and "--device" in text):
            errors.append(f"{script} has no --quick / --device option")
    errors += coverage_problems(suite.root)
    if pytest_files:
        errors += collect_check(suite, pytest_files)
    echo("")
    for e in errors:
        echo(f"dry run ERROR: {e}")
    echo(f"gpu_suite dry run: {'OK' if not errors else 'FAILED'} ({len(names)} stages planned, "
         f"{len(errors)} problems)")
    return 0 if not errors else 1


def coverage_problems(root: Path) -> list[str]:
    """Every test file carrying a gpu / tensorrt mark must belong to a stage, or the GPU never runs it."""
    covered = {f for s in STAGES.values() for f in s.files}
    problems = []
    for path in sorted((root / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*(pytestmark\s*=.*|@pytest)\.?.*\bmark\.(gpu|tensorrt)\b", text, re.MULTILINE):
            rel = str(path.relative_to(root))
            if rel not in covered:
                problems.append(f"{rel} has gpu/tensorrt tests but no stage runs it (add it to STAGES)")
    return problems


def collect_check(suite: Suite, files: dict[str, StageDef]) -> list[str]:
    """One ``pytest --collect-only`` over every stage's files (with the plugin loaded): all must collect tests."""
    progress = suite.out / "progress" / "dry-run-collect.jsonl"
    progress.parent.mkdir(parents=True, exist_ok=True)
    argv = [suite.python, "-m", "pytest", "--collect-only", "-qq", "-p", "no:cacheprovider", "-p", PLUGIN,
            f"--suite-progress={progress}", "--suite-test-timeout=60", "-m", "gpu or tensorrt", *files]
    step = Step("dry-run", "collect", argv, 180, env=suite.pytest_env())
    suite.echo(f"\n$ {step.shell()}")
    res = subprocess_runner(step, 180, suite.out / "logs" / "dry-run-collect.log")
    problems = []
    if res.rc != 0:
        problems.append(f"pytest --collect-only failed (rc={res.rc}): {res.output[-1500:]}")
    per_file: dict[str, int] = dict.fromkeys(files, 0)
    for line in res.output.splitlines():  # -qq prints "tests/test_x.py: 12" per file
        path, _, count = line.rpartition(": ")
        if path in per_file and count.strip().isdigit():
            per_file[path] = int(count)
    for f, n in per_file.items():
        suite.echo(f"  collected {n:4d} gpu/tensorrt tests from {f} (stage {files[f].name})")
        if n == 0:
            problems.append(f"{f} collects no gpu/tensorrt test")
    return problems


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=None,
                    help="comma/space separated stages or aliases (default: $STAGES, else all): "
                         + ", ".join(STAGE_ORDER) + "; aliases " + ", ".join(ALIASES))
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else ./gpu-results)")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds this call may take (default {DEFAULT_BUDGET_S:g}, $SSCHSR_GPU_SUITE_BUDGET; "
                         "0: unbounded)")
    ap.add_argument("--dry-run", action="store_true", help="resolve and check every command, run no GPU work "
                                                           "(also SSCHSR_GPU_SUITE_DRY_RUN=1)")
    ap.add_argument("--list", action="store_true", help="print the stages and exit")
    args = ap.parse_args(argv)
    try:
        sys.stdout.reconfigure(errors="replace", line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    if args.list:
        for s in STAGES.values():
            print(f"{s.name:15s} expected {s.expected:22s} timeout {s.timeout:4.0f} s  {s.what}")
        return 0
    try:
        names = resolve_stages(args.stages if args.stages is not None else os.environ.get("STAGES"))
    except ValueError as exc:
        print(f"gpu_suite: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or (ROOT / "gpu-results")).resolve()
    budget = args.budget if args.budget is not None else float(
        os.environ.get("SSCHSR_GPU_SUITE_BUDGET") or DEFAULT_BUDGET_S)
    python = os.environ.get("PYTHON") or sys.executable
    dry = args.dry_run or os.environ.get("SSCHSR_GPU_SUITE_DRY_RUN", "").lower() in ("1", "true", "yes")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gpu_suite.log").open("a", encoding="utf-8") as log:

        def echo(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        suite = Suite(out, python=python, budget=budget, echo=echo)
        if dry:
            return dry_run(suite, names)
        echo(f"gpu_suite: stages {', '.join(names)}; OUT={out}; budget {budget:g} s")
        results = suite.run(names)
        echo(summary_line(results))
        return 0 if verdict(results) == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
