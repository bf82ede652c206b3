"""``sschsr-deploy serve``: Triton Inference Server with the ``sschsr`` model, in the foreground until SIGINT / SIGTERM
(graceful: in-flight requests finish, up to --exit-timeout s). ``--write-repository DIR`` only writes the model
repository (for a stock ``tritonserver``, e.g. in an NGC container) and exits."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sschsr_deploy.serving.repository import MODEL_NAME, ModelSettings, write_repository

__all__ = ["add_arguments", "run", "settings_from_args"]


def _tile(value: str) -> int | str | None:
    low = value.lower()
    if low in ("auto", "default"):
        return low
    if low in ("none", "whole", "0"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, 'default', 'auto' or 'whole'; got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` options."""
    model = p.add_argument_group("model")
    model.add_argument("--weights", help="a shipped name (tiny-x4, tiny-x8), a .safetensors or official .pth file "
                                         "(torch backend; default tiny-x4)")
    model.add_argument("--engine", metavar="PATH",
                       help="an exported model instead of --weights: .onnx (onnxruntime) or .engine/.plan (tensorrt)")
    model.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"),
                       help="inference backend (default: torch for weights, from the suffix for --engine)")
    model.add_argument("--scale", type=int, help="the scale of an official .pth (weights carry their own)")
    model.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="cpu, or cuda: each instance on a GPU Triton assigns (default cpu)")
    model.add_argument("--gpus", type=int, nargs="+", metavar="ID", help="GPU ids for the instances (default all)")
    model.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"),
                       help="torch: fp32 (default), bf16 or fp16 autocast; an exported model: the precision it must "
                            "have been exported in (default: its own) — docs/precision.md")
    model.add_argument("--compile", action="store_true",
                       help="torch: torch.compile the model; each instance compiles for its one window size (the "
                            "tile; smaller scenes are padded up to it) while it loads — minutes on a CPU, so the "
                            "startup timeout becomes 1800 s unless given (docs/precision.md)")
    model.add_argument("--instances", type=int, default=1,
                       help="model instances (per GPU with --device cuda); each runs one scene at a time (default 1)")
    model.add_argument("--tile", type=_tile, default="default",
                       help="window side in HR px, 'default', 'auto' or 'whole' (default: the pipeline's)")
    model.add_argument("--batch", type=int, default=None,
                       help="windows per forward pass (default 1; with --batch-requests N: N)")
    model.add_argument("--batch-requests", type=int, default=0, metavar="N",
                       help="serve batched: up to N requests queued for an instance run together, their windows "
                            "sharing forward passes (clients send a leading batch dimension; sschsr_deploy's Client "
                            "adds it) — the throughput path for small scenes on a GPU (default 0: one scene per "
                            "request and per run)")
    model.add_argument("--threads", type=int, default=0,
                       help="CPU threads per instance (default 0: the library's default; set it to cores / "
                            "--instances)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-megapixels", type=float, default=4.0,
                        help="refuse scenes whose HR size is above this many megapixels, before any compute "
                             "(default 4: a 2048 x 2048 HR scene, a 520 MB response at 31 bands)")
    limits.add_argument("--min-lr-side", type=int, default=4,
                        help="refuse LR scenes with a side under this many pixels (default 4)")
    limits.add_argument("--max-queue-delay-us", type=int, default=0,
                        help="Triton scheduler: max queue delay in microseconds (dynamic_batching; with "
                             "--batch-requests, how long a run waits for more requests to join it; default 0)")
    limits.add_argument("--queue-timeout-ms", type=int, default=0,
                        help="reject a request that waited in the queue longer than this (default 0: no timeout)")
    limits.add_argument("--max-queue-size", type=int, default=0,
                        help="reject requests beyond this many queued (default 0: unbounded)")
    server = p.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address of the HTTP, gRPC and metrics endpoints (default 127.0.0.1; 0.0.0.0 for all)")
    server.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0: a free one)")
    server.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0: a free one)")
    server.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus metrics port (default 8002; 0: a free one)")
    server.add_argument("--startup-timeout", type=float, default=None,
                        help="seconds to wait for the model to load (default 300; 1800 with --compile)")
    server.add_argument("--exit-timeout", type=int, default=30,
                        help="seconds in-flight requests get to finish after SIGTERM / Ctrl-C (default 30)")
    server.add_argument("--workdir", help="where the model repository and server log go (default: a temp folder)")
    server.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default 0)")
    server.add_argument("--write-repository", metavar="DIR",
                        help="only write the model repository to DIR (for a stock tritonserver) and exit")


def startup_timeout(args: argparse.Namespace) -> float:
    """``--startup-timeout``, or its default: 300 s, 1800 s when the instances compile while they load."""
    if args.startup_timeout is not None:
        return float(args.startup_timeout)
    return 1800.0 if getattr(args, "compile", False) else 300.0


def settings_from_args(args: argparse.Namespace) -> ModelSettings:
    from sschsr_deploy.errors import InputValidationError

    if args.weights and args.engine:
        raise InputValidationError("give --weights or --engine, not both")
    return ModelSettings(
        source=args.engine or args.weights or "tiny-x4", backend=args.backend, device=args.device,
        instances=args.instances, tile=args.tile, threads=args.threads,
        batch=args.batch if args.batch is not None else max(1, args.batch_requests), batch_requests=args.batch_requests,
        max_megapixels=args.max_megapixels, min_lr_side=args.min_lr_side, scale=args.scale, gpus=args.gpus,
        max_queue_delay_us=args.max_queue_delay_us, queue_timeout_us=args.queue_timeout_ms * 1000,
        max_queue_size=args.max_queue_size, precision=getattr(args, "precision", None),
        compile=bool(getattr(args, "compile", False)),
    ).check()


def run(args: argparse.Namespace, prog: str = "sschsr-deploy") -> int:
    """Run ``serve``; returns the exit status (0 after SIGINT / SIGTERM; 1 when the server could not start or died on
    its own; bad options raise :class:`~sschsr_deploy.errors.InputValidationError`: 2)."""
    from pathlib import Path

    from sschsr_deploy.serving.server import serve

    settings = settings_from_args(args)
    if args.write_repository:
        settings.sys_path = [str(Path(__file__).resolve().parents[2])]
        path = write_repository(args.write_repository, settings)
        print(json.dumps({"model_repository": str(Path(args.write_repository).resolve()), "model": str(path)}))
        return 0

    def ready(server: Any) -> None:
        print(json.dumps({"ready": True, "model": MODEL_NAME, **{k: v for k, v in server.describe().items()
                                                                 if k in ("http", "grpc", "metrics", "pid")}}),
              flush=True)
        print(f"{prog}: serving {settings.source} as '{MODEL_NAME}' on http {server.http_url}, grpc "
              f"{server.grpc_url}, metrics {server.metrics_url} (Ctrl-C or SIGTERM to stop)", file=sys.stderr)

    from sschsr_deploy.serving.handler import one_line
    from sschsr_deploy.serving.server import ServingUnavailableError

    try:
        return serve(settings=settings, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                     metrics_port=args.metrics_port, startup_timeout=startup_timeout(args),
                     exit_timeout=args.exit_timeout, workdir=args.workdir, log_verbose=args.log_verbose,
                     ready_callback=ready)
    except ServingUnavailableError as exc:  # not the arguments' fault (binary missing, model failed to load): 1
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
