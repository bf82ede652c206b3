"""Where the time goes: per-stage and per-operator time of one forward pass, for the torch backend (fp32, bf16 / fp16
autocast, channels-last) or an exported ONNX model on ONNX Runtime, so the next bottleneck is visible.

Stages are the network's top-level parts (``flownet`` = RAFT, ``warpnet``, ``rgb_extractor``, ``similar`` = patch
matching, ``hsi_encoder``, ``decoder``). Torch: stage times from forward hooks (wall clock, CUDA synchronised),
operators from ``torch.profiler`` (self time, the top ``--top``). ONNX Runtime: its own profiler (``enable_profiling``)
— node times summed by operator type, and by stage from the node names the exporter gives (``/decoder/...``).

    python benchmarks/profile_stages.py --weights tiny-x4 --size 256                       # torch fp32
    python benchmarks/profile_stages.py --weights tiny-x4 --size 256 --precision bf16 --channels-last
    python benchmarks/profile_stages.py --onnx tiny_256.onnx --size 256                    # ONNX Runtime
    python benchmarks/profile_stages.py --weights official --precision bf16 --channels-last --compile --by-shape

``--compile`` profiles the ``torch.compile``d forward as ``TorchBackend(compile=True)`` runs it (Inductor with
freezing; the first call compiles, minutes at 256²): its operators are oneDNN's pre-packed convolutions, our custom
operators and Inductor's generated kernels (``graph_0_cpp_fused_*``, named after the ops they fuse, timed by
``cpp.enable_kernel_profile``); the whole forward is one graph, so there are no per-stage times. ``--by-shape`` adds
the convolutions' time per input / weight shape (which convolution is slow, not only that convolutions are). The
process sets the allocator as the package's CLI does (``tune_allocator``), so the profile is of the process users run.

Prints a table and writes ``profile_<backend>_<precision>_<size>.json`` (scratch folder unless ``--publish``).
Numbers on a loaded machine are noisy; the shares are what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import add_output_arguments, environment, results_dir, use_output_arguments, write_json

from sschsr_deploy.runtime.torch_backend import AUTOCAST_DTYPES

STAGES = ("flownet", "warpnet", "rgb_extractor", "similar", "hsi_encoder", "decoder")


def scene_inputs(size: int, bands: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The five model inputs of a synthetic scene (the deployment preprocessing, whole image)."""
    from sschsr_deploy.data import make_scene
    from sschsr_deploy.scene import prepare_inputs

    s = make_scene(seed=seed, size=(size, size), bands=bands, scale=4)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in prepare_inputs(s.lr_hsi, s.ref_rgb, 4).as_tuple())


@contextlib.contextmanager
def stage_timer(model: torch.nn.Module, device: str) -> Iterator[dict[str, float]]:
    """Wall time of each top-level stage (forward hooks; CUDA synchronised at both ends), summed over calls."""
    times: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    handles = []
    for name in STAGES:
        module = getattr(model, name, None)
        if module is None:
            continue

        def pre(_m, _a, name=name):
            sync()
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            sync()
            times[name] += time.perf_counter() - starts.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def conv_shapes(prof: Any, top: int) -> list[dict]:
    """The convolutions' self time grouped by their input shapes (input, weight, ...), the ``top`` slowest."""
    events = [e for e in prof.key_averages(group_by_input_shape=True) if "convolution" in e.key]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "shapes": [list(x) for x in e.input_shapes[:2]], "calls": int(e.count),
             "self_ms": round(e.self_cpu_time_total / 1e3, 3)} for e in events[:top]]


