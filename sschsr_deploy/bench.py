"""``sschsr-deploy bench``: per-tile latency, throughput and peak memory of backends side by side, on one input.

Why per tile: the tile network is what a backend runs (:meth:`sschsr_deploy.runtime.backends.Backend.run`); the
pipeline around it (preprocessing, blending, writing) is the same for every backend, so timing ``Backend.run`` on the
same generated input (:func:`sschsr_deploy.engine.onnx.example_inputs`) is the comparison that tells backends apart.
Every backend gets the same tile, batch, device, thread count and input; the first one named is the baseline of the
ratios, and each output is compared with the baseline's (a backend that is fast because it computes something else
shows up there).

Backends (``--backend``, repeatable): ``torch`` (``--model``: a shipped name or a weights file), ``torch:MODEL``,
``torch-compile`` / ``torch-compile:MODEL`` (the same model through ``torch.compile``:
``create_backend("torch", model, compile=True)``; compiling happens in the first warm-up call, whose time the report
gives as ``compile_seconds``, and a compile failure is reported in that backend's row, ``error``, not raised),
``onnxruntime:FILE.onnx``, ``tensorrt:FILE.engine``, or a bare ``FILE.onnx`` / ``FILE.engine``. Each is created,
timed and released in turn. :func:`run_benchmark` is also the timing of ``benchmarks/bench_backends.py`` (which
passes its own models and devices through :class:`BackendSpec`, and ``keep_going=True``). Timing: ``--warmup``
untimed calls, then ``--iters`` timed ones, each ended by a CUDA synchronisation on a GPU.
Peak memory: the process's peak resident set (RSS, reset per backend where Linux allows)
on the CPU; ``torch.cuda.max_memory_allocated`` on CUDA (what torch allocates: ONNX Runtime's and TensorRT's own
allocations are not in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sschsr_deploy.errors import InputValidationError

__all__ = ["COMPILE_BACKEND", "BackendSpec", "add_arguments", "bench_from_args", "latency_stats", "parse_backend",
           "run_benchmark", "summary_lines"]

DEFAULT_MODEL = "tiny-x4"
DEFAULT_TILE = 128  # cheap defaults: a few seconds per backend for the tiny preset on 2 CPU cores
DEFAULT_ITERS = 10
DEFAULT_WARMUP = 2
#: The ``--backend`` name of the torch backend through ``torch.compile``.
COMPILE_BACKEND = "torch-compile"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sschsr-deploy bench`` options."""
    p.add_argument("--backend", action="append", metavar="SPEC",
                   help="torch, torch:MODEL, torch-compile (torch.compile of the same model; slow to compile on a "
                        "CPU, a compile failure is reported in its row), torch-compile:MODEL, onnxruntime:FILE.onnx, "
                        "tensorrt:FILE.engine or a bare .onnx / .engine path; repeat to compare (the first is the "
                        "baseline; default: torch)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"weights of the torch backend: a shipped name or a weights file (default {DEFAULT_MODEL})")
    p.add_argument("--tile", nargs="+", type=int, metavar="PX", default=[DEFAULT_TILE],
                   help=f"HR tile: S (square) or H W (default {DEFAULT_TILE})")
    p.add_argument("--batch", type=int, default=1, help="tiles per call (default 1)")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help=f"timed calls (default {DEFAULT_ITERS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed calls first (default {DEFAULT_WARMUP})")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads of torch and ONNX Runtime (default: torch's)")
    p.add_argument("--raft-iters", type=int,
                   help="RAFT iterations of the torch backend (default: the preset's; match an export's to compare "
                        "the same work)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated input (default 0)")
    p.add_argument("--out", help="also write the JSON report to this file (atomically)")
    p.add_argument("--quiet", action="store_true", help="no summary table on stderr")


@dataclass(frozen=True)
class BackendSpec:
    """One ``--backend``: its label (as given), backend name and source (weights for torch, a file for the others).

    ``compile``: the torch backend through ``torch.compile``. ``device``: this backend's device instead of the run's
    (``benchmarks/bench_backends.py``: ONNX Runtime on the CPU in a CUDA run). ``model``: a ready torch ``nn.Module``
    to run instead of loading ``source`` (the benchmark script's preset-built model).
    """

    label: str
    name: str
    source: str | None
    compile: bool = False
    device: str | None = None
    model: Any = field(default=None, compare=False, repr=False)


def parse_backend(text: str, model: str = DEFAULT_MODEL) -> BackendSpec:
    """Parse ``NAME``, ``NAME:SOURCE`` or a bare exported-model path (its suffix names the backend)."""
    from sschsr_deploy.runtime.backends import BACKENDS, ENGINE_SUFFIXES, backend_for_path

    name, _, source = text.partition(":")
    if name.lower() not in BACKENDS and name.lower() != COMPILE_BACKEND:
        if Path(text).suffix.lower() not in ENGINE_SUFFIXES:
            raise InputValidationError(
                f"--backend {text}: expected torch, torch:MODEL, {COMPILE_BACKEND}, {COMPILE_BACKEND}:MODEL, "
                f"onnxruntime:FILE.onnx, tensorrt:FILE.engine or a path ending in {', '.join(ENGINE_SUFFIXES)}"
            )
        name, source = backend_for_path(text), text
    name = name.lower()
    if name in ("torch", COMPILE_BACKEND):
        return BackendSpec(text, "torch", source or model, compile=name == COMPILE_BACKEND)
    if not source:
        hint = "FILE.onnx (sschsr-deploy export --tile 128 --out FILE.onnx)" if name == "onnxruntime" else \
            "FILE.engine (sschsr-deploy build-engine FILE.onnx --out FILE.engine)"
        raise InputValidationError(f"--backend {name} runs an exported model: give --backend {name}:{hint}")
    return BackendSpec(text, name, source)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99, mean, min and max in milliseconds (linear interpolation between samples)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()),
            "min": float(ms.min()), "max": float(ms.max())}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak memory while the block runs: ``max_memory_allocated`` on CUDA; on the CPU the process's peak RSS
    (``VmHWM`` reset through ``/proc/self/clear_refs`` where allowed, else RSS sampled every 5 ms)."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        out["kind"] = "torch.cuda.max_memory_allocated"
        out["before_mib"] = torch.cuda.memory_allocated(device) / 2**20
        try:
            yield out
        finally:
            out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    if not os.path.exists("/proc/self/status"):  # not Linux: the lifetime peak is all there is
        import resource

        out["kind"] = "ru_maxrss (process lifetime)"
        try:
            yield out
        finally:
            scale = 1 if platform.system() == "Darwin" else 1024
            out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    out["kind"] = "peak RSS (VmHWM)" if reset else "peak RSS (sampled)"
    peak = [_status_kib("VmRSS")]
    out["before_mib"] = peak[0] / 1024
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _status_kib("VmRSS"))

    sampler = None if reset else threading.Thread(target=sample, daemon=True)
    if sampler is not None:
        sampler.start()
    try:
        yield out
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
        kib = _status_kib("VmHWM") if reset else max(peak[0], _status_kib("VmRSS"))
        out["peak_mib"] = kib / 1024


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _create(spec: BackendSpec, device: str, threads: int | None, raft_iters: int | None):
    """The backend of ``spec``, with its RAFT iterations and what it runs (for the report)."""
    from sschsr_deploy.runtime.backends import create_backend

    if spec.name == "torch":
        if spec.model is not None:
            model, info = spec.model, {"weights": spec.source, "preset": None}
        else:
            from sschsr_deploy.weights import load_model

            model, info = load_model(spec.source)
        if raft_iters is not None:  # as export_onnx unrolls them
            model.flownet.cfg = dataclasses.replace(model.flownet.cfg, iters=int(raft_iters))
            model.config = dataclasses.replace(model.config, raft=model.flownet.cfg)
        options = {"compile": True} if spec.compile else {}
        backend = create_backend("torch", model, device, **options)
        about = {"weights": info["weights"], "preset": info["preset"], "compiled": spec.compile}
        return backend, int(model.flownet.cfg.iters), about
    options = {"threads": threads} if spec.name == "onnxruntime" and threads else {}
    backend = create_backend(spec.name, spec.source, device, **options)
    meta = dict(getattr(getattr(backend, "spec", None), "metadata", {}) or {})
    iters = int(meta["raft_iters"]) if meta.get("raft_iters") else None
    return backend, iters, {"file": Path(spec.source).name, "preset": meta.get("preset"),
                            "precision": meta.get("precision"), "weights_source": meta.get("weights_source")}


