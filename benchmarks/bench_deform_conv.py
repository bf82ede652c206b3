"""Benchmark of the modulated deformable convolution: our native kernel vs the reference, torchvision and ONNX Runtime.

The decoder's three DCNs for a 256×256 HR tile (3×3, 8 offset groups, C → C channels): C=256 at 64×64, C=128 at
128×128, C=64 at 256×256, at batch 1 and 8 (``--quick``: batch 1 only), offsets with a standard deviation of 3 px
(patch-match offsets plus a residual) and sigmoid masks. Baselines measured in the same run: the plain-PyTorch
reference, ``torchvision.ops.deform_conv2d`` and ONNX Runtime's ``DeformConv`` (skipped with a note when onnx /
onnxruntime are not importable). On CUDA the floor of each configuration (max of bytes moved / memory bandwidth and
FLOPs / peak throughput of the GPU) and the fraction of it achieved are reported as well.

    python benchmarks/bench_deform_conv.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_output_arguments, bar_chart, environment, time_fn, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference  # noqa: E402

SHAPES = [(256, 64), (128, 128), (64, 256)]  # (channels, side) of the decoder levels 1/4, 1/2, 1/1 of a 256² tile
OFFSET_GROUPS = 8
KERNEL = 3
OFFSET_STD = 3.0


def make_inputs(batch: int, c: int, side: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k = KERNEL * KERNEL
    t = {
        "input": torch.randn(batch, c, side, side, generator=g),
        "offset": OFFSET_STD * torch.randn(batch, 2 * OFFSET_GROUPS * k, side, side, generator=g),
        "mask": torch.sigmoid(torch.randn(batch, OFFSET_GROUPS * k, side, side, generator=g)),
        "weight": torch.randn(c, c, KERNEL, KERNEL, generator=g) / (c * k) ** 0.5,
        "bias": 0.1 * torch.randn(c, generator=g),
    }
    return {n: v.to(device=device, dtype=dtype) for n, v in t.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def native_fn(t: dict) -> Callable[[], torch.Tensor] | None:
    try:
        import sschsr_deploy._C  # noqa: F401
    except ImportError:
        return None
    op = torch.ops.sschsr.modulated_deform_conv2d
    return lambda: op(t["input"], t["offset"], t["mask"], t["weight"], t["bias"], [1, 1], [1, 1], [1, 1], 1,
                      OFFSET_GROUPS)


def reference_fn(t: dict) -> Callable[[], torch.Tensor]:
    return lambda: modulated_deform_conv2d_reference(t["input"], t["offset"], t["mask"], t["weight"], t["bias"], 1, 1,
                                                     1, 1, OFFSET_GROUPS)


def torchvision_fn(t: dict) -> tuple[Callable[[], torch.Tensor] | None, str | None]:
    try:
        from torchvision.ops import deform_conv2d
    except ImportError as e:
        return None, f"torchvision not importable: {e}"
    return lambda: deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"]), None


def onnxruntime_fn(t: dict, device: str) -> tuple[Callable[[], object] | None, str | None]:
    """A one-node ONNX model (DeformConv, opset 19) run by ONNX Runtime; (None, reason) when unavailable."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        return None, f"skipped: onnx/onnxruntime not importable ({e}); not installed on purpose"
    if t["input"].dtype != torch.float32:
        return None, "skipped: only fp32 is benchmarked with ONNX Runtime"
    names = ["input", "weight", "offset", "bias", "mask"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(t[n].shape)) for n in names]
    node = helper.make_node("DeformConv", names, ["out"], kernel_shape=[KERNEL, KERNEL], pads=[1, 1, 1, 1],
                            strides=[1, 1], dilations=[1, 1], group=1, offset_group=OFFSET_GROUPS)
    graph = helper.make_graph([node], "deform_conv", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(t["input"].shape))])
    # IR version 10 (ONNX 1.16): readable by every ONNX Runtime that has DeformConv (opset 19).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    onnx.checker.check_model(model)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=[provider])
    except Exception as e:  # noqa: BLE001 (any ORT failure becomes a note in the results)
        return None, f"skipped: ONNX Runtime could not load the model: {e}"
    if sess.get_providers()[0] != provider:  # ORT silently falls back to the CPU
        return None, f"skipped: ONNX Runtime has no {provider} here (got {sess.get_providers()})"
    feeds = {n: np.ascontiguousarray(t[n].cpu().numpy()) for n in names}
    return lambda: sess.run(None, feeds), None


