"""Scale-out over Ray on one machine: 1 and 2 workers against the single-process pipeline, in the same run.

Two parts, written to ``scale_out_<device>.json`` (+ ``scale_out_<device>.png``) in ``results/local/``
(``--publish``: ``results/``):

1. ``windows`` — one scene (``--lr-size`` LR px square, x4, ``--tile`` px windows) through
   :class:`~sschsr_deploy.distributed.RayPipeline` with 1 and 2 workers and through the plain
   :class:`~sschsr_deploy.runtime.Pipeline` (torch at the workers' thread count, 1), each ``run_files`` into a .npy;
   reported: wall seconds, windows per second, speed-up and efficiency against the single process, the overhead per
   window of 1 worker against the single process, and whether the outputs are equal bit for bit. Beside them, the
   driver's own per-window costs, measured directly: preparing a window's five inputs (``PreparedScene.window``),
   their bytes and the output's, and a Ray round trip of those bytes to an actor that does nothing (``ray.put`` of
   the inputs + the call + ``ray.get`` of an output-sized array).
2. ``scenes`` — ``--scenes`` small scenes through :func:`~sschsr_deploy.distributed.run_scenes_ray` with 1 and 2
   workers and through :func:`sschsr_deploy.batch.run_scenes` (one process).

The model is the shipped ``tiny-x4``; the device is the CPU (the Ray local cluster gets ``--cpus`` CPUs, one per
worker, torch at 1 thread in each). Worker start-up (process + model load) is timed apart and left out of the rates.

Usage::

    python benchmarks/bench_scale_out.py                  # LR 96 px (HR 384, 25 windows of 128), 4 scenes
    python benchmarks/bench_scale_out.py --lr-size 64 --scenes 2
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_output_arguments, bar_chart, environment, use_output_arguments, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _scene(root: Path, name: str, n: int, seed: int) -> tuple[Path, Path]:
    import cv2

    y, x = np.mgrid[0:n, 0:n] / n
    cube = np.stack([0.4 + 0.2 * np.sin(2 * np.pi * (seed + 1) * x + k / 6) * np.cos(2 * np.pi * y)
                     for k in range(31)], axis=-1).astype(np.float32)
    (root / "lr").mkdir(exist_ok=True)
    (root / "rgb").mkdir(exist_ok=True)
    np.save(root / "lr" / f"{name}.npy", cube)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:4 * n, 0:4 * n] / (4 * n)
    rgb = np.stack([xx, yy, (xx * yy + rng.random((4 * n, 4 * n)) * 0.1) % 1.0], axis=-1) * 255
    cv2.imwrite(str(root / "rgb" / f"{name}.png"), rgb.astype(np.uint8))
    return root / "lr" / f"{name}.npy", root / "rgb" / f"{name}.png"


class Echo:
    """An actor that returns an output-sized array for any inputs: the Ray round trip without the network."""

    def run(self, out_shape, *inputs):
        return np.zeros(out_shape, np.float32)


def driver_costs(spec, hsi: Path, ref: Path, ray) -> dict:
    from sschsr_deploy.io.hsi import read_hsi
    from sschsr_deploy.io.rgb import read_rgb

    pipe = spec.build()
    with read_hsi(hsi) as cube:
        scene = pipe.prepare(cube, read_rgb(ref))
        plan = pipe.plan(scene.height, scene.width)
        w = plan.windows[len(plan) // 2]
        t = time.perf_counter()
        for _ in range(5):
            inputs = scene.window(w.y0, w.y1, w.x0, w.x1)
        prep = (time.perf_counter() - t) / 5
    batch = tuple(a[None] for a in inputs)
    out_shape = (1, pipe.backend.bands, w.h, w.w)
    echo = ray.remote(Echo).options(num_cpus=0).remote()
    ray.get(echo.run.remote(out_shape, *batch))
    t = time.perf_counter()
    for _ in range(10):
        ray.get(echo.run.remote(out_shape, *batch))
    rtt = (time.perf_counter() - t) / 10
    ray.kill(echo)
    t = time.perf_counter()
    x = [torch.from_numpy(a) for a in batch]
    with torch.inference_mode():
        pipe.backend.run(*x)
    fwd = time.perf_counter() - t
    in_bytes = sum(a.nbytes for a in inputs)
    return {"window": [w.h, w.w], "prepare_inputs_ms": round(prep * 1e3, 2), "inputs_bytes": in_bytes,
            "inputs_pickled_bytes": len(pickle.dumps(inputs, protocol=5)),
            "output_bytes": int(np.prod(out_shape)) * 4, "ray_round_trip_ms": round(rtt * 1e3, 2),
            "forward_ms_1_thread": round(fwd * 1e3, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr-size", type=int, default=96, help="LR side of the large scene (HR = 4x)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--scenes", type=int, default=4, help="small scenes (LR 32 px) for the scenes part; 0: skip")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (= the most workers)")
    add_output_arguments(ap)
    args = ap.parse_args()
    use_output_arguments(args)

    import ray

    from sschsr_deploy.batch import jobs_from_folders, run_scenes
    from sschsr_deploy.distributed import ModelSpec, RayPipeline, WorkerPool, run_scenes_ray

    torch.set_num_threads(1)
    spec = ModelSpec("tiny-x4", pipeline={"tile": args.tile}, threads=1)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    result: dict = {"environment": environment("cpu"), "model": "tiny-x4", "tile": args.tile,
                    "load_average_at_start": list(os.getloadavg())}
    workers = [w for w in (1, 2) if w <= args.cpus]
    with tempfile.TemporaryDirectory(prefix="bench_scale_out_") as tmp:
        root = Path(tmp)
        hsi, ref = _scene(root, "big", args.lr_size, 0)
        result["driver_per_window"] = driver_costs(spec, hsi, ref, ray)
        print("driver per window:", result["driver_per_window"], flush=True)

        # -- part 1: one scene's windows
        single = spec.build()
        t = time.perf_counter()
        single.run_files(hsi, ref, None, root / "single.npy")
        t_single = time.perf_counter() - t
        n = len(single.last_plan)
        expected = np.load(root / "single.npy")
        rows = [{"executor": "single process", "workers": 1, "seconds": round(t_single, 3),
                 "windows_per_s": round(n / t_single, 3)}]
        for k in workers:
            t = time.perf_counter()
            pool = WorkerPool(spec, workers=k)
            start = time.perf_counter() - t
            try:
                pipe = RayPipeline(pool, quiet=True)
                t = time.perf_counter()
                pipe.run_files(hsi, ref, None, root / f"ray{k}.npy")
                dt = time.perf_counter() - t
            finally:
                pool.close()
            rows.append({"executor": "ray", "workers": k, "seconds": round(dt, 3), "windows_per_s": round(n / dt, 3),
                         "speedup_vs_single": round(t_single / dt, 3),
                         "efficiency": round(t_single / dt / k, 3), "worker_start_s": round(start, 2),
                         "bit_exact": bool(np.array_equal(np.load(root / f"ray{k}.npy"), expected)),
                         "stats": dict(pipe.executor.stats)})
            print(rows[-1], flush=True)
        one = next(r for r in rows if r["executor"] == "ray" and r["workers"] == 1)
        result["windows"] = {"hr": [4 * args.lr_size] * 2, "windows": n, "runs": rows,
                             "overhead_per_window_ms_1_worker": round((one["seconds"] - t_single) / n * 1e3, 1)}

        # -- part 2: many scenes
        if args.scenes:
            sroot = root / "many"
            sroot.mkdir()
            for i in range(args.scenes):
                _scene(sroot, f"s{i}", 32, i + 1)
            srows = []
            out = sroot / "out_single"
            out.mkdir()
            t = time.perf_counter()
            run_scenes(single, jobs_from_folders(sroot / "lr", sroot / "rgb", out), progress=False)
            t1 = time.perf_counter() - t
            srows.append({"executor": "single process", "workers": 1, "seconds": round(t1, 3)})
            for k in workers:
                out = sroot / f"out_ray{k}"
                out.mkdir()
                with WorkerPool(spec, workers=k) as pool:
                    t = time.perf_counter()
                    s = run_scenes_ray(pool, jobs_from_folders(sroot / "lr", sroot / "rgb", out), progress=False)
                    dt = time.perf_counter() - t
                same = all(np.array_equal(np.load(out / f"s{i}.npy"), np.load(sroot / "out_single" / f"s{i}.npy"))
                           for i in range(args.scenes))
                srows.append({"executor": "ray", "workers": k, "seconds": round(dt, 3),
                              "speedup_vs_single": round(t1 / dt, 3), "efficiency": round(t1 / dt / k, 3),
                              "ok": s.ok, "bit_exact": same})
                print(srows[-1], flush=True)
            result["scenes"] = {"scenes": args.scenes, "lr": [32, 32], "runs": srows}
    ray.shutdown()
    result["load_average_at_end"] = list(os.getloadavg())
    path = write_json("scale_out_cpu", result)
    groups = [f"{r['executor']} x{r['workers']}" for r in result["windows"]["runs"]]
    series = {"windows / s (one scene)": [r["windows_per_s"] for r in result["windows"]["runs"]]}
    png = bar_chart("scale_out_cpu", f"Ray scale-out, tiny-x4, CPU ({os.cpu_count()} cores)", groups, series,
                    "windows per second")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