def _check_fits(spec: BackendSpec, backend: Any, tile: tuple[int, int], bands: int | None) -> None:
    if bands is not None and backend.bands != bands:
        raise InputValidationError(f"--backend {spec.label} takes {backend.bands} bands, the first backend {bands}: "
                                   "they cannot run the same input")
    if backend.tile_bounds is None:
        return
    (lh, lw), (hh, hw) = backend.tile_bounds
    if lh <= tile[0] <= hh and lw <= tile[1] <= hw:
        return
    if (lh, lw) == (hh, hw):
        allowed, fix = f"{lh}x{lw} tiles only", f"--tile {lh}" + ("" if lh == lw else f" {lw}")
    else:
        allowed, fix = f"tiles within {lh}x{lw} .. {hh}x{hw}", "a --tile within those bounds"
    raise InputValidationError(f"--backend {spec.label} runs {allowed}, not {tile[0]}x{tile[1]}: use {fix}")


def run_benchmark(
    specs: Sequence[BackendSpec],
    *,
    tile: tuple[int, int] = (DEFAULT_TILE, DEFAULT_TILE),
    batch: int = 1,
    iters: int = DEFAULT_ITERS,
    warmup: int = DEFAULT_WARMUP,
    device: str = "cpu",
    threads: int | None = None,
    raft_iters: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    keep_going: bool = False,
) -> dict[str, Any]:
    """Time each backend's ``run`` on the same generated input; returns the report (see the module docstring).

    A backend that fails is reported in its row (``error``, no timings) instead of raised when it is a torch-compile
    one (other than for bad input) or with ``keep_going``; the first backend that ran is the baseline of the ratios.
    """
    from sschsr_deploy.engine.onnx import example_inputs
    from sschsr_deploy.model.presets import MIN_SIZE, SIZE_MULTIPLE

    if not specs:
        raise InputValidationError("no backend to benchmark")
    if min(tile) < MIN_SIZE or tile[0] % SIZE_MULTIPLE or tile[1] % SIZE_MULTIPLE:
        raise InputValidationError(f"--tile {tile[0]}x{tile[1]}: the network takes tiles of at least {MIN_SIZE} px, "
                                   f"multiples of {SIZE_MULTIPLE}")
    for name, value, least in (("--batch", batch, 1), ("--iters", iters, 1), ("--warmup", warmup, 0)):
        if value < least:
            raise InputValidationError(f"{name} must be at least {least}; got {value}")
    if threads is not None:
        if threads < 1:
            raise InputValidationError(f"--threads must be at least 1; got {threads}")
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    from sschsr_deploy.runtime.backend_base import resolve_device

    dev = resolve_device(device)
    inputs: tuple[torch.Tensor, ...] | None = None
    bands = None
    baseline_out: np.ndarray | None = None
    rows: list[dict[str, Any]] = []
    for spec in specs:
        if progress:
            progress(f"{spec.label}: {warmup} warm-up + {iters} timed call(s)")
        backend = xs = out = None
        try:
            backend, spec_iters, about = _create(spec, spec.device or device, threads, raft_iters)
            _check_fits(spec, backend, tile, bands)
            if inputs is None:
                bands = backend.bands
                inputs = example_inputs(bands, batch, tile, seed)
            xs = tuple(x.to(backend.device) for x in inputs)
            sync = _sync(backend.device)
            times: list[float] = []
            first_call_s = None
            with _peak_memory(backend.device) as memory:
                for i in range(warmup + iters):
                    t0 = time.perf_counter()
                    out = backend.run(*xs)
                    sync()
                    elapsed = time.perf_counter() - t0
                    if i == 0:
                        first_call_s = elapsed  # torch-compile: compiling happens here
                    if i >= warmup:
                        times.append(elapsed)
        except Exception as exc:  # torch-compile (or keep_going): reported in the row, not raised
            if not (keep_going or (spec.compile and not isinstance(exc, InputValidationError))):
                raise
            error = f"{type(exc).__name__}: {exc}"[:500]
            rows.append({"label": spec.label, "backend": spec.name, "device": str(spec.device or device),
                         "compiled": spec.compile, "error": error})
            if progress:
                progress(f"{spec.label}: failed ({error[:160]})")
            del backend, xs, out
            gc.collect()
            continue
        got = out.detach().float().cpu().numpy().astype(np.float64)
        total = sum(times)
        tiles_per_s = batch * iters / total if total > 0 else float("inf")
        row: dict[str, Any] = {
            "label": spec.label, "backend": backend.name, "device": str(backend.device), "raft_iters": spec_iters,
            **about, "latency_ms": latency_stats(times),
            "throughput": {"tiles_per_s": tiles_per_s, "hr_mpix_per_s": tiles_per_s * tile[0] * tile[1] / 1e6},
            "peak_memory_mib": round(memory["peak_mib"], 1), "peak_memory_kind": memory["kind"],
            "memory_before_mib": round(memory["before_mib"], 1) if "before_mib" in memory else None,
            "first_call_seconds": first_call_s,
        }
        if spec.compile:
            row["compile_seconds"] = first_call_s  # compiling plus one call, as the first call does both
        if hasattr(backend, "providers"):
            row["providers"] = list(backend.providers)
        if baseline_out is None:
            baseline_out = got
        else:
            first = next(r for r in rows if "error" not in r)
            diff = got - baseline_out
            row["vs_first"] = {
                "latency_p50_ratio": row["latency_ms"]["p50"] / first["latency_ms"]["p50"],
                "speedup_p50": first["latency_ms"]["p50"] / row["latency_ms"]["p50"],
                "throughput_ratio": tiles_per_s / first["throughput"]["tiles_per_s"],
                "output_rel_l2": float(np.linalg.norm(diff) / (np.linalg.norm(baseline_out) or 1.0)),
                "output_max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
            }
        rows.append(row)
        del backend, xs, out
        gc.collect()
    iter_counts = {r["raft_iters"] for r in rows if r.get("raft_iters") is not None}
    report: dict[str, Any] = {
        "benchmark": "backends, per tile (Backend.run)",
        "config": {"tile": list(tile), "batch": batch, "iters": iters, "warmup": warmup, "device": str(dev),
                   "threads": threads, "seed": seed, "input": "engine.onnx.example_inputs"},
        "baseline": next((r["label"] for r in rows if "error" not in r), None),
        "backends": rows,
        "environment": _environment(dev),
    }
    if len(iter_counts) > 1:
        report["warning"] = (f"the backends run different RAFT iterations ({sorted(iter_counts)}): the ratios compare "
                             "different work (match them with --raft-iters / the export's --raft-iters)")
    return report