def profile_torch(args: argparse.Namespace) -> dict:
    from sschsr_deploy.weights import load_model

    model, info = load_model(args.weights, random_weights=args.weights in ("tiny", "official"))
    model = model.to(args.device).eval()
    inputs = tuple(t.to(args.device) for t in scene_inputs(args.size, model.config.bands, args.seed))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = tuple(t.contiguous(memory_format=torch.channels_last) for t in inputs)
    dtype = AUTOCAST_DTYPES[args.precision]
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    fn: Any = model
    freezing: Any = contextlib.nullcontext
    if args.compile:
        import torch._inductor.config as inductor_config

        from sschsr_deploy.runtime.torch_backend import _freezing

        inductor_config.cpp.enable_kernel_profile = True  # Inductor's kernels appear in the profile by name
        model.validate_inputs = False  # as TorchBackend runs it: the finiteness check would split the graph
        fn = torch.compile(model, dynamic=False)
        freezing = functools.partial(_freezing, True)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), freezing(), autocast:
            return fn(*inputs)

    t0 = time.perf_counter()
    ref = forward()  # warm-up / compilation (and the fp32 reference when precision is fp32)
    first_call = time.perf_counter() - t0
    # one graph when compiled: the stages' hooks would only break it
    with stage_timer(model, args.device) if not args.compile else contextlib.nullcontext({}) as stages:
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            out = forward()
        total = (time.perf_counter() - t0) / args.repeat
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=args.by_shape) as prof:
        forward()
    key = "self_cuda_time_total" if device_type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
    op_total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    ops = [{"op": e.key, "calls": int(e.count), "self_ms": round(getattr(e, key, 0.0) / 1e3, 3),
            "share": round(getattr(e, key, 0.0) / op_total, 4)} for e in events[:args.top]]
    deviation = None
    if dtype is not None:
        with torch.inference_mode():
            fp32 = model(*inputs)
        deviation = float((out.float() - fp32).norm() / fp32.norm())
    del ref
    return {"backend": "torch", "model": info.get("weights"), "total_s": round(total, 4), "compiled": args.compile,
            "first_call_s": round(first_call, 2),
            "stages_s": {k: round(v / args.repeat, 4) for k, v in stages.items()}, "ops": ops,
            "conv_shapes": conv_shapes(prof, args.top) if args.by_shape else None, "rel_l2_vs_fp32": deviation}


def profile_onnxruntime(args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    sess_in = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess_in.get_inputs()]
    bands = sess_in.get_inputs()[0].shape[1]
    inputs = scene_inputs(args.size, int(bands) if isinstance(bands, int) else 31, args.seed)
    feed = {n: t.numpy().astype(np.float16 if "float16" in i.type else np.float32)
            for n, t, i in zip(names, inputs, sess_in.get_inputs(), strict=True)}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(args.onnx, sess_options=opts, providers=["CPUExecutionProvider"])
        sess.run(None, feed)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            sess.run(None, feed)
        total = (time.perf_counter() - t0) / args.repeat
        trace = json.loads(Path(sess.end_profiling()).read_text())
    stages, ops = aggregate_ort_trace(trace, args.repeat + 1, args.top, node_stages(args.onnx))
    return {"backend": "onnxruntime", "model": Path(args.onnx).name, "total_s": round(total, 4),
            "stages_s": stages, "ops": ops, "rel_l2_vs_fp32": None}


def node_stages(onnx_path: str) -> dict[str, str]:
    """Node name → stage, from the module scopes the exporter records on each node (``pkg.torch.onnx.name_scopes``:
    ``['', 'model', 'model.decoder', ...]`` → ``decoder``); nodes without them are left out (``other``)."""
    import onnx

    out: dict[str, str] = {}
    for node in onnx.load(onnx_path, load_external_data=False).graph.node:
        for prop in node.metadata_props:
            if prop.key != "pkg.torch.onnx.name_scopes":
                continue
            for scope in prop.value.strip("[]").replace("'", "").split(","):
                parts = scope.strip().split(".")
                if len(parts) >= 2 and parts[0] == "model" and parts[1] in STAGES:
                    out[node.name] = parts[1]
                    break
    return out


def _stage_of(node: str, stages_of: dict[str, str]) -> str | None:
    """The stage of a profiled node: ONNX Runtime renames the nodes it rewrites (``node_conv2d_7`` runs as
    ``conv2d_7_nchwc``; a fusion as ``node_MatMul_9/MatmulTransposeFusion/``): try the name, then undo those."""
    base = node.split("/")[0] if not node.startswith("/") else node
    for suffix in ("_nchwc",):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    for name in (node, base, "node_" + base):
        if name in stages_of:
            return stages_of[name]
    return None