def gpu_peaks_flops(dtype: torch.dtype) -> float:
    """Nominal dense peak FLOP/s of the current GPU for ``dtype`` (tensor cores for fp16/bf16, SIMT otherwise)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    cc = (props.major, props.minor)
    # dense FLOP per clock per SM: tensor cores (fp16/bf16 in, fp32 accumulate), SIMT fp32, SIMT fp64
    per_sm = {(8, 0): (2048, 128, 64), (9, 0): (4096, 256, 128)}.get(cc, (2048, 256, 4))
    nominal_clock = {(8, 0): 1.41e9, (9, 0): 1.83e9}.get(cc, 1.5e9)
    sm_clock_hz = getattr(props, "clock_rate", 0) * 1e3  # kHz in the properties
    clock = sm_clock_hz if sm_clock_hz > 0 else nominal_clock
    flops_per_clk = {torch.float16: per_sm[0], torch.bfloat16: per_sm[0], torch.float32: per_sm[1],
                     torch.float64: per_sm[2]}[dtype]
    return props.multi_processor_count * clock * flops_per_clk


def gpu_peaks(dtype: torch.dtype) -> dict:
    """Nominal peak memory bandwidth and arithmetic throughput of the current GPU (from its properties and its
    compute capability), plus the copy bandwidth measured now."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    mem_clock_hz = getattr(props, "memory_clock_rate", 0) * 1e3  # kHz in the properties
    bus_bits = getattr(props, "memory_bus_width", 0)
    peak_flops = gpu_peaks_flops(dtype)
    bw_nominal = 2 * mem_clock_hz * bus_bits / 8 if mem_clock_hz and bus_bits else None
    a = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    copy_ms = time_fn(lambda: b.copy_(a), "cuda", warmup=3, repeat=20)["min_ms"]
    bw_copy = 2 * a.numel() / (copy_ms * 1e-3)
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count, "peak_flops": peak_flops, "bandwidth_nominal_Bps": bw_nominal,
            "bandwidth_copy_Bps": bw_copy, "bandwidth_used_Bps": bw_nominal or bw_copy}