def _environment(device: torch.device) -> dict[str, Any]:
    from sschsr_deploy._version import __version__

    env: dict[str, Any] = {"sschsr_deploy": __version__, "torch": torch.__version__,
                           "python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


def bench_from_args(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``sschsr-deploy bench``; writes ``--out`` (atomically) when given and returns the report."""
    from sschsr_deploy.export import size_arg
    from sschsr_deploy.io.atomic import atomic_write_json, check_writable

    out = check_writable(args.out) if args.out else None
    specs = [parse_backend(b, args.model) for b in (args.backend or ["torch"])]
    report = run_benchmark(specs, tile=size_arg(args.tile, "--tile"), batch=args.batch, iters=args.iters,
                           warmup=args.warmup, device=args.device, threads=args.threads, raft_iters=args.raft_iters,
                           seed=args.seed, progress=progress)
    if out is not None:
        atomic_write_json(out, report)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A small table of the report for people (the JSON is for programs)."""
    width = max(len(r["label"]) for r in report["backends"])
    lines = [f"{'backend':<{width}}  {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}  {'tiles/s':>8} {'MPix/s':>7}  "
             f"{'peak MiB':>8}  vs first"]
    for r in report["backends"]:
        if "error" in r:
            lines.append(f"{r['label']:<{width}}  failed: {r['error'][:200]}")
            continue
        lat, thr = r["latency_ms"], r["throughput"]
        vs = r.get("vs_first")
        ratio = "baseline" if vs is None else \
            f"speed-up {vs['speedup_p50']:.2f}x, output rel. diff {vs['output_rel_l2']:.1e}"
        if r.get("compile_seconds") is not None:
            ratio += f" (compiled in {r['compile_seconds']:.0f} s)"
        lines.append(f"{r['label']:<{width}}  {lat['p50']:9.1f} {lat['p90']:9.1f} {lat['p99']:9.1f}  "
                     f"{thr['tiles_per_s']:8.2f} {thr['hr_mpix_per_s']:7.3f}  {r['peak_memory_mib']:8.0f}  {ratio}")
    if "warning" in report:
        lines.append("warning: " + report["warning"])
    return lines
