"""Benchmark of the native spectral attention (torch.ops.sschsr.spectral_attention) against the PyTorch reference.

Shapes are the decoder's attention layers for an HR image of side S: res1 (C = 256, 8 heads, at S/4), res2 (C = 128,
4 heads, at S/2), res3 (C = 64, 1 head, at S). Both implementations run in this process on the same inputs; the
reference (``spectral_attention_reference``: F.normalize, matmul, softmax, matmul) is the baseline. The bandwidth floor
is the time to move the op's unavoidable bytes (read q, k, v once, write out once) at the memory bandwidth measured in
the same run with a large tensor copy (read + write).

    python benchmarks/bench_spectral_attention.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import add_output_arguments, bar_chart, environment, time_fn, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy.ops import spectral_attention_reference  # noqa: E402

LAYERS = [("res1", 256, 8, 4), ("res2", 128, 4, 2), ("res3", 64, 1, 1)]  # name, channels, heads, downscale


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large out-of-place copy (counts the read and the write)."""
    n = 64 * 2**20 // 4  # 64 MiB of float32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeat=7)
    return 2 * src.numel() * 4 / (t["min_ms"] / 1e3)


def interleaved(fns: dict, device: str, rounds: int) -> dict:
    """Time several callables alternately (one call each per round), so load changes on a shared machine hit all of
    them alike; returns time_fn-style statistics per name."""
    import statistics

    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_fn(fn, device, warmup=0, repeat=1)["median_ms"])
    return {n: {"median_ms": statistics.median(v), "min_ms": min(v), "runs": len(v)} for n, v in samples.items()}


def measure(hr: int, name: str, c: int, heads: int, side: int, dtype: torch.dtype, device: str, bw: float) -> dict:
    """One configuration: native vs reference time, agreement and the bandwidth floor."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, c, side, side, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    tau = torch.ones(heads, 1, 1, device=device, dtype=dtype)
    native = functools.partial(torch.ops.sschsr.spectral_attention, q, k, v, tau, heads)
    ref = functools.partial(spectral_attention_reference, q, k, v, tau, heads)
    big = side * side * c >= 2**24
    t = interleaved({"native": native, "reference": ref}, device, rounds=3 if big else 7)
    out, want = native(), ref()
    err = ((out.double() - want.double()).norm() / want.double().norm()).item()
    moved = 4 * q.numel() * q.element_size()
    floor_ms = moved / bw * 1e3
    return {
        "hr": hr,
        "layer": name,
        "channels": c,
        "heads": heads,
        "height": side,
        "width": side,
        "dtype": str(dtype).removeprefix("torch."),
        "native": t["native"],
        "reference": t["reference"],
        "speedup_vs_reference": t["reference"]["median_ms"] / t["native"]["median_ms"],
        "speedup_vs_reference_min": t["reference"]["min_ms"] / t["native"]["min_ms"],
        "rel_err_vs_reference": err,
        "bytes_moved": moved,
        "bandwidth_floor_ms": floor_ms,
        "native_fraction_of_floor": floor_ms / t["native"]["median_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="HR 256² only")
    add_output_arguments(ap)
    args = ap.parse_args()
    use_output_arguments(args)
    device = args.device
    import sschsr_deploy._C  # noqa: F401  (registers torch.ops.sschsr)

    sizes = [256] if args.quick else [256, 512, 1024]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.float16, torch.bfloat16]
    load_avg = os.getloadavg()
    bw = copy_bandwidth(device)
    print(f"measured copy bandwidth: {bw / 1e9:.1f} GB/s")
    configs = []
    for hr in sizes:
        for name, c, heads, down in LAYERS:
            for dtype in dtypes:
                cfg = measure(hr, name, c, heads, hr // down, dtype, device, bw)
                configs.append(cfg)
                print(
                    f"HR {hr:4d} {name} C={c:3d} heads={heads} {cfg['height']}×{cfg['width']} {cfg['dtype']:8s} "
                    f"native {cfg['native']['median_ms']:9.2f} ms  reference {cfg['reference']['median_ms']:9.2f} ms  "
                    f"ratio {cfg['speedup_vs_reference']:.2f}× (min {cfg['speedup_vs_reference_min']:.2f}×)  "
                    f"floor {cfg['bandwidth_floor_ms']:.2f} ms  "
                    f"rel.err {cfg['rel_err_vs_reference']:.1e}"
                )
    payload = {
        "benchmark": "spectral_attention",
        "environment": environment(device),
        "baseline": "sschsr_deploy.ops.spectral_attention_reference (PyTorch: normalize, matmul, softmax, matmul), "
        "measured in the same run on the same inputs",
        "timing": "benchmarks.common.time_fn, native and reference calls interleaved round by round (shared machine); "
        "median / min wall time, CUDA synchronised around each call",
        "bandwidth_floor": "4·B·C·H·W·element_size bytes (read q, k, v, write out) / copy bandwidth measured in "
        "this run",
        "copy_bandwidth_GBps": bw / 1e9,
        "load_average_at_start": load_avg,
        "ratios": "speedup_vs_reference = reference median / native median; speedup_vs_reference_min = ratio of the "
        "minima (less sensitive to other jobs on a shared machine)",
        "configs": configs,
    }
    path = write_json(f"spectral_attention_{device}", payload)
    groups = [f"{c['hr']}² {c['layer']} {c['dtype']}" for c in configs]
    bar_chart(
        f"spectral_attention_{device}",
        f"Spectral attention on {device}: time per call (lower is better)",
        groups,
        {
            "native": [c["native"]["median_ms"] for c in configs],
            "reference": [c["reference"]["median_ms"] for c in configs],
        },
        "ms",
    )
    ratios = [c["speedup_vs_reference"] for c in configs]
    print(f"speed-up vs reference (medians): min {min(ratios):.2f}×, max {max(ratios):.2f}×  → {path}")


if __name__ == "__main__":
    main()
