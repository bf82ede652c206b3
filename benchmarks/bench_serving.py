"""Load benchmark of the Triton server (``sschsr_deploy.serving``) against the in-process Pipeline, same run.

A server on 127.0.0.1 (free ports); for each client count (default 1 2 4 8) that many threads, each with its own
:class:`~sschsr_deploy.serving.Client`, send scenes back to back, bounded by --requests per client and --max-seconds
per level. Every response is checked against the in-process :class:`~sschsr_deploy.runtime.Pipeline`'s output for
the same scene (relative error ≤ 1e-6): lost (an error) and wrong responses are counted and must be zero. Reported
per level: latency p50 / p90 / p99, scenes/s, HR MPix/s, and the overhead ratio against the in-process pipeline
(latency at one client / in-process latency). Writes ``serving_<device>.json`` and ``.png`` via benchmarks/common.py.

    PYTHONPATH=. python benchmarks/bench_serving.py                      # tiny-x4, LR 16x16x31, CPU
    PYTHONPATH=. python benchmarks/bench_serving.py --instances 2 --threads 1 --clients 1 2 4 --requests 4
    PYTHONPATH=. python benchmarks/bench_serving.py --servers 2x1 1x2 1x2/b8 2x1/b4   # configurations side by side

``--servers`` runs several server configurations one after the other in the same run, on the same scenes and
against the same in-process baseline: ``IxT`` is I instances x T threads, ``/bN`` serves batched (``--batch-requests
N``, N windows per forward pass, ``--max-queue-delay-us`` of waiting for requests to join; ``/dUS`` sets that delay
for this configuration). Then the JSON is
``serving_batching_<device>.json`` with one entry per configuration; without it, ``serving_<device>.json``.
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
    together: list[int] = []
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
                    hr, meta = client.infer(*data[j])
                except Exception as exc:
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                bad = hr.shape != expected[j].shape or rel_err(hr, expected[j]) > tolerance
                with lock:
                    latencies.append(dt)
                    wrong += int(bad)
                    together.append(int(meta.get("run_together", {}).get("scenes", 1)))

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
        "scenes_run_together_mean": round(statistics.fmean(together), 2) if together else None,
    }


def parse_server(spec: str) -> dict:
    """``"2x1"`` → 2 instances x 1 thread; ``"1x2/b8"`` → 1 instance x 2 threads, batched by 8; ``"2x1/b4/d0"``:
    batched with a max queue delay of 0 us (default: ``--max-queue-delay-us``)."""
    try:
        shape, *options = spec.split("/")
        instances, threads = (int(v) for v in shape.split("x"))
        batch_requests, delay = 0, None
        for option in options:
            if option[:1] == "b":
                batch_requests = int(option[1:])
            elif option[:1] == "d":
                delay = int(option[1:])
            else:
                raise ValueError
        if instances < 1 or threads < 1 or batch_requests < 0 or (delay is not None and (delay < 0 or
                                                                                         not batch_requests)):
            raise ValueError
    except ValueError:
        raise SystemExit(f"--servers: expected IxT, IxT/bN or IxT/bN/dUS (e.g. 2x1, 1x2/b8, 2x1/b4/d0); "
                         f"got {spec!r}") from None
    return {"name": spec, "instances": instances, "threads": threads, "batch_requests": batch_requests,
            "max_queue_delay_us": delay}


def run_server(args: argparse.Namespace, config: dict, data: list, expected: list, inprocess: dict) -> dict:
    """One server configuration: start it, warm it up, run every client level; its levels and start-up time."""
    from sschsr_deploy.serving import Server

    options = {}
    if config["batch_requests"]:
        delay = config.get("max_queue_delay_us")
        options = {"batch_requests": config["batch_requests"], "batch": config["batch_requests"],
                   "max_queue_delay_us": args.max_queue_delay_us if delay is None else delay}
    levels = []
    t_start = time.perf_counter()
    with Server(args.weights, instances=config["instances"], threads=config["threads"], device=args.device,
                exit_timeout=10, **options) as server:
        startup_s = round(time.perf_counter() - t_start, 2)
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        run_level(url, args.protocol, 1, 1, args.max_seconds, data, expected, args.tolerance)  # warm-up
        for clients in args.clients:
            level = run_level(url, args.protocol, clients, args.requests, args.max_seconds, data, expected,
                              args.tolerance)
            level["overhead_ratio_p50"] = round(level["latency_ms"]["p50"] / inprocess["latency_ms"]["p50"], 3)
            level["throughput_ratio"] = round(level["scenes_per_s"] / inprocess["scenes_per_s"], 3)
            levels.append(level)
            print(f"{config['name']}, {clients} client(s): p50 {level['latency_ms']['p50']} ms p99 "
                  f"{level['latency_ms']['p99']} ms, {level['scenes_per_s']} scenes/s, together "
                  f"{level['scenes_run_together_mean']}, lost {level['lost']}, wrong {level['wrong']}",
                  file=sys.stderr)
    return {**config, "server_startup_s": startup_s, "levels": levels}


def merge_rounds(rounds: list[dict]) -> dict:
    """One configuration's rounds → per client level the median of each number (every round's kept under
    ``rounds``); lost / wrong summed."""
    if len(rounds) == 1:
        return rounds[0]
    levels = []
    for k, first in enumerate(rounds[0]["levels"]):
        same = [r["levels"][k] for r in rounds]
        level = {**first, "lost": sum(v["lost"] for v in same), "wrong": sum(v["wrong"] for v in same),
                 "responses": sum(v["responses"] for v in same), "errors": [e for v in same for e in v["errors"]][:5]}
        for key in ("scenes_per_s", "hr_mpix_per_s", "wall_s", "overhead_ratio_p50", "throughput_ratio",
                    "scenes_run_together_mean"):
            values = [v[key] for v in same if v.get(key) is not None]
            level[key] = round(statistics.median(values), 5) if values else None
        level["latency_ms"] = {q: round(statistics.median(v["latency_ms"][q] for v in same), 2)
                               for q in ("p50", "p90", "p99")}
        level["rounds"] = [{"scenes_per_s": v["scenes_per_s"], "p50_ms": v["latency_ms"]["p50"]} for v in same]
        levels.append(level)
    return {**rounds[0], "levels": levels, "rounds": len(rounds),
            "server_startup_s": statistics.median(r["server_startup_s"] for r in rounds)}


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
    ap.add_argument("--batch-requests", type=int, default=0,
                    help="serve batched: up to N queued requests run together (default 0: off)")
    ap.add_argument("--max-queue-delay-us", type=int, default=20_000,
                    help="batched servers: how long a run waits for more requests (default 20000)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the configurations this many times in rotated order; medians reported (default 1)")
    ap.add_argument("--servers", nargs="+", metavar="IxT[/bN]",
                    help="several server configurations in one run (see the module docstring)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)

    import torch

    from sschsr_deploy.runtime import Pipeline

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

    configs = [parse_server(spec) for spec in args.servers] if args.servers else [
        {"name": f"{args.instances}x{args.threads}" + (f"/b{args.batch_requests}" if args.batch_requests else ""),
         "instances": args.instances, "threads": args.threads, "batch_requests": args.batch_requests,
         "max_queue_delay_us": None}]
    runs: dict[str, list[dict]] = {config["name"]: [] for config in configs}
    for r in range(args.rounds):  # rotated order: a slow spell of the machine does not land on one configuration
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            runs[config["name"]].append(run_server(args, config, data, expected, inprocess))
    servers = [merge_rounds(runs[config["name"]]) for config in configs]
    levels = servers[0]["levels"]
    startup_s = servers[0]["server_startup_s"]

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
        "lost_total": sum(level["lost"] for server in servers for level in server["levels"]),
        "wrong_total": sum(level["wrong"] for server in servers for level in server["levels"]),
    }
    if args.servers:
        payload["servers"] = servers
        payload["settings"].update({"servers": args.servers, "max_queue_delay_us": args.max_queue_delay_us,
                                    "rounds": args.rounds})
        for key in ("instances", "threads_per_instance"):
            payload["settings"].pop(key)
        del payload["levels"], payload["server_startup_s"]
        name = f"serving_batching_{args.device}"
        path = write_json(name, payload)
        groups = [f"{level['clients']} client(s)" for level in servers[0]["levels"]]
        png = bar_chart(name, f"Triton serving configurations ({args.weights}, LR {args.lr_side}px, {args.protocol})",
                        groups, {server["name"]: [level["scenes_per_s"] for level in server["levels"]]
                                 for server in servers}, "scenes/s")
        print(f"wrote {path}" + (f" and {png}" if png else ""), file=sys.stderr)
        return 0 if payload["lost_total"] == 0 and payload["wrong_total"] == 0 else 1
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
