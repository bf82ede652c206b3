"""Shared benchmark plumbing: timing, environment capture, and the JSON / PNG outputs.

Where outputs go (:func:`results_dir`): ``benchmarks/results/local/`` (git-ignored scratch) by default, so that running
a benchmark never overwrites the committed results; ``benchmarks/results/`` with ``--publish`` (to update them on
purpose); ``$SSCHSR_BENCH_RESULTS_DIR`` when set, over both (scripts/gpu_suite.py: into its $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

PUBLISHED_DIR = Path(__file__).parent / "results"  # committed results, written only with --publish
SCRATCH_DIR = PUBLISHED_DIR / "local"  # git-ignored (.gitignore)
_publish = False
_told: set[Path] = set()


def results_dir() -> Path:
    """Where results are written: SSCHSR_BENCH_RESULTS_DIR when set (scripts/gpu_suite.py: into its $OUT, never over
    the committed results of another machine), else ``results/`` with ``--publish``, else the scratch folder."""
    env = os.environ.get("SSCHSR_BENCH_RESULTS_DIR")
    if env:
        return Path(env)
    return PUBLISHED_DIR if _publish else SCRATCH_DIR


def add_output_arguments(ap: argparse.ArgumentParser) -> None:
    """``--publish``: write into the committed ``benchmarks/results/`` instead of the scratch folder."""
    ap.add_argument("--publish", action="store_true",
                    help=f"write into {PUBLISHED_DIR.relative_to(PUBLISHED_DIR.parents[1])}/ (the committed results) "
                         f"instead of the git-ignored {SCRATCH_DIR.relative_to(PUBLISHED_DIR.parents[1])}/; "
                         "SSCHSR_BENCH_RESULTS_DIR overrides both")


def use_output_arguments(args: argparse.Namespace) -> Path:
    """Apply ``--publish`` from parsed arguments; returns the results folder."""
    global _publish
    _publish = bool(getattr(args, "publish", False))
    return results_dir()


def _prepare_dir() -> Path:
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    if out == SCRATCH_DIR and out not in _told:
        _told.add(out)
        print(f"results go to {out} (scratch, git-ignored); --publish writes {PUBLISHED_DIR}", file=sys.stderr)
    return out


def environment(device: str) -> dict:
    """Device, library versions and thread counts: every result file carries them."""
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from sschsr_deploy import _C  # noqa: F401

        env["native_extension"] = True
        env["native_cuda"] = bool(_C.cuda_built())
        env["openmp_threads"] = int(_C.openmp_max_threads())
    except ImportError:
        env["native_extension"] = False
    return env


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``, ``RssAnon``); 0 when the process has exited or the
    field is absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def time_fn(fn: Callable[[], object], device: str, warmup: int = 2, repeat: int = 5, min_time: float = 0.0) -> dict:
    """Median / min wall time in milliseconds of ``fn()`` (synchronising CUDA around every call)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def write_json(name: str, payload: dict) -> Path:
    """Write ``<results_dir()>/<name>.json`` atomically (temp file + rename)."""
    out = _prepare_dir()
    path = out / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
    return path


def bar_chart(name: str, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str) -> Path | None:
    """Grouped bar chart ``<results_dir()>/<name>.png``; returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, groups, rotation=15, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = _prepare_dir()
    path = out / f"{name}.png"
    tmp = out / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