def run(device: str, quick: bool) -> dict:
    batches = [1] if quick else [1, 8]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.float16, torch.bfloat16]
    results = {"op": "modulated_deform_conv2d", "environment": environment(device), "configs": [], "notes": []}
    # Other work on the machine slows the multi-threaded implementations most: record the load around the run.
    results["environment"]["loadavg_at_start"] = list(os.getloadavg())
    if not results["environment"].get("native_extension"):
        results["notes"].append("sschsr_deploy._C is not built: only the baselines are measured")
    if device == "cpu":
        # Our CPU kernel dispatches at run time to AVX2+FMA micro-kernels when the CPU has them (else portable code).
        results["environment"]["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    results["notes"].append(
        "reference: measured once per configuration (no warm-up): it is 10-100x slower than the others; "
        "the speed-ups use median times, *_min the minimum times (less sensitive to other load on the machine)")
    peaks: dict | None = {} if device == "cuda" else None  # per dtype
    for dtype in dtypes:
        for batch in batches:
            for c, side in SHAPES:
                name = f"C{c} {side}x{side} b{batch} {str(dtype).replace('torch.', '')}"
                t = make_inputs(batch, c, side, device, dtype)
                k = KERNEL * KERNEL
                flops = 2 * batch * c * c * k * side * side
                elem = t["input"].element_size()
                bytes_moved = elem * sum(v.numel() for v in t.values()) + elem * batch * c * side * side
                cfg = {"name": name, "batch": batch, "channels": c, "height": side, "width": side,
                       "kernel": [KERNEL, KERNEL], "offset_groups": OFFSET_GROUPS, "offset_std": OFFSET_STD,
                       "dtype": str(dtype).replace("torch.", ""), "flops": flops, "bytes_min": bytes_moved,
                       "timings_ms": {}, "skipped": {}}
                ours = native_fn(t)
                out = None
                if ours is not None:
                    out = ours()
                    cfg["timings_ms"]["sschsr"] = time_fn(ours, device, warmup=2, repeat=10, min_time=1.0)
                tv, why = torchvision_fn(t)
                if tv is not None:
                    try:
                        ref_tv = tv()
                        cfg["timings_ms"]["torchvision"] = time_fn(tv, device, warmup=1, repeat=3)
                        if out is not None:
                            cfg["rel_err_vs_torchvision"] = rel_err(out, ref_tv)
                    except RuntimeError as e:  # e.g. a dtype torchvision does not implement on this device
                        cfg["skipped"]["torchvision"] = str(e).splitlines()[0]
                else:
                    cfg["skipped"]["torchvision"] = why
                ort_run, why = onnxruntime_fn(t, device)
                if ort_run is not None:
                    ort_out = torch.from_numpy(ort_run()[0])
                    cfg["timings_ms"]["onnxruntime"] = time_fn(ort_run, device, warmup=1, repeat=3)
                    if out is not None:
                        cfg["rel_err_vs_onnxruntime"] = rel_err(out.cpu(), ort_out)
                else:
                    cfg["skipped"]["onnxruntime"] = why
                cfg["timings_ms"]["reference"] = time_fn(reference_fn(t), device, warmup=0, repeat=1)
                tm = cfg["timings_ms"]
                if "sschsr" in tm:
                    for base in ("torchvision", "reference", "onnxruntime"):
                        if base in tm:
                            cfg[f"speedup_vs_{base}"] = tm[base]["median_ms"] / tm["sschsr"]["median_ms"]
                            cfg[f"speedup_vs_{base}_min"] = tm[base]["min_ms"] / tm["sschsr"]["min_ms"]
                    cfg["gflops_sschsr"] = flops / (tm["sschsr"]["median_ms"] * 1e-3) / 1e9
                    if peaks is not None:
                        if dtype not in peaks:
                            peaks[dtype] = gpu_peaks(dtype)
                        p = peaks[dtype]
                        mem_s = bytes_moved / p["bandwidth_used_Bps"]
                        comp_s = flops / p["peak_flops"]
                        cfg["floor_ms"] = max(mem_s, comp_s) * 1e3
                        cfg["floor_bound"] = "memory" if mem_s >= comp_s else "compute"
                        cfg["fraction_of_floor"] = cfg["floor_ms"] / tm["sschsr"]["median_ms"]
                        cfg["gpu_peaks"] = p
                results["configs"].append(cfg)
                print(summary_line(cfg), flush=True)
                del t, out
    results["environment"]["loadavg_at_end"] = list(os.getloadavg())
    return results


def summary_line(cfg: dict) -> str:
    tm = cfg["timings_ms"]
    parts = [f"{cfg['name']:<24}"]
    for impl in ("sschsr", "torchvision", "onnxruntime", "reference"):
        if impl in tm:
            parts.append(f"{impl} {tm[impl]['median_ms']:9.1f} ms")
    for base in ("torchvision", "reference", "onnxruntime"):
        if f"speedup_vs_{base}" in cfg:
            parts.append(f"x{cfg[f'speedup_vs_{base}']:.1f} vs {base} (min-based x{cfg[f'speedup_vs_{base}_min']:.1f})")
    if "fraction_of_floor" in cfg:
        parts.append(f"floor {cfg['floor_ms']:.3f} ms ({cfg['floor_bound']}), achieved {cfg['fraction_of_floor']:.0%}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="batch 1 only")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    results = run(args.device, args.quick)
    path = write_json(f"deform_conv_{args.device}", results)
    groups = [c["name"] for c in results["configs"]]
    series = {f"vs {b}": [c.get(f"speedup_vs_{b}", 0.0) for c in results["configs"]]
              for b in ("torchvision", "onnxruntime", "reference")}
    series = {k: v for k, v in series.items() if any(v)}
    png = bar_chart(f"deform_conv_{args.device}", f"sschsr modulated_deform_conv2d ({args.device}): speed-up (median)",
                    groups, series, "speed-up (x)") if series else None
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
