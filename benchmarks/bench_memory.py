"""Peak memory of a whole ``sschsr-deploy infer`` run versus scene size: is memory flat in the scene size?

For each HR size (default 512², 1024², 2048², 4096²; ``--sizes 8192`` for a one-off larger run) the parent writes a
synthetic LR cube (.npy, memory-mapped by the reader) and reference (.png), then runs the real command line in a fresh
process::

    python -m sschsr_deploy.cli infer --hsi lr.npy --ref ref.png --out out.npy --weights tiny-x4 --tile 128 --quiet

and records that process's peak resident memory: ``VmHWM`` (the kernel's high-water mark of its resident memory,
libraries and memory-mapped file pages included) read from ``/proc/<pid>/status`` every 20 ms, the peak of
``RssAnon`` (heap, tensors, arrays) sampled with it, and ``ru_maxrss`` from ``os.wait4``. The inputs are written by
a separate process, so that the parent stays small: Linux carries the parent's resident memory at ``fork`` into the
child's ``ru_maxrss`` (it then overstates the child's own peak), while ``VmHWM`` belongs to the new program. Ratios
are taken against the smallest size of the same run (512² by default); the goal: peak RSS at 4096² within 1.2x of
512².

``--deviation SIZE:SEED[:nodata] ...`` also measures what streaming costs in accuracy: on synthetic held-out scenes
(scale 4; ``nodata`` zeroes a corner of the cube and blackens it in the photo, 1/15 of the image) the streamed
histogram matching (default ``SKETCH_CAPACITY``) against the exact one (a sketch that never merges: scikit-image's
matching, bit for bit), for ``hsi_rgb_sr`` over the whole image and for the ``tiny-x4`` output on four 256² windows
(key ``matching_deviation``; ``--skip-memory`` runs only this and keeps the file's memory results).

Writes ``memory_<device>.json`` and ``memory_<device>.png`` to ``results/local/`` (``--publish``: ``results/``;
``SSCHSR_BENCH_RESULTS_DIR`` overrides both).

Usage::

    python benchmarks/bench_memory.py                       # 512² .. 4096², tiny-x4, tile 128, CPU
    python benchmarks/bench_memory.py --sizes 512 8192      # one larger run, outside CI
    python benchmarks/bench_memory.py --skip-memory --deviation 1024:5 1024:6:nodata 2048:7 2048:8:nodata
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    add_output_arguments,
    bar_chart,
    environment,
    proc_status_kib,
    results_dir,
    use_output_arguments,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (512, 1024, 2048, 4096)
#: The issue's goal: peak RSS at 4096² within this factor of the 512² run.
GOAL_RATIO = 1.2
GOAL_SIZE = 4096



def run_infer(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float,
              interval: float = 0.02) -> dict:
    """Run ``cmd``; return its exit code, wall seconds, ``ru_maxrss`` (KiB, this child only) and sampled peaks."""
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    peak_anon = peak_hwm = 0
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4: the rusage of this child alone
            if pid == proc.pid:
                break
            peak_anon = max(peak_anon, proc_status_kib("RssAnon", proc.pid))
            peak_hwm = max(peak_hwm, proc_status_kib("VmHWM", proc.pid))
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(interval)
    except BaseException:
        proc.kill()
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        raise
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped above: tell Popen
    return {"returncode": code, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 2),
            "ru_maxrss_kib": int(usage.ru_maxrss), "peak_rss_anon_kib": peak_anon, "sampled_vm_hwm_kib": peak_hwm}


def measure(size: int, args: argparse.Namespace, folder: Path) -> dict:
    """One size: inputs written here, ``infer`` run in a fresh process."""
    subprocess.run([sys.executable, __file__, "--make-inputs", str(size), str(folder)], check=True)
    hsi, ref = folder / "lr.npy", folder / "ref.png"
    out = folder / "out.npy"
    cmd = [sys.executable, "-m", "sschsr_deploy.cli", "infer", "--hsi", str(hsi), "--ref", str(ref), "--out",
           str(out), "--weights", args.weights, "--tile", str(args.tile), "--device", args.device, "--quiet"]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
    res = run_infer(cmd, env, folder / "infer.log", args.timeout)
    row = {
        "size": size, "hr_megapixels": round(size * size / 1e6, 3), "returncode": res["returncode"],
        "complete": res["returncode"] == 0, "timed_out": res["timed_out"], "seconds": res["seconds"],
        "peak_rss_mib": round(max(res["sampled_vm_hwm_kib"], 1) / 1024, 1),
        "peak_rss_anon_mib": round(res["peak_rss_anon_kib"] / 1024, 1),
        "ru_maxrss_mib": round(res["ru_maxrss_kib"] / 1024, 1),
        "lr_cube_mib": round(hsi.stat().st_size / 2**20, 1),
        "output_mib": round(out.stat().st_size / 2**20, 1) if out.exists() else None,
    }
    if res["returncode"] != 0 and not res["timed_out"]:
        row["log_tail"] = (folder / "infer.log").read_text(errors="replace")[-2000:]
    for p in (hsi, ref, out, out.with_name(out.name + ".json")):
        p.unlink(missing_ok=True)
    return row


def _usable(r: dict) -> bool:
    return r["returncode"] == 0 or bool(r.get("timed_out"))


def summarise(rows: list[dict]) -> dict:
    """Ratios against the smallest complete size, and whether the goal holds (when its size was measured).

    A run stopped by ``--timeout`` still has a peak (of the part it ran: preprocessing and the first rows of windows,
    after which nothing grows); its ratio is reported, but the goal counts as met only on a complete run.
    """
    complete = sorted((r for r in rows if r["returncode"] == 0), key=lambda r: r["size"])
    if not complete:
        return {"baseline_size": None, "goal": None}
    base = complete[0]
    for r in (r for r in rows if _usable(r)):
        r["ratio_peak_rss"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
        r["ratio_peak_rss_anon"] = round(r["peak_rss_anon_mib"] / max(base["peak_rss_anon_mib"], 1e-9), 3)
    goal = {"size": GOAL_SIZE, "max_ratio": GOAL_RATIO, "baseline_size": base["size"]}
    at = [r for r in rows if r["size"] == GOAL_SIZE and _usable(r)]
    goal["measured"] = bool(at)
    if at:
        goal["ratio"] = at[0]["ratio_peak_rss"]
        goal["complete"] = at[0]["returncode"] == 0
        goal["met"] = goal["complete"] and at[0]["ratio_peak_rss"] <= GOAL_RATIO
    return {"baseline_size": base["size"], "goal": goal}


def deviation(spec: str, weights: str) -> dict:
    """Streamed vs exact histogram matching on one synthetic scene ``SIZE:SEED[:nodata]`` (see the module docstring)."""
    import numpy as np
    import torch

    from sschsr_deploy.data import make_scene
    from sschsr_deploy.io import as_cube
    from sschsr_deploy.scene import PreparedScene
    from sschsr_deploy.weights import load_model

    parts = spec.split(":")
    size, seed, nodata = int(parts[0]), int(parts[1]), parts[2:] == ["nodata"]
    scene = make_scene(seed=seed, size=(size, size), scale=4, split="test")
    lr, ref = scene.lr_hsi.copy(), scene.ref_rgb.copy()
    if nodata:
        lr[: lr.shape[0] // 5, : lr.shape[1] // 3] = 0.0
        ref[: ref.shape[0] // 5, : ref.shape[1] // 3] = 0
    t0 = time.perf_counter()
    streamed = PreparedScene(as_cube(lr), ref, 4)
    t1 = time.perf_counter()
    exact = PreparedScene(as_cube(lr), ref, 4, sketch_capacity=2**62)  # never merges
    t2 = time.perf_counter()
    assert exact.matching_exact
    h, w = streamed.height, streamed.width
    worst, sq, ref_sq, changed = 0.0, 0.0, 0.0, 0
    for y in range(0, h, 256):
        a = exact.window(y, min(h, y + 256), 0, w)[1].astype(np.float64)
        b = streamed.window(y, min(h, y + 256), 0, w)[1].astype(np.float64)
        d = b - a
        worst, sq, ref_sq = max(worst, float(np.abs(d).max())), sq + float((d * d).sum()), ref_sq + float((a * a).sum())
        changed += int(np.count_nonzero(d))
    model, _ = load_model(weights)
    model.eval()
    rng = np.random.default_rng(seed)
    out_worst, out_sq, out_ref = 0.0, 0.0, 0.0
    side = min(256, size)
    for _ in range(4):
        y0, x0 = (int(v) // 8 * 8 for v in rng.integers(0, size - side + 1, 2))
        with torch.inference_mode():
            outs = [model(*[torch.from_numpy(x[None]) for x in sc.window(y0, y0 + side, x0, x0 + side)])[0].double()
                    .numpy() for sc in (streamed, exact)]
        d = outs[0] - outs[1]
        out_worst = max(out_worst, float(np.abs(d).max()))
        out_sq, out_ref = out_sq + float((d * d).sum()), out_ref + float((outs[1] ** 2).sum())
    return {
        "scene": spec, "size": size, "seed": seed, "nodata": nodata, "streamed_exact": streamed.matching_exact,
        "map_points": [int(x.size) for x, _ in streamed.matching],
        "hsi_rgb_sr_max_abs": worst, "hsi_rgb_sr_rel_l2": (sq / ref_sq) ** 0.5, "pixels_changed": changed / (3 * h * w),
        "output_max_abs": out_worst, "output_rel_l2": (out_sq / out_ref) ** 0.5, "output_windows": f"4 x {side}²",
        "prepare_seconds": {"streamed": round(t1 - t0, 2), "exact": round(t2 - t1, 2)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="HR sizes (square)")
    ap.add_argument("--weights", default="tiny-x4")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--timeout", type=float, default=7200.0,
                    help="seconds per size; a run stopped by it is reported with the peak of the part it ran")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the inputs and output are written")
    ap.add_argument("--deviation", nargs="+", default=[], metavar="SIZE:SEED[:nodata]",
                    help="also measure the streamed histogram matching against the exact one on these scenes")
    ap.add_argument("--skip-memory", action="store_true", help="no memory runs (keeps those already in the file)")
    ap.add_argument("--make-inputs", nargs=2, metavar=("SIZE", "DIR"), help=argparse.SUPPRESS)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    if args.make_inputs:  # child: the same synthetic inputs as the throughput benchmark
        from bench_pipeline import _make_inputs

        _make_inputs(int(args.make_inputs[0]), 4, 31, Path(args.make_inputs[1]))
        return 0
    use_output_arguments(args)
    name = f"memory_{'cuda' if args.device.startswith('cuda') else 'cpu'}"

    import cv2
    import numpy as np
    import skimage

    import sschsr_deploy

    env = environment(args.device)
    env.update({"sschsr_deploy": sschsr_deploy.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
                "scikit_image": skimage.__version__})
    payload: dict = {
        "benchmark": "memory", "environment": env,
        "settings": {"weights": args.weights, "tile": args.tile, "threads": args.threads, "output": "npy",
                     "command": "python -m sschsr_deploy.cli infer ... --tile T --quiet"},
        "metric": "peak_rss_mib: VmHWM of the infer process (/proc/<pid>/status every 20 ms; libraries and mapped "
                  "file pages included); peak_rss_anon_mib: RssAnon sampled with it; ru_maxrss_mib: os.wait4",
        "results": [],
    }
    previous = results_dir() / f"{name}.json"
    if args.skip_memory and previous.exists():  # keep the memory results of an earlier run
        payload = {**json.loads(previous.read_text()), "environment": env}
    if args.deviation:
        payload["matching_deviation"] = []
        for spec in args.deviation:
            payload["matching_deviation"].append(deviation(spec, args.weights))
            print(json.dumps(payload["matching_deviation"][-1]), flush=True)
            write_json(name, payload)
    if args.skip_memory:
        print(f"wrote {results_dir() / (name + '.json')}")
        return 0
    for size in sorted(set(args.sizes)):
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_memory_") as tmp:
            row = measure(size, args, Path(tmp))
        payload["results"].append(row)
        payload.update(summarise(payload["results"]))
        print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
        if "log_tail" in row:
            print(row["log_tail"], file=sys.stderr)
        write_json(name, payload)
    ok = [r for r in payload["results"] if _usable(r)]
    bar_chart(
        name, f"sschsr-deploy infer ({args.weights}, tile {args.tile}, {args.device}): peak memory",
        [f"{r['size']}²" + ("" if r["complete"] else f" ({r['seconds']:.0f} s, stopped)") for r in ok],
        {"peak RSS (VmHWM)": [r["peak_rss_mib"] for r in ok],
         "peak anonymous RSS": [r["peak_rss_anon_mib"] for r in ok]},
        "MiB",
    )
    goal = payload.get("goal") or {}
    if goal.get("measured"):
        print(f"peak RSS at {GOAL_SIZE}² / {goal['baseline_size']}²: {goal['ratio']:.3f} "
              f"(goal <= {GOAL_RATIO}: {'met' if goal['met'] else 'NOT met'}"
              f"{'' if goal['complete'] else ', run stopped by --timeout'})")
    print(f"wrote {results_dir() / (name + '.json')}")
    return 0 if len(ok) == len(payload["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