def aggregate_ort_trace(trace: list[dict], runs: int, top: int,
                        stages_of: dict[str, str] | None = None) -> tuple[dict[str, float], list[dict]]:
    """ONNX Runtime profiler events → (seconds per stage per run, the ``top`` operator types by time per run). Node
    kernel events (``cat == "Node"``, names ``<node>_kernel_time``) are counted; a node's stage comes from
    ``stages_of`` (:func:`node_stages`), else from a path-like name (``/decoder/res3/Conv`` → ``decoder``), else
    ``other``."""
    stages_of = stages_of or {}
    by_op: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    by_stage: dict[str, float] = defaultdict(float)
    for ev in trace:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op][0] += 1
        by_op[op][1] += ev.get("dur", 0) / 1e3  # µs → ms
        node = ev["name"][: -len("_kernel_time")]
        parts = [p for p in node.split("/") if p]
        stage = _stage_of(node, stages_of) or (parts[0] if parts and parts[0] in STAGES else "other")
        by_stage[stage] += ev.get("dur", 0) / 1e3
    op_total = sum(v[1] for v in by_op.values()) or 1.0
    ops = sorted(({"op": k, "calls": int(v[0]) // runs, "self_ms": round(v[1] / runs, 3),
                   "share": round(v[1] / op_total, 4)} for k, v in by_op.items()), key=lambda r: -r["self_ms"])
    return {k: round(v / runs / 1e3, 6) for k, v in by_stage.items()}, ops[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--weights", default="tiny-x4",
                     help="a shipped name, a weights file, or a preset (tiny / official) with random weights")
    src.add_argument("--onnx", help="an exported .onnx model (ONNX Runtime CPU)")
    ap.add_argument("--size", type=int, default=256, help="HR size (square, a multiple of 4)")
    ap.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES), default="fp32", help="torch autocast precision")
    ap.add_argument("--channels-last", action="store_true", help="torch: channels-last memory format")
    ap.add_argument("--compile", action="store_true", help="torch: through torch.compile (Inductor, freezing)")
    ap.add_argument("--by-shape", action="store_true", help="torch: also the convolutions' time per shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    from sschsr_deploy.allocator import tune_allocator

    allocator = tune_allocator()  # as the package's CLI sets its process up
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.onnx and (args.precision != "fp32" or args.channels_last or args.compile or args.by_shape):
        ap.error("--precision / --channels-last / --compile / --by-shape apply to the torch backend (an ONNX "
                 "model's precision is its own)")
    result = profile_onnxruntime(args) if args.onnx else profile_torch(args)
    result.update(size=args.size, precision=args.precision if not args.onnx else "as exported",
                  channels_last=args.channels_last, allocator=allocator, environment=environment(args.device))
    staged = sum(result["stages_s"].values())
    print(f"{result['backend']} {result['model']} {args.size}² {result['precision']}: {result['total_s']:.3f} s "
          f"per forward" + (f", rel. dev. vs fp32 {result['rel_l2_vs_fp32']:.2e}" if result["rel_l2_vs_fp32"] else ""))
    for name, sec in sorted(result["stages_s"].items(), key=lambda kv: -kv[1]):
        print(f"  stage {name:<14} {sec:8.3f} s  {sec / max(staged, 1e-9):6.1%}")
    for op in result["ops"]:
        print(f"  op {op['op'][:40]:<40} {op['self_ms']:10.2f} ms  {op['share']:6.1%}  x{op['calls']}")
    for conv in result.get("conv_shapes") or []:
        print(f"  conv {conv['self_ms']:8.2f} ms  x{conv['calls']:<3} input {conv['shapes'][0]} weight "
              f"{conv['shapes'][1] if len(conv['shapes']) > 1 else '?'}")
    tag = "onnxruntime" if args.onnx else \
        f"torch_{args.precision}{'_cl' if args.channels_last else ''}{'_compiled' if args.compile else ''}"
    write_json(f"profile_{tag}_{args.size}", result)
    print(f"wrote {results_dir() / f'profile_{tag}_{args.size}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
