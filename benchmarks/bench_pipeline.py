"""End-to-end pipeline benchmark: tiled-vs-whole deviation, throughput and peak memory versus scene size.

Three parts, all written to ``pipeline_<device>.json`` (+ ``pipeline_<device>.png`` for throughput
and ``pipeline_<device>_memory.png`` for peak memory) in ``results/local/`` (``--publish``: ``results/``):

1. ``deviation`` — how far tiled inference is from whole-image inference on one 256 x 320 synthetic scene, for tiles
   of 128 and 192 px, overlaps of 16 / 32 / 64 px and a context margin of 0 / 8 px: max and mean absolute difference
   and relative L2 error of the network output (``output_scale="unit"``). The model is the ``tiny`` preset with
   random weights (seed 0) until trained weights ship; batch-norm in running mode.
2. ``throughput`` — for each HR scene size (512² … 4096², ``--quick``: 256² and 512², capped by ``--max-size``) a
   fresh subprocess writes a synthetic LR cube (.npy) and reference (.png), then runs ``Pipeline.run_files`` into a
   memory-mapped .npy output (the streaming path). Reported: HR megapixels per second (total wall time including
   preprocessing and writing) and peak memory.
3. ``baseline`` — in the same run, a whole-image eager forward (``tile=None``) where the estimated memory fits.

Time: wall-clock seconds and, because the CPU measurements ran on a shared machine, also the process's CPU seconds
(user + system, all threads), which depend much less on other jobs.

Peak memory: the subprocess samples ``RssAnon`` (anonymous resident memory: heap, tensors, numpy arrays) from
``/proc/self/status`` every 20 ms and reports the maximum; ``VmHWM`` (which also counts the memory-mapped input and
output pages, reclaimable page cache) is recorded beside it. On CUDA the peak ``torch.cuda.max_memory_allocated`` is
added.

Usage::

    python benchmarks/bench_pipeline.py --quick                   # CPU, tiny preset, 256² and 512²
    python benchmarks/bench_pipeline.py --max-size 2048           # CPU sweep up to 2048²
    python benchmarks/bench_pipeline.py --device cuda --preset official
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

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

#: (scene size, tiles) of the deviation sweep: the issue's 256 x 320 scene at 128 / 192 px tiles, and a 512 x 512 scene
#: at the default 256 px tile.
DEVIATION_SCENES = [((256, 320), (128, 192)), ((512, 512), (256,))]
DEVIATION_OVERLAPS = (16, 32, 64)
DEVIATION_MARGINS = (0, 8)
FULL_SIZES = (512, 1024, 2048, 3072, 4096)
QUICK_SIZES = (256, 512)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): less sensitive than wall time to other jobs."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime



class PeakSampler:
    """Max of RssAnon sampled every ``interval`` s in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def mark(self) -> int:
        """Return the peak so far (KiB) and restart the peak from the current value: splits a run into phases."""
        peak = max(self.peak_kb, proc_status_kib("RssAnon"))
        self.peak_kb = proc_status_kib("RssAnon")
        return peak

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_status_kib("RssAnon"))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, proc_status_kib("RssAnon"))


def _model(preset: str, device: str):
    from sschsr_deploy.runtime import load_model

    model, info = load_model(preset, random_weights=True, seed=0)
    return model, info


# ---------------------------------------------------------------------------------------------------------------------
# 1. deviation


