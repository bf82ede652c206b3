"""Load benchmark of the Triton server (``sschsr_deploy.serving``) against the in-process Pipeline, same run.

A server on 127.0.0.1 (free ports); for each client count (default 1 2 4 8) that many threads, each with its own
:class:`~sschsr_deploy.serving.Client`, send scenes back to back, bounded by --requests per client and --max-seconds
per level. Every response is checked against the in-process :class:`~sschsr_deploy.runtime.Pipeline`'s output for
the same scene (relative error ≤ 1e-6): lost (an error) and wrong responses are counted and must be zero. Reported
per level: latency p50 / p90 / p99, scenes/s, HR MPix/s, and the overhead ratio against the in-process pipeline
(latency at one client / in-process latency). Writes ``serving_<device>.json`` and ``.png`` via benchmarks/common.py.

    PYTHONPATH=. python benchmarks/bench_serving.py                      # tiny-x4, LR 16x16x31, CPU
    PYTHONPATH=. python benchmarks/bench_serving.py --instances 2 --threads 1 --clients 1 2 4 --requests 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_output_arguments, bar_chart, environment, use_output_arguments, write_json  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def scenes(count: int, lr_side: int, bands: int, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        out.append((rng.random((lr_side, lr_side, bands), dtype=np.float32),
                    rng.integers(0, 256, (lr_side * scale, lr_side * scale, 3), dtype=np.uint8)))
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-12))


def run_level(url: str, protocol: str, clients: int, requests: int, max_seconds: float, data: list, expected: list,
              tolerance: float) -> dict:
    from sschsr_deploy.serving import Client

    latencies: list[float] = []
    lost: list[str] = []
    wrong = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def work(i: int) -> None:
        nonlocal wrong
        try:
            client = Client(url, protocol)
        except Exception as exc:
            with lock:
                lost.append(f"{type(exc).__name__}: {exc}")
            return
        with client:
            for k in range(requests):
                if time.perf_counter() > deadline:
                    break
                j = (i + k) % len(data)
                t0 = time.perf_counter()
                try:
                    hr, _ = client.infer(*data[j])
                except Exception as exc:
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                bad = hr.shape != expected[j].shape or rel_err(hr, expected[j]) > tolerance
                with lock:
                    latencies.append(dt)
                    wrong += int(bad)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    hr_mpix = expected[0].shape[0] * expected[0].shape[1] / 1e6
    done = len(latencies)
    return {
        "clients": clients, "protocol": protocol, "responses": done, "lost": len(lost), "wrong": wrong,
        "errors": lost[:5], "wall_s": round(wall, 3),
        "latency_ms": {"p50": round(percentile(latencies, 50) * 1e3, 2),
                       "p90": round(percentile(latencies, 90) * 1e3, 2),
                       "p99": round(percentile(latencies, 99) * 1e3, 2),
                       "mean": round(statistics.fmean(latencies) * 1e3, 2) if latencies else None},
        "scenes_per_s": round(done / wall, 3),
        "hr_mpix_per_s": round(done * hr_mpix / wall, 5),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="tiny-x4", help="shipped name, weights file or exported .onnx")
    ap.add_argument("--lr-side", type=int, default=16, help="LR scene side in px (default 16)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent clients per level")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level (default 4)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time bound per level (default 60)")
    ap.add_argument("--inprocess-runs", type=int, default=5, help="in-process runs for the baseline (default 5)")
    ap.add_argument("--instances", type=int, default=1, help="server model instances (default 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per instance, and of the in-process pipeline (default 1)")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="grpc", help="client protocol (default grpc)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tolerance", type=float, default=1e-6, help="max relative error vs in-process (default 1e-6)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)

    import torch

    from sschsr_deploy.runtime import Pipeline
    from sschsr_deploy.serving import Server

    torch.set_num_threads(args.threads)
    device = "cuda:0" if args.device == "cuda" else "cpu"
    pipe = Pipeline.from_pretrained(args.weights, quiet=True, device=device)
    scale = pipe.resolve_scale(None)
    data = scenes(4, args.lr_side, pipe.backend.bands, scale)
    expected = [pipe.run(lr, ref) for lr, ref in data]  # also the warm-up
    times = []
    for k in range(args.inprocess_runs):
        t0 = time.perf_counter()
        pipe.run(*data[k % len(data)])
        times.append(time.perf_counter() - t0)
    hr_mpix = expected[0].shape[0] * expected[0].shape[1] / 1e6
    inprocess = {"runs": len(times), "latency_ms": {"p50": round(percentile(times, 50) * 1e3, 2),
                                                     "p90": round(percentile(times, 90) * 1e3, 2)},
                 "scenes_per_s": round(len(times) / sum(times), 3),
                 "hr_mpix_per_s": round(len(times) * hr_mpix / sum(times), 5)}
    print(f"in-process: p50 {inprocess['latency_ms']['p50']} ms, {inprocess['scenes_per_s']} scenes/s", file=sys.stderr)

    levels = []
    t_start = time.perf_counter()
    with Server(args.weights, instances=args.instances, threads=args.threads, device=args.device,
                exit_timeout=10) as server:
        startup_s = round(time.perf_counter() - t_start, 2)
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        run_level(url, args.protocol, 1, 1, args.max_seconds, data, expected, args.tolerance)  # warm-up
        for clients in args.clients:
            level = run_level(url, args.protocol, clients, args.requests, args.max_seconds, data, expected,
                              args.tolerance)
            level["overhead_ratio_p50"] = round(level["latency_ms"]["p50"] / inprocess["latency_ms"]["p50"], 3)
            level["throughput_ratio"] = round(level["scenes_per_s"] / inprocess["scenes_per_s"], 3)
            levels.append(level)
            print(f"{clients} client(s): p50 {level['latency_ms']['p50']} ms p99 {level['latency_ms']['p99']} ms, "
                  f"{level['scenes_per_s']} scenes/s, lost {level['lost']}, wrong {level['wrong']}", file=sys.stderr)

    payload = {
        "benchmark": "serving",
        "environment": environment(device),
        "settings": {"weights": args.weights, "lr_shape": [args.lr_side, args.lr_side, pipe.backend.bands],
                     "hr_shape": list(expected[0].shape), "scale": scale, "instances": args.instances,
                     "threads_per_instance": args.threads, "protocol": args.protocol, "clients": args.clients,
                     "requests_per_client": args.requests, "max_seconds_per_level": args.max_seconds,
                     "tolerance": args.tolerance},
        "server_startup_s": startup_s,
        "inprocess": inprocess,
        "levels": levels,
        "lost_total": sum(level["lost"] for level in levels),
        "wrong_total": sum(level["wrong"] for level in levels),
    }
    name = f"serving_{args.device}"
    path = write_json(name, payload)
    groups = [f"{level['clients']} client(s)" for level in levels]
    png = bar_chart(name, f"Triton serving vs in-process ({args.weights}, LR {args.lr_side}px, {args.protocol})",
                    groups, {"p50 ms": [level["latency_ms"]["p50"] for level in levels],
                             "p99 ms": [level["latency_ms"]["p99"] for level in levels],
                             "in-process p50 ms": [inprocess["latency_ms"]["p50"]] * len(levels)},
                    "latency (ms)")
    print(f"wrote {path}" + (f" and {png}" if png else ""), file=sys.stderr)
    return 0 if payload["lost_total"] == 0 and payload["wrong_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
