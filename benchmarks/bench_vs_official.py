"""Ours against the official formulation, every backend × precision, in one run with interleaved rounds (issue #24).

**The official side** is a stand-in, not the official repository's code (which this package never copies or
vendors): our network with every custom operator forced to its plain-PyTorch reference (deformable convolution,
spectral attention, patch matching, Gram / norms), eager fp32, NCHW, no native kernels — i.e. the official
formulation written with standard PyTorch ops, the function the golden fixtures pin down (``tests/test_golden_parity``
reproduces the official model's outputs with it). Why it is a fair stand-in: it runs the same convolutions through the
same oneDNN kernels as the official code (80 % of the time, ``shared/reference/performance-profile.md``); what differs
is the operators' own formulation. ``check_against_profile`` puts a number on that: the stand-in's time over our torch
path's, next to the official code's over ours measured side by side in the profile (1.28× at 128², 1.34× at 256²,
1.6× at 512²). A stand-in *faster* relative to ours than the real official code makes every ratio here conservative.

**Our side**, on the same official-preset network (weights: the golden fixtures' deterministic rule, seed 0;
batch-statistics batch norm as in the official test), HR windows of N² (LR N/4), one window per forward:

- ``torch`` fp32 (native kernels), fp32 channels-last, bf16 autocast (float32 islands), bf16 channels-last; with
  ``--compiled`` also fp32 / bf16 channels-last through ``torch.compile`` (Inductor, freezing; the first call
  compiles, 2-3 minutes at 256² on 2 cores: ``compile_s``);
- ``onnxruntime`` fp32 (standard-op export), int8 (that export quantized: QDQ, decoder + HSI-encoder convolutions,
  calibrated on ``--calibration-scenes`` held-out synthetic scenes), and with ``--fp16`` the fp16 export.

**One process per configuration.** The package's command line and server processes set glibc's allocator at start
(:func:`sschsr_deploy.allocator.tune_allocator`: two heap arenas, large blocks kept for reuse instead of mmapped
afresh on every forward pass), and that setting is process-wide; the official code's process runs with glibc's
defaults. So each configuration runs in its own worker process (``spawn``), set up as it would be in use: ours with
``tune_allocator()`` applied first thing (before torch is imported), the stand-in with glibc's defaults; each row
records it (``allocator``). A worker builds its runner once (exports are made and cached in ``--workdir`` by the main
process first), times its first call (``first_call_s``; ``compile_s`` for the compiled ones), runs golden case A at
128², then times one call per command; after each call, outside the timed region, it collects garbage. Freed memory
stays with the worker, as in a process serving windows back to back (``--trim`` hands it back with ``malloc_trim``
after each call — for runs whose idle workers would not fit in memory together; it makes every configuration slower,
the stand-in included: the next call page-faults it in again). Only one worker runs at a time, so they never share the
cores.

Each round times every configuration once, in a rotated order (round r starts at configuration r mod n: under load
eager PyTorch slows more than ONNX Runtime; the profile measured a non-interleaved comparison off by 3.7×); the ratio
reported is the median of the per-round ratios official / config. The output of each configuration is compared with
the stand-in's (``rel_l2_vs_official_fp32``). ``--throughput`` adds the 2-core question, in the main process: one
window at a time on two threads (intra-op) or two windows in flight on one thread each (inter-op), for ONNX Runtime
fp32 / int8 and torch fp32.

**Runs, not one run.** The stand-in's time varies between runs far more than ours (at 256² one run measured it at
6.15 s, another an hour later at 8.54 s, ours unchanged: its glibc-default allocator page-faults its large blocks in
afresh, at a cost that depends on the machine's memory state), so a ratio from one run is one sample. Each size keeps
the history of its runs (``runs``: date, commit, the stand-in's median, every configuration's median and ratio;
``--runs K`` measures K times in one call, fresh workers each time, and ``--merge`` appends to the earlier history
unless ``--reset-runs``), and ``over_runs`` gives per configuration the lowest, median and highest ratio over them:
the lowest is the claim that holds.

    python benchmarks/bench_vs_official.py --sizes 128 256 --rounds 5 [--compiled] [--throughput] [--publish]
    python benchmarks/bench_vs_official.py --sizes 512 --rounds 2 --merge      # adds 512² to the same JSON
    python benchmarks/bench_vs_official.py --sizes 256 --compiled --runs 3 --merge   # three more runs of 256²

Writes ``vs_official_cpu.json`` (+ ``vs_official_cpu.png``); exports are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: set by the main process in the environment of a worker it starts for one of OUR configurations (never the
#: stand-in's): the worker applies the package's process setup when it loads this module, before torch and numpy
_TUNED_WORKER = "SSCHSR_VS_OFFICIAL_TUNED_WORKER"


def _tune_allocator_early() -> dict[str, bool] | None:
    """:func:`sschsr_deploy.allocator.tune_allocator`, applied before torch is imported: ``allocator.py`` (ctypes and
    os only) loaded on its own, as importing the package imports torch. None where it cannot be found (the worker
    then applies it later, through the package)."""
    import importlib.util

    try:
        package = importlib.util.find_spec("sschsr_deploy")  # finds the package without importing it
        path = Path(next(iter(package.submodule_search_locations))) / "allocator.py"
        spec = importlib.util.spec_from_file_location("_sschsr_allocator_early", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.tune_allocator()
    except Exception:
        return None


_ALLOCATOR = _tune_allocator_early() if os.environ.pop(_TUNED_WORKER, "") == "1" else None

import numpy as np  # noqa: E402 - after the worker's allocator setup
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SCRATCH_DIR,
    add_output_arguments,
    bar_chart,
    environment,
    results_dir,
    use_output_arguments,
    write_json,
)

from sschsr_deploy.ops._backend import REFERENCE_OPS, forced_backends  # noqa: E402

NAME = "vs_official_cpu"
OFFICIAL = "official (stand-in)"
#: official code / our torch path, measured side by side (shared/reference/performance-profile.md)
PROFILE_OFFICIAL_OVER_TORCH = {128: 1.28, 256: 1.34, 512: 1.6}
CONFIGS = ("torch fp32", "torch fp32 channels-last", "torch bf16", "torch bf16 channels-last",
           "torch fp32 channels-last compiled", "torch bf16 channels-last compiled",
           "onnxruntime fp32", "onnxruntime int8", "onnxruntime fp16")
#: run only when asked (--compiled, or named in --configs): their first call compiles for minutes
COMPILED = tuple(c for c in CONFIGS if c.endswith(" compiled"))


def official_model(batchnorm_mode: str = "batch") -> torch.nn.Module:
    """The official preset with the golden fixtures' rule weights (seed 0)."""
    from sschsr_deploy.golden import golden_state_dict
    from sschsr_deploy.model import SSCHSR

    model = SSCHSR.from_preset("official", batchnorm_mode=batchnorm_mode).eval()
    report = model.load_official_state_dict({k: torch.from_numpy(v) for k, v in golden_state_dict(0).items()})
    if report.missing or report.unexpected:
        raise RuntimeError(f"rule weights do not fit the preset: {report}")
    model.validate_inputs = False
    return model