def deviation(preset: str, device: str, quiet: bool) -> dict:
    from sschsr_deploy.data import make_scene
    from sschsr_deploy.runtime import Pipeline

    model, info = _model(preset, device)
    scenes = []
    for size, tiles in DEVIATION_SCENES:
        scene = make_scene(seed=0, size=size, scale=4)
        whole_pipe = Pipeline(model, device=device, tile=None, quiet=quiet, output_scale="unit")
        t0 = time.perf_counter()
        whole = whole_pipe.run(scene.lr_hsi, scene.ref_rgb, 4).astype(np.float64)
        whole_s = time.perf_counter() - t0
        rows = []
        for tile in tiles:
            for overlap in DEVIATION_OVERLAPS:
                for margin in DEVIATION_MARGINS:
                    pipe = Pipeline(model, device=device, tile=tile, overlap=overlap, margin=margin, batch=4,
                                    quiet=quiet, output_scale="unit")
                    t0 = time.perf_counter()
                    out = pipe.run(scene.lr_hsi, scene.ref_rgb, 4).astype(np.float64)
                    dt = time.perf_counter() - t0
                    diff = out - whole
                    row = {
                        "scene": list(size), "tile": tile, "overlap": overlap, "margin": margin,
                        "windows": len(pipe.last_plan), "overhead": round(pipe.last_plan.overhead(), 3),
                        "max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()),
                        "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(whole)),
                        "seconds": round(dt, 2),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        scenes.append({
            "scene": list(size), "scale": 4, "whole_image_seconds": round(whole_s, 2),
            "output_range": [float(whole.min()), float(whole.max())],
            "output_rms": float(np.sqrt(np.mean(whole**2))), "rows": rows,
            "border_profile": border_profile(model, scene, whole, tiles[0]),
        })
    return {"model": info, "output_scale": "unit", "scenes": scenes}


def border_profile(model, scene, whole: np.ndarray, tile: int) -> dict:
    """Mean |single window - whole image| by distance to the window border (4 px bins), for a central window.

    Separates the two sources of deviation: border artefacts (they decay within a few pixels; the context margin
    and the blending ramp suppress them) and whole-image statistics (a flat floor that only larger tiles lower).
    """
    from sschsr_deploy.scene import prepare_inputs

    mi = prepare_inputs(scene.lr_hsi, scene.ref_rgb, 4)
    h, w = whole.shape[:2]
    y0, x0 = (h - tile) // 16 * 8, (w - tile) // 16 * 8
    crop = [torch.from_numpy(np.ascontiguousarray(a[:, :, y0:y0 + tile, x0:x0 + tile])) for a in mi.as_tuple()]
    with torch.inference_mode():
        out = model(*crop)[0].numpy().transpose(1, 2, 0)
    err = np.abs(out - whole[y0:y0 + tile, x0:x0 + tile]).mean(-1)
    yy, xx = np.mgrid[0:tile, 0:tile]
    dist = np.minimum(np.minimum(yy, tile - 1 - yy), np.minimum(xx, tile - 1 - xx))
    bins = list(range(0, tile // 2, 4))
    return {
        "window": [y0, x0, tile], "bin_px": 4,
        "mean_abs_by_border_distance": [round(float(err[(dist >= b) & (dist < b + 4)].mean()), 6) for b in bins],
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. / 3. throughput and memory (one subprocess per size)


def _make_inputs(size: int, scale: int, bands: int, folder: Path) -> tuple[Path, Path]:
    """A smooth random LR cube (.npy) and reference (.png) for an HR ``size``² scene, without building the HR cube."""
    import cv2

    from sschsr_deploy.io import write_rgb

    rng = np.random.default_rng(size)
    lr_side = size // scale
    small = rng.random((max(4, lr_side // 16), max(4, lr_side // 16), bands)).astype(np.float32)
    lr = np.stack([cv2.resize(small[..., b], (lr_side, lr_side), interpolation=cv2.INTER_CUBIC)
                   for b in range(bands)], axis=-1)
    lr += 0.02 * rng.random(lr.shape, dtype=np.float32)
    hsi_path = folder / "lr.npy"
    np.save(hsi_path, lr.astype(np.float32))
    ref_small = rng.random((max(4, size // 64), max(4, size // 64), 3)).astype(np.float32)
    ref = cv2.resize(ref_small, (size, size), interpolation=cv2.INTER_CUBIC)
    ref = np.clip(ref + 0.05 * rng.random(ref.shape, dtype=np.float32), 0, 1)
    ref_path = folder / "ref.png"
    write_rgb(ref_path, np.round(ref * 255).astype(np.uint8))
    return hsi_path, ref_path


def worker(args: argparse.Namespace) -> None:
    """Child process: one scene size, one mode; prints one JSON line."""
    from sschsr_deploy.runtime import Pipeline

    torch.set_num_threads(args.threads)
    size = args.worker
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        hsi_path, ref_path = _make_inputs(size, 4, 31, folder)
        model, _ = _model(args.preset, args.device)
        tile = None if args.mode == "whole" else args.tile
        pipe = Pipeline(model, device=args.device, tile=tile, overlap=args.overlap, margin=args.margin,
                        batch=args.batch, quiet=True)
        if args.device.startswith("cuda"):
            pipe.backend.warmup(128 if tile is None else min(tile, size), 128 if tile is None else min(tile, size),
                                1 if tile is None else args.batch)
            torch.cuda.reset_peak_memory_stats()
        base_kb = proc_status_kib("RssAnon")
        phases: dict[str, int] = {}
        execute = pipe.execute

        def execute_marked(scene, sink):  # split the peak: whole-image preprocessing, then the windows
            phases["preprocess"] = sampler.mark()
            return execute(scene, sink)

        pipe.execute = execute_marked
        with PeakSampler() as sampler:
            t0, c0 = time.perf_counter(), _cpu_seconds()
            pipe.run_files(hsi_path, ref_path, 4, folder / "out.npy", sidecar=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        result = {
            "size": size, "mode": args.mode, "seconds": round(dt, 3), "cpu_seconds": round(cpu, 3),
            "hr_megapixels_per_s": round(size * size / 1e6 / dt, 5),
            "hr_megapixels_per_cpu_s": round(size * size / 1e6 / max(cpu, 1e-9), 5),
            "windows": len(pipe.last_plan), "plan": pipe.last_plan.describe(), "timings": pipe.last_timings,
            "peak_rss_anon_mib": round(max(sampler.peak_kb, phases.get("preprocess", 0)) / 1024, 1),
            "peak_rss_anon_preprocess_mib": round(phases.get("preprocess", 0) / 1024, 1),
            "peak_rss_anon_windows_mib": round(sampler.peak_kb / 1024, 1),
            "baseline_rss_anon_mib": round(base_kb / 1024, 1),
            "vm_hwm_mib": round(proc_status_kib("VmHWM") / 1024, 1),
        }
        if args.device.startswith("cuda"):
            result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print("RESULT " + json.dumps(result), flush=True)


def run_worker(args: argparse.Namespace, size: int, mode: str) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", str(size), "--mode", mode, "--device", args.device,
           "--preset", args.preset, "--tile", str(args.tile), "--overlap", str(args.overlap), "--margin",
           str(args.margin), "--batch", str(args.batch), "--threads", str(args.threads), "--tmp", args.tmp]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            print(json.dumps({k: res[k] for k in ("size", "mode", "seconds", "cpu_seconds", "hr_megapixels_per_s",
                                                  "peak_rss_anon_mib", "peak_rss_anon_preprocess_mib",
                                                  "peak_rss_anon_windows_mib")}), flush=True)
            return res
    print(f"size {size} {mode}: failed after {time.perf_counter() - t0:.0f}s (rc {proc.returncode})\n"
          f"{proc.stderr[-2000:]}", flush=True)
    return {"size": size, "mode": mode, "failed": True, "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}


def _linear_fit(xs: list[float], ys: list[float]) -> dict:
    if len(xs) < 2:
        return {}
    a, b = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return {"slope": float(a), "intercept": float(b)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="default: tiny on CPU, official on CUDA")
    ap.add_argument("--quick", action="store_true", help="sizes 256² and 512² only")
    ap.add_argument("--max-size", type=int, default=4096)
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--margin", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, 4 on CUDA")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--whole-max", type=int, default=None, help="largest size for the whole-image baseline")
    ap.add_argument("--skip-deviation", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="tiled", help=argparse.SUPPRESS)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)

    from sschsr_deploy.runtime.planner import DEFAULT_MARGIN, DEFAULT_OVERLAP, estimate_forward_bytes

    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("official" if cuda else "tiny")
    args.overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    args.margin = DEFAULT_MARGIN if args.margin is None else args.margin
    args.batch = args.batch or (4 if cuda else 1)
    if args.worker:
        worker(args)
        return 0
    torch.set_num_threads(args.threads)

    name = f"pipeline_{'cuda' if cuda else 'cpu'}"
    out_path = results_dir() / f"{name}.json"  # earlier phases of this run (or a previous one) are kept
    payload: dict = json.loads(out_path.read_text()) if out_path.exists() else {}
    payload["environment"] = environment(args.device)
    payload["settings"] = {k: getattr(args, k) for k in ("preset", "tile", "overlap", "margin", "batch", "threads")}
    payload["machine_note"] = (
        "shared 2-core machine; other jobs were running during the measurement, so absolute times are pessimistic "
        "and noisy" if not cuda else ""
    )

    if not args.skip_deviation:
        payload["deviation"] = deviation(args.preset, args.device, quiet=True)
        write_json(name, payload)

    if not args.skip_throughput:
        sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
        sizes = [s for s in sizes if s <= args.max_size]
        budget = 0.5 * _mem_available() if not cuda else 0.8 * torch.cuda.mem_get_info()[0]
        results = []
        for size in sizes:
            results.append(run_worker(args, size, "tiled"))
            fits = estimate_forward_bytes(args.preset, size, size) <= budget
            if (args.whole_max is None and fits) or (args.whole_max is not None and size <= args.whole_max):
                results.append(run_worker(args, size, "whole"))
            payload["throughput"] = {"results": results}
            write_json(name, payload)
        ok = [r for r in results if r and not r.get("failed")]
        tiled = [r for r in ok if r["mode"] == "tiled"]
        payload["throughput"]["scaling"] = {
            "seconds_vs_megapixels": _linear_fit([r["size"] ** 2 / 1e6 for r in tiled], [r["seconds"] for r in tiled]),
            "cpu_seconds_vs_megapixels": _linear_fit(
                [r["size"] ** 2 / 1e6 for r in tiled], [r["cpu_seconds"] for r in tiled]
            ),
            "peak_rss_anon_mib_vs_megapixels": _linear_fit(
                [r["size"] ** 2 / 1e6 for r in tiled], [r["peak_rss_anon_mib"] for r in tiled]
            ),
            "windows_phase_peak_rss_anon_mib_vs_megapixels": _linear_fit(
                [r["size"] ** 2 / 1e6 for r in tiled], [r["peak_rss_anon_windows_mib"] for r in tiled]
            ),
        }
        write_json(name, payload)
        groups = [f"{r['size']}²" for r in tiled]
        whole = {r["size"]: r for r in ok if r["mode"] == "whole"}
        bar_chart(
            name, f"SSC-HSR pipeline ({args.preset}, {args.device}): HR MP/s", groups,
            {
                f"tiled {args.tile} px": [r["hr_megapixels_per_s"] for r in tiled],
                "whole image": [whole[r["size"]]["hr_megapixels_per_s"] if r["size"] in whole else 0.0
                                for r in tiled],
            },
            "HR megapixels / s",
        )
        bar_chart(
            f"{name}_memory", f"SSC-HSR pipeline ({args.preset}, {args.device}): peak anonymous RSS", groups,
            {
                f"tiled {args.tile} px: preprocessing": [r["peak_rss_anon_preprocess_mib"] for r in tiled],
                f"tiled {args.tile} px: windows": [r["peak_rss_anon_windows_mib"] for r in tiled],
                "whole image": [whole[r["size"]]["peak_rss_anon_mib"] if r["size"] in whole else 0.0
                                for r in tiled],
            },
            "MiB",
        )
    print(f"wrote {out_path}")
    return 0


def _mem_available() -> int:
    from sschsr_deploy.runtime.planner import available_memory

    return available_memory("cpu")


if __name__ == "__main__":
    raise SystemExit(main())