def scene_inputs(size: int, bands: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The five model inputs of a held-out synthetic scene of N² HR pixels (one window, batch 1)."""
    from sschsr_deploy.data import make_scene
    from sschsr_deploy.scene import prepare_inputs

    s = make_scene(seed=3_000_000 + seed, size=(size, size), bands=bands, scale=4, split="test")
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                 for a in prepare_inputs(s.lr_hsi, s.ref_rgb, 4).as_tuple())


def _torch_runner(model: torch.nn.Module, precision: str, channels_last: bool, reference: bool = False,
                  compile: bool = False) -> Callable[[tuple], np.ndarray]:
    from sschsr_deploy.runtime.torch_backend import TorchBackend

    if reference:
        def run(inputs: tuple) -> np.ndarray:
            with torch.inference_mode(), forced_backends(**REFERENCE_OPS):
                return model(*inputs).numpy()
        return run
    backend = TorchBackend(model, precision=precision, channels_last=channels_last, compile=compile)
    return lambda inputs: backend.run(*inputs).numpy()


def _export(model: torch.nn.Module | Callable[[], torch.nn.Module], size: int, precision: str, workdir: Path,
            calibration_scenes: int) -> tuple[Path, dict[str, Any]]:
    """The exported (and for int8 quantized) official preset at N², cached in ``workdir``; ``model`` may be a function
    that builds it (called only when the file has to be exported)."""
    from sschsr_deploy.engine.onnx import INPUT_NAMES, export_onnx
    from sschsr_deploy.engine.quantize import calibration_feeds, quantize_int8

    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / f"official_rule0_{size}_fp32.onnx"
    path = workdir / f"official_rule0_{size}_{precision}.onnx"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    if precision in ("fp32", "fp16") or not fp32.exists():
        if not isinstance(model, torch.nn.Module):
            model = model()
        target = fp32 if precision == "int8" else path
        res = export_onnx(model, target, tile=(size, size), batch_range=(1, 1), precision="fp32" if precision ==
                          "int8" else precision, preset="official")
        info.update(export_s=round(time.perf_counter() - t0, 1), parity_rel_l2=res.parity.rel_l2)
        if precision == "int8":
            fp32.with_suffix(".json").write_text(json.dumps(info))
    if precision == "int8":
        t1 = time.perf_counter()
        feeds = calibration_feeds(INPUT_NAMES, 31, (size, size), calibration_scenes, scale=4)
        quantize_int8(fp32, path, feeds)
        info.update(quantize_s=round(time.perf_counter() - t1, 1), calibration_scenes=calibration_scenes)
    info_path.write_text(json.dumps(info))
    return path, info


def _ort_runner(path: Path, threads: int) -> Callable[[tuple], np.ndarray]:
    from sschsr_deploy.engine.onnx import make_session

    sess = make_session(path, providers=["CPUExecutionProvider"], threads=threads)
    names = [i.name for i in sess.get_inputs()]
    dtypes = [np.float16 if "float16" in i.type else np.float32 for i in sess.get_inputs()]

    def run(inputs: tuple) -> np.ndarray:
        feed = {n: t.numpy().astype(d) for n, t, d in zip(names, inputs, dtypes, strict=True)}
        return np.asarray(sess.run(None, feed)[0], dtype=np.float32)
    return run


def prepare_exports(size: int, configs: list[str], args: argparse.Namespace) -> tuple[dict[str, str], dict]:
    """The ONNX files of the ``onnxruntime`` configurations at N², exported (cached in ``--workdir``) here in the main
    process, one after another, before any worker starts: no two processes ever write the same file. Returns each
    configuration's file and its export facts (``{"unavailable": ...}`` where the export failed)."""
    paths: dict[str, str] = {}
    facts: dict[str, Any] = {}
    built: list[torch.nn.Module] = []

    def model() -> torch.nn.Module:  # built once, and only if a file is not in the cache
        built[:] = built or [official_model(args.bn_mode)]
        return built[0]

    for name in [n for n in configs if n.split()[0] == "onnxruntime"]:
        try:
            path, info = _export(model, size, name.split()[1], Path(args.workdir), args.calibration_scenes)
        except Exception as exc:  # recorded, not fatal: the table says what could not be measured
            facts[name] = {"unavailable": _failure(exc)}
            continue
        paths[name], facts[name] = str(path), info
    if built:
        built.clear()
        _release_memory(trim=True)
    return paths, facts


def make_runner(name: str, opts: dict[str, Any]) -> Callable[[tuple], np.ndarray]:
    """One configuration's runner, built in its worker: the stand-in, a torch variant (``channels-last``,
    ``compiled``), or an ONNX Runtime session on the file :func:`prepare_exports` made (``opts["onnx"]``)."""
    if name == OFFICIAL:
        return _torch_runner(official_model(opts["bn_mode"]), "fp32", False, reference=True)
    backend, precision, *rest = name.split()
    if backend == "torch":
        return _torch_runner(official_model(opts["bn_mode"]), precision, "channels-last" in rest,
                             compile="compiled" in rest)
    if backend == "onnxruntime":
        return _ort_runner(Path(opts["onnx"]), opts["threads"])
    raise ValueError(f"unknown configuration {name!r}")


GOLDEN_CASE_A = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "case_A_128x128_sf4_seed0.npz"


def golden_deviation(runners: dict[str, Callable], bn_mode: str) -> dict[str, Any]:
    """Golden-parity style: each configuration on golden case A (128² sf4, the official model's inputs and output
    under the same rule weights), its output against the official output (``train.out`` for batch-statistics batch
    norm, ``eval.out`` for running statistics): relative L2 and max abs error."""
    from sschsr_deploy.model import INPUT_NAMES

    with np.load(GOLDEN_CASE_A) as z:
        inputs = tuple(torch.from_numpy(np.ascontiguousarray(z["in." + k], dtype=np.float32)) for k in INPUT_NAMES)
        want = z[("train" if bn_mode == "batch" else "eval") + ".out"].astype(np.float64)
    out = {}
    for name, run in runners.items():
        got = run(inputs).astype(np.float64)
        out[name] = {"rel_l2": _rel(got, want), "max_abs": float(np.abs(got - want).max())}
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


# ---------------------------------------------------------------------------------------------------------------------
# worker processes: one per configuration


class WorkerError(RuntimeError):
    """A worker could not build or run its configuration (its message: ``"<type>: <message>"``), or it died."""


_malloc_trim: Any = None


def _release_memory(trim: bool) -> None:
    """Outside the timed region: collect garbage and (``trim``) hand the heap's free memory back to the system."""
    global _malloc_trim
    gc.collect()
    if not trim:
        return
    if _malloc_trim is None:
        libc = ctypes.util.find_library("c")
        try:
            _malloc_trim = ctypes.CDLL(libc).malloc_trim if libc else False
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _glibc_defaults() -> str:
    """The stand-in's allocator setup: glibc's defaults, plus any the environment sets (it is inherited)."""
    env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        env.append(f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")
    return "glibc defaults" + (f" + environment {' '.join(env)}" if env else "")


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _worker_main(conn: Any, name: str, size: int, opts: dict[str, Any]) -> None:
    """A worker process's life: set up the process, build ``name``'s runner, warm up (its output and first-call time
    go back), golden case A when asked, then one timed call per ``("run",)`` until ``("stop",)``.

    Answers are ``(kind, payload)``: ``("ready", {...})``, ``("time", seconds)`` or ``("error", "<type>: <msg>")``;
    a worker that reports an error exits."""
    try:
        try:
            if name == OFFICIAL:
                allocator: dict[str, bool] | str = _glibc_defaults()
            elif _ALLOCATOR is not None:  # applied when this module loaded, before torch (see _TUNED_WORKER)
                allocator = _ALLOCATOR
            else:
                from sschsr_deploy.allocator import tune_allocator

                allocator = tune_allocator()
            torch.set_num_threads(opts["threads"])
            runner = make_runner(name, opts)
            inputs = scene_inputs(size, 31, opts["seed"])
            t0 = time.perf_counter()
            output = np.asarray(runner(inputs), dtype=np.float32)
            first_call_s = time.perf_counter() - t0
            golden = golden_deviation({name: runner}, opts["bn_mode"])[name] if opts.get("golden") else None
            _release_memory(opts["trim"])
        except Exception as exc:
            conn.send(("error", _failure(exc)))
            return
        conn.send(("ready", {"output": output, "first_call_s": first_call_s, "golden": golden,
                             "allocator": allocator}))
        del output
        while True:
            command = conn.recv()
            if command[0] == "stop":
                return
            if command[0] != "run":
                conn.send(("error", f"ValueError: unknown command {command[0]!r}"))
                return
            try:
                t0 = time.perf_counter()
                runner(inputs)
                elapsed = time.perf_counter() - t0
            except Exception as exc:
                conn.send(("error", _failure(exc)))
                return
            _release_memory(opts["trim"])
            conn.send(("time", elapsed))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # the main process is stopping (or gone)
        return
    finally:
        conn.close()


class Worker:
    """The main process's handle on one configuration's worker: a process started with ``spawn`` (a fresh
    interpreter: nothing of the main process's allocator state) running :func:`_worker_main`; our configurations'
    workers get :data:`_TUNED_WORKER` in their environment."""

    def __init__(self, name: str, size: int, opts: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        # not daemonic: torch.compile may start processes of its own
        self.process = ctx.Process(target=_worker_main, args=(child, name, size, opts), name=f"vs-official {name}")
        if name != OFFICIAL:
            os.environ[_TUNED_WORKER] = "1"
        try:
            self.process.start()  # spawn copies the environment now
        finally:
            os.environ.pop(_TUNED_WORKER, None)
            child.close()  # the worker holds the other end: its exit shows as EOF here

    def ask(self, *command: Any) -> Any:
        """Send ``command`` (none: just wait) and return the answer's payload; raises :class:`WorkerError` when the
        worker reports an error or ends without answering."""
        try:
            if command:
                self.conn.send(command)
            kind, payload = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(10)
            raise WorkerError(f"WorkerExited: the worker of {self.name} ended without answering (exit code "
                              f"{self.process.exitcode})") from None
        if kind == "error":
            raise WorkerError(payload)
        return payload

    def run(self) -> float:
        """One timed call (seconds, measured in the worker around the runner call only)."""
        return float(self.ask("run"))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to end; terminate it if it does not within ``timeout`` seconds."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("stop",))
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5)
        self.conn.close()


def timed_rounds(timers: dict[str, Callable[[], float]], rounds: int, label: str = ""
                 ) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``rounds`` rounds, each timing every configuration once (one at a time); round r starts at configuration
    r mod n (rotated). A configuration whose timer raises :class:`WorkerError` is dropped from the rest of the run.
    Returns the times of the configurations that finished and the failures of those that did not."""
    names = list(timers)
    times: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, str] = {}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if n in failed:
                continue
            try:
                times[n].append(timers[n]())
            except WorkerError as exc:
                failed[n] = str(exc)
                print(f"  {label}{n} failed: {exc}", flush=True)
        print(f"  {label}round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names
                                                               if n not in failed), flush=True)
    return {n: t for n, t in times.items() if n not in failed}, failed


def measure_size(size: int, configs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds at one size, each configuration in its own worker process: per configuration its times,
    the per-round ratio to the stand-in, its output's deviation from the stand-in's and its process setup."""
    paths, facts = prepare_exports(size, configs, args)
    golden = size == 128 and GOLDEN_CASE_A.exists()
    opts = {"threads": args.threads, "seed": args.seed, "bn_mode": args.bn_mode, "golden": golden,
            "trim": args.trim}
    rows: dict[str, Any] = {}
    ready: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    try:
        for name in [OFFICIAL, *configs]:  # one at a time: builds, compilations and warm-ups never overlap
            if "unavailable" in facts.get(name, {}):
                continue
            print(f"  {size}²: {name}: starting its worker, building, warming up", flush=True)
            worker = workers[name] = Worker(name, size, {**opts, "onnx": paths.get(name)})
            try:
                ready[name] = worker.ask()
            except WorkerError as exc:
                if name == OFFICIAL:
                    raise RuntimeError(f"the stand-in's worker failed: {exc}") from None
                facts[name] = {**facts.get(name, {}), "unavailable": str(exc)}
                workers.pop(name).stop()
                print(f"  {size}²: {name} unavailable: {exc}", flush=True)
        times, failed = timed_rounds({n: w.run for n, w in workers.items()}, args.rounds, f"{size}² ")
    finally:
        for worker in workers.values():
            worker.stop()
    if OFFICIAL in failed:
        raise RuntimeError(f"the stand-in's worker failed: {failed[OFFICIAL]}")
    ref = ready[OFFICIAL]["output"]
    for name in [OFFICIAL, *configs]:
        if name in times:
            ratios = [o / t for o, t in zip(times[OFFICIAL], times[name], strict=True)]
            first = "compile_s" if name in COMPILED else "first_call_s"
            rows[name] = {"median_s": statistics.median(times[name]), "times_s": [round(t, 4) for t in times[name]],
                          "speedup_vs_official": statistics.median(ratios),
                          "rel_l2_vs_official_fp32": 0.0 if name == OFFICIAL else _rel(ready[name]["output"], ref),
                          first: round(ready[name]["first_call_s"], 2), "allocator": ready[name]["allocator"],
                          **facts.get(name, {})}
        elif name in failed:
            rows[name] = {**facts.get(name, {}), "unavailable": failed[name]}
        elif name in facts:
            rows[name] = facts[name]
    check = None
    if "torch fp32" in times:
        stand_in = statistics.median(o / t for o, t in zip(times[OFFICIAL], times["torch fp32"], strict=True))
        check = {"stand_in_over_torch_fp32": stand_in,
                 "official_over_torch_fp32_in_profile": PROFILE_OFFICIAL_OVER_TORCH.get(size)}
    golden_rows = {n: r["golden"] for n, r in ready.items() if r["golden"] is not None} if golden else None
    return {"rows": rows, "rounds": args.rounds, "check_against_profile": check, "golden_case_A": golden_rows}


def throughput(args: argparse.Namespace, size: int = 128, windows: int = 4) -> dict[str, Any]:
    """Windows per second on 2 cores: one window at a time with 2 threads (intra-op) vs two windows in flight
    with 1 thread each (inter-op), ``windows`` windows each way, interleaved ``args.rounds`` times."""
    from sschsr_deploy.engine.onnx import make_session

    model = official_model(args.bn_mode)
    inputs = scene_inputs(size, 31, args.seed)
    result: dict[str, Any] = {"size": size, "windows": windows}
    cases: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
    for precision in ("fp32", "int8"):
        path, _ = _export(model, size, precision, Path(args.workdir), args.calibration_scenes)
        two = make_session(path, providers=["CPUExecutionProvider"], threads=2)
        ones = [make_session(path, providers=["CPUExecutionProvider"], threads=1) for _ in range(2)]
        feed = {i.name: t.numpy() for i, t in zip(two.get_inputs(), inputs, strict=True)}
        cases[f"onnxruntime {precision}"] = (
            lambda s=two, f=feed: [s.run(None, f) for _ in range(windows)],
            lambda ss=ones, f=feed: _in_flight([lambda s=s: s.run(None, f) for s in ss], windows))

    def torch_intra() -> None:
        torch.set_num_threads(2)
        with torch.inference_mode():
            for _ in range(windows):
                model(*inputs)

    def torch_inter() -> None:
        torch.set_num_threads(1)  # process-wide: each of the two Python threads then runs on one core
        try:
            with torch.inference_mode():
                _in_flight([lambda: model(*inputs)] * 2, windows)
        finally:
            torch.set_num_threads(2)
    cases["torch fp32"] = (torch_intra, torch_inter)
    for name, (intra, inter) in cases.items():
        intra(), inter()  # warm-up
        t_intra, t_inter = [], []
        for _ in range(args.rounds):
            for fn, store in ((intra, t_intra), (inter, t_inter)):
                t0 = time.perf_counter()
                fn()
                store.append(time.perf_counter() - t0)
        a, b = statistics.median(t_intra), statistics.median(t_inter)
        result[name] = {"intra_op_2_threads_windows_per_s": windows / a, "two_in_flight_1_thread_windows_per_s":
                        windows / b, "inter_over_intra": a / b, "better": "two in flight" if b < a else "intra-op"}
        print(f"  throughput {name}: intra-op {windows / a:.3f} windows/s, two in flight {windows / b:.3f}", flush=True)
    return result


def _in_flight(calls: list[Callable[[], Any]], windows: int) -> None:
    """Run ``windows`` calls split over len(calls) Python threads (one call object each)."""
    share = [windows // len(calls) + (i < windows % len(calls)) for i in range(len(calls))]
    threads = [threading.Thread(target=lambda c=c, k=k: [c() for _ in range(k)]) for c, k in zip(calls, share,
                                                                                                strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_record(measured: dict[str, Any], commit: str | None) -> dict[str, Any]:
    """One run's entry in a size's history: when, at which commit, the stand-in's median time and every measured
    configuration's median time and ratio."""
    rows = {n: r for n, r in measured["rows"].items() if "speedup_vs_official" in r}
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "rounds": measured["rounds"], "stand_in_median_s": round(rows[OFFICIAL]["median_s"], 4),
            "median_s": {n: round(r["median_s"], 4) for n, r in rows.items() if n != OFFICIAL},
            "speedup": {n: round(r["speedup_vs_official"], 4) for n, r in rows.items() if n != OFFICIAL}}


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration over the runs that measured it: how many, the lowest / median / highest ratio; and the
    stand-in's median time's range (the spread that makes one run one sample)."""
    names = sorted({n for r in runs for n in r["speedup"]}, key=lambda n: CONFIGS.index(n) if n in CONFIGS else 99)
    out: dict[str, Any] = {}
    for n in names:
        ratios = [r["speedup"][n] for r in runs if n in r["speedup"]]
        out[n] = {"runs": len(ratios), "min": min(ratios), "median": round(statistics.median(ratios), 4),
                  "max": max(ratios)}
    stand_in = [r["stand_in_median_s"] for r in runs]
    out[OFFICIAL] = {"runs": len(stand_in), "median_s_min": min(stand_in), "median_s_max": max(stand_in)}
    return out


def _git_commit() -> str | None:
    """The repository's HEAD (with ``+dirty`` when the working tree differs), or None outside a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def runs_markdown(result: dict[str, Any]) -> str:
    """Over the recorded runs of each size: the lowest / median / highest ratio of each configuration."""
    lines = ["| size | configuration | runs | lowest | median | highest |", "|---|---|---|---|---|---|"]
    for s in sorted(result["sizes"], key=int):
        summary = result["sizes"][s].get("over_runs") or {}
        stand_in = summary.get(OFFICIAL)
        if stand_in:
            lines.append(f"| {s}² | {OFFICIAL} | {stand_in['runs']} | {stand_in['median_s_min']:.2f} s | — | "
                         f"{stand_in['median_s_max']:.2f} s |")
        for n, v in summary.items():
            if n != OFFICIAL:
                lines.append(f"| {s}² | {n} | {v['runs']} | {v['min']:.2f}× | {v['median']:.2f}× | {v['max']:.2f}× |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The README's table: speed-up over the official formulation per size, and the deviation it costs."""
    sizes = sorted(result["sizes"], key=int)
    names = [n for n in (OFFICIAL, *CONFIGS) if any(n in result["sizes"][s]["rows"] for s in sizes)]
    head = "| configuration | " + " | ".join(f"{s}²" for s in sizes) + " | rel. dev. vs official fp32 (256²) |"
    lines = [head, "|---" * (len(sizes) + 2) + "|"]
    for n in names:
        cells = []
        for s in sizes:
            row = result["sizes"][s]["rows"].get(n, {})
            cells.append("—" if "speedup_vs_official" not in row else
                         (f"1× ({row['median_s']:.2f} s)" if n == OFFICIAL else f"{row['speedup_vs_official']:.2f}×"))
        dev_row = result["sizes"].get("256", result["sizes"][sizes[0]])["rows"].get(n, {})
        dev = dev_row.get("rel_l2_vs_official_fp32")
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + ("—" if dev is None else f"{dev:.1e}") + " |")
    return "\n".join(lines)


def default_configs(fp16: bool = False, compiled: bool = False) -> list[str]:
    """Every configuration but the fp16 export (``--fp16``) and the compiled ones (``--compiled``)."""
    return [c for c in CONFIGS if (c != "onnxruntime fp16" or fp16) and (c not in COMPILED or compiled)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", nargs="+", default=None,
                    help=f"subset of {', '.join(CONFIGS)} (quote each; default: all but onnxruntime fp16 and the "
                         "compiled ones)")
    ap.add_argument("--fp16", action="store_true", help="also the fp16 ONNX export on ONNX Runtime")
    ap.add_argument("--compiled", action="store_true",
                    help="also torch fp32 / bf16 channels-last through torch.compile (minutes of compilation each)")
    ap.add_argument("--trim", action="store_true",
                    help="workers hand freed memory back after each call (malloc_trim; default: they keep it, as a "
                         "serving process does; use it when the idle workers would not fit in memory)")
    ap.add_argument("--throughput", action="store_true", help="also intra-op vs two windows in flight (128²)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-scenes", type=int, default=8)
    ap.add_argument("--bn-mode", choices=("batch", "running"), default="batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(SCRATCH_DIR / "vs_official_cache"),
                    help="where the exports are cached (default: the git-ignored scratch folder)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sizes of an earlier result file, and append to the run history of these")
    ap.add_argument("--runs", type=int, default=1, help="measure each size this many times (fresh workers each)")
    ap.add_argument("--reset-runs", action="store_true",
                    help="with --merge: start the measured sizes' run history afresh (after a change to the code)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    torch.set_num_threads(args.threads)
    configs = list(args.configs) if args.configs else default_configs(args.fp16, args.compiled)
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {CONFIGS}")
    previous = results_dir() / f"{NAME}.json"
    result: dict[str, Any] = json.loads(previous.read_text()) if args.merge and previous.exists() else {}
    result.update(benchmark="vs_official", environment=environment("cpu"), baseline=OFFICIAL,
                  stand_in=__doc__.split("\n\n")[1].replace("\n", " "),
                  config={"rounds": args.rounds, "threads": args.threads, "bn_mode": args.bn_mode,
                          "calibration_scenes": args.calibration_scenes, "weights": "golden rule, seed 0",
                          "preset": "official", "batch": 1, "processes": "one per configuration",
                          "allocator": "ours: sschsr_deploy.allocator.tune_allocator() at worker start (the package's "
                                       "CLI / server process setup); the stand-in: glibc defaults",
                          "trim_between_calls": args.trim})
    result.setdefault("sizes", {})
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    commit = _git_commit()
    for size in args.sizes:
        earlier = result["sizes"].get(str(size), {})
        history = [] if args.reset_runs else list(earlier.get("runs") or [])
        for k in range(args.runs):
            print(f"{size}²: run {k + 1}/{args.runs}: building and warming up", flush=True)
            measured = measure_size(size, configs, args)
            history.append(run_record(measured, commit))
            result["sizes"][str(size)] = {**measured, "runs": history, "over_runs": summarise_runs(history)}
            write_json(NAME, result)
    if args.throughput:
        result["throughput"] = throughput(args)
    write_json(NAME, result)
    sizes = sorted(result["sizes"], key=int)
    shown = [n for n in CONFIGS if any("speedup_vs_official" in result["sizes"][s]["rows"].get(n, {}) for s in sizes)]
    series = {n: [result["sizes"][s]["rows"].get(n, {}).get("speedup_vs_official", 0.0) for s in sizes]
              for n in shown}
    with contextlib.suppress(Exception):
        bar_chart(NAME, "SSC-HSR official preset on the CPU: speed-up over the official formulation",
                  [f"{s}²" for s in sizes], series, "× official (higher is faster)")
    print(markdown(result))
    print(runs_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
