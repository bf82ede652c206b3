"""Quality table: what the shipped tiny weights achieve, and what each deployment choice costs in quality.

On held-out generated scenes (``test`` split: reflectances, illuminants and a camera never seen in training; seeds
disjoint from training and validation) it measures PSNR, SSIM, SAM and ERGAS of

- bicubic upsampling of the LR cube (the baseline the model must beat);
- the model on the whole image (runtime ``Pipeline``, ``tile=None``: one window, fp32, PyTorch);
- the model with a mismatched reference (the photo of another scene): shows that the reference is used;
- the model with the photo taken from the cube's own viewpoint (no misalignment, no photo noise): what alignment
  would be worth;
- tiled inference at the default and at smaller overlaps / tiles;
- reduced precision: PyTorch CPU autocast (bfloat16 and float16) and ONNX Runtime fp32 / fp16 exports;
- INT8 on ONNX Runtime (QDQ, calibrated on 8 other held-out scenes): the default (the decoder's convolutions), the
  decoder's and the HSI encoder's, and every convolution (RAFT, warp net and VGG too) — the measurement that decided
  which stages stay float;

and for every model row the relative L2 deviation ``||out - out_whole_fp32|| / ||out_whole_fp32||``. Results go to
``quality.json`` in ``results/local/`` (``--publish``: ``results/``) (+ a Markdown table printed for the README).

Usage: ``python benchmarks/quality.py [--scale 4|8] [--weights W] [--size 384] [--scenes 12] [--no-onnx] [--core]``
(``--scale 8`` writes ``quality_x8.json``; ``--core`` keeps the first five rows: bicubic, whole image, mismatched and
aligned photo, default tiling).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_arguments, environment, results_dir, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy import metrics  # noqa: E402
from sschsr_deploy.data import make_scene  # noqa: E402
from sschsr_deploy.preprocess import bicubic_upsample  # noqa: E402
from sschsr_deploy.pretrained import shipped_weights  # noqa: E402
from sschsr_deploy.runtime import Pipeline, load_model  # noqa: E402
from sschsr_deploy.scene import prepare_inputs  # noqa: E402

QUALITY_SEED = 2_000_000  # held-out scenes: disjoint from training (seed*10^7 + n) and validation (10^6 + i)
SCALES = (4, 8)  # the scales with shipped weights


def _metrics(out: np.ndarray, gt: np.ndarray, scale: int) -> dict[str, float]:
    return {"psnr": metrics.psnr(out, gt), "ssim": metrics.ssim(out, gt), "sam_deg": float(np.degrees(metrics.sam(
        out, gt))), "ergas": metrics.ergas(out, gt, scale)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def _pipeline(model, info, scene, ref, tile, overlap) -> np.ndarray:
    pipe = Pipeline(model, tile=tile, overlap=overlap, quiet=True, model_info=info)
    return pipe.run(scene.lr_hsi, ref, scene.scale)


class _ModelLevel:
    """Runs the network on whole prepared inputs (the pipeline's ``whole`` mode) under different numerics."""

    def __init__(self, model, scene) -> None:
        self.model = model
        self.inputs = prepare_inputs(scene.lr_hsi, scene.ref_rgb, scene.scale)
        self.lo, self.hi = float(scene.lr_hsi.min()), float(scene.lr_hsi.max())

    def denorm(self, out_nchw: np.ndarray) -> np.ndarray:
        return out_nchw[0].transpose(1, 2, 0).astype(np.float64) * (self.hi - self.lo) + self.lo

    def torch(self, autocast: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
        ctx = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
        model, inputs = self.model, self.inputs.to_torch()
        if channels_last:
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            inputs = tuple(t.contiguous(memory_format=torch.channels_last) for t in inputs)
        with torch.inference_mode(), ctx:
            out = model(*inputs)
        return self.denorm(out.float().numpy())

    def backend(self, backend) -> np.ndarray:
        """Through a runtime backend (e.g. a compiled :class:`TorchBackend`, built once for every scene)."""
        return self.denorm(backend.run(*self.inputs.to_torch()).float().numpy())

    def onnx(self, session) -> np.ndarray:
        feeds = {}
        for arg, arr in zip(session.get_inputs(), self.inputs.as_tuple(), strict=True):
            feeds[arg.name] = arr.astype(np.float16 if "float16" in arg.type else np.float32)
        out = session.run(None, feeds)[0]
        return self.denorm(out.astype(np.float32))


#: INT8 variants measured: which stages' convolutions are quantized (the default, one fewer, and every stage)
INT8_VARIANTS = {
    "int8 (default: decoder convs)": ("decoder",),
    "int8 decoder + HSI encoder convs": ("decoder", "hsi_encoder"),
    "int8 every conv": ("decoder", "hsi_encoder", "flownet", "warpnet", "rgb_extractor"),
}
#: the torch.compile row (``--compiled``): bf16 autocast, channels-last, Inductor freezing; compiled once, every scene
COMPILED_ROW = "PyTorch CPU autocast bfloat16, channels-last, torch.compile"
CALIBRATION_SCENES = 8  # held-out seeds 1000.. (calibration_feeds' default), disjoint from QUALITY_SEED..


def _export(model, size: int, precision: str, workdir: Path, scale: int = 4):
    """An ONNX Runtime session of the whole-image export in ``precision`` (an INT8 variant: the fp32 export
    quantized, calibrated on held-out scenes other than the evaluated ones) and the seconds it took."""
    from sschsr_deploy.engine.onnx import INPUT_NAMES, export_onnx, make_session
    from sschsr_deploy.engine.quantize import calibration_feeds, quantize_int8

    t0 = time.perf_counter()
    fp32 = workdir / "tiny_fp32.onnx"
    if precision in INT8_VARIANTS:
        if not fp32.exists():
            export_onnx(model, fp32, tile=(size, size), batch_range=(1, 1), precision="fp32", preset="tiny")
        path = workdir / f"tiny_{re.sub(r'[^a-z0-9]+', '_', precision)}.onnx"
        feeds = calibration_feeds(INPUT_NAMES, model.config.bands, (size, size), CALIBRATION_SCENES, scale=scale)
        quantize_int8(fp32, path, feeds, stages=INT8_VARIANTS[precision])
    else:
        path = workdir / f"tiny_{precision}.onnx"
        export_onnx(model, path, tile=(size, size), batch_range=(1, 1), precision=precision, preset="tiny")
    return make_session(path, providers=["CPUExecutionProvider"]), time.perf_counter() - t0


def _precision_rows(model, scene, sessions: dict, add, gt: np.ndarray, whole: np.ndarray, notes: dict) -> None:
    """The rows of every backend × precision on one scene (whole image, model level)."""
    level = _ModelLevel(model, scene)
    add("model-level fp32 (check: equals whole image)", level.torch(), gt, whole)
    for name, dt, cl in (("PyTorch CPU autocast bfloat16", torch.bfloat16, False),
                         ("PyTorch CPU autocast bfloat16, channels-last", torch.bfloat16, True),
                         ("PyTorch CPU autocast float16", torch.float16, False)):
        try:
            add(name, level.torch(dt, channels_last=cl), gt, whole)
        except Exception as exc:
            notes[name] = f"not measured: {type(exc).__name__}: {exc}"
    compiled = sessions.get("__compiled__")
    if compiled is not None:
        add(COMPILED_ROW, level.backend(compiled), gt, whole)
    for precision, sess in sessions.items():
        if precision != "__compiled__":
            add(f"ONNX Runtime {precision} (CPU)", level.onnx(sess), gt, whole)


def evaluate(weights: str | None, size: int, scenes: int, onnx: bool, scale: int = 4,
             core: bool = False, precision_only: bool = False, compiled: bool = False) -> dict[str, Any]:
    """The table's rows (mean metrics and per-scene PSNR); ``core`` stops after the default tiling;
    ``precision_only`` computes bicubic, the whole-image fp32 row and the precision rows only; ``compiled`` adds
    the torch.compile row (one compilation, minutes)."""
    model, info = load_model("tiny", weights or str(shipped_weights("tiny", scale)))
    model.validate_inputs = False
    made = [make_scene(seed=QUALITY_SEED + i, size=(size, size), scale=scale, split="test") for i in range(scenes)]
    rows: dict[str, list[dict[str, float]]] = {}
    notes: dict[str, str] = {}

    def add(name: str, out: np.ndarray, gt: np.ndarray, whole: np.ndarray | None) -> None:
        m = _metrics(out, gt, scale)
        if whole is not None:
            m["rel_dev_vs_whole_fp32"] = _rel(out, whole)
        rows.setdefault(name, []).append(m)

    sessions: dict[str, Any] = {}
    if compiled and not core:
        from sschsr_deploy.runtime.torch_backend import TorchBackend

        sessions["__compiled__"] = TorchBackend(copy.deepcopy(model), precision="bf16", channels_last=True,
                                                compile=True)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx and not core:
            for precision in ("fp32", "fp16", *INT8_VARIANTS):
                try:
                    sessions[precision], secs = _export(model, size, precision, Path(tmp), scale)
                    notes[f"onnxruntime {precision}"] = f"exported + checked in {secs:.0f} s, CPUExecutionProvider"
                except Exception as exc:  # recorded, not fatal: the table says what could not be measured
                    notes[f"onnxruntime {precision}"] = f"not measured: {type(exc).__name__}: {exc}"
        for i, scene in enumerate(made):
            gt = scene.hr_hsi.astype(np.float64)
            bic = np.clip(bicubic_upsample(scene.lr_hsi.astype(np.float64), scale), 0.0, 1.0)
            add("bicubic", bic, gt, None)
            whole = _pipeline(model, info, scene, scene.ref_rgb, None, 0).astype(np.float64)
            add("model, whole image (fp32, PyTorch)", whole, gt, whole)
            if precision_only:
                _precision_rows(model, scene, sessions, add, gt, whole, notes)
                continue
            other = made[(i + 1) % len(made)] if len(made) > 1 else make_scene(seed=QUALITY_SEED - 1, size=(
                size, size), scale=scale, split="test")
            add("model, mismatched reference", _pipeline(model, info, scene, other.ref_rgb, None, 0), gt, whole)
            aligned = np.round(scene.ref_rgb_aligned * 255.0).astype(np.uint8)
            add("model, photo without misalignment", _pipeline(model, info, scene, aligned, None, 0), gt, whole)
            for tile, overlap in ((256, 32),) if core else ((256, 32), (256, 8), (128, 16)):
                tag = " (default)" if (tile, overlap) == (256, 32) else ""
                out = _pipeline(model, info, scene, scene.ref_rgb, tile, overlap)
                add(f"tiled {tile} px, overlap {overlap}{tag}", out, gt, whole)
            if core:
                continue
            _precision_rows(model, scene, sessions, add, gt, whole, notes)
    table = {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for name, ms in rows.items()}
    bicubic = np.array([m["psnr"] for m in rows["bicubic"]])
    for name, ms in rows.items():  # paired per-scene gains: the scene-to-scene spread of PSNR itself is much larger
        per_scene = [m["psnr"] for m in ms]
        table[name]["psnr_per_scene"] = per_scene
        if name != "bicubic":
            gain = np.array(per_scene) - bicubic
            table[name]["psnr_gain_vs_bicubic"] = float(gain.mean())
            table[name]["psnr_gain_sem"] = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else None
    return {"model": info, "scenes": [s.describe() for s in made], "rows": table, "notes": notes}


def merge_rows(previous: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """``fresh``'s rows (a ``--precision-only`` run) over an earlier full result's, which keeps its other rows; the
    merged file says which rows came from which run. Refused when the earlier run evaluated other scenes."""
    if not previous.exists():
        return fresh
    old = json.loads(previous.read_text())
    if old.get("scenes") != fresh["scenes"]:
        raise SystemExit(f"{previous} evaluated other scenes (size / count / scale): run the full table instead")
    whole = "model, whole image (fp32, PyTorch)"
    for key in ("bicubic", whole):  # the same computation: it must reproduce, or the merge would mix models
        a, b = old["rows"][key]["psnr_per_scene"], fresh["rows"][key]["psnr_per_scene"]
        if not np.allclose(a, b, atol=1e-3):
            raise SystemExit(f"{key!r} does not reproduce the earlier run's PSNR ({a[:3]}... vs {b[:3]}...)")
    rows = dict(old["rows"])
    rows.update({k: v for k, v in fresh["rows"].items() if k not in ("bicubic", whole)})
    merged = {**old, "rows": rows, "notes": {**old.get("notes", {}), **fresh["notes"]}}
    merged["merged_runs"] = [*old.get("merged_runs", []), {"rows": sorted(set(fresh["rows"]) - {"bicubic", whole}),
                                                          "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime())}]
    return merged


def markdown(result: dict[str, Any]) -> str:
    """The README's quality table."""
    lines = ["| method | PSNR (dB) ↑ | gain vs bicubic (dB, ± s.e.) | SSIM ↑ | SAM (°) ↓ | ERGAS ↓ | "
             "rel. dev. vs whole fp32 |", "|---|---|---|---|---|---|---|"]
    for name, m in result["rows"].items():
        dev, gain, sem = m.get("rel_dev_vs_whole_fp32"), m.get("psnr_gain_vs_bicubic"), m.get("psnr_gain_sem")
        gain_txt = "—" if gain is None else f"{gain:+.2f}" + ("" if sem is None else f" ± {sem:.2f}")
        lines.append(f"| {name} | {m['psnr']:.2f} | {gain_txt} | {m['ssim']:.4f} | {m['sam_deg']:.2f} | "
                     f"{m['ergas']:.2f} | " + ("—" if dev is None else f"{dev:.1e}") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, choices=SCALES, default=4)
    ap.add_argument("--weights", help="tiny weights (default: the shipped weights for the scale)")
    ap.add_argument("--size", type=int, default=384,
                    help="HR scene side (default 384: the default tiling really tiles)")
    ap.add_argument("--scenes", type=int, default=12,
                    help="held-out scenes (default 12: with 3 the mean gain over bicubic moved by more than 1 dB "
                         "with the choice of scenes)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    ap.add_argument("--core", action="store_true",
                    help="only bicubic, whole image, mismatched / aligned photo and the default tiling")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision-only", action="store_true",
                    help="recompute only bicubic, the whole-image fp32 row and the precision rows (PyTorch autocast, "
                         "ONNX Runtime fp32 / fp16 / int8 variants) and merge them into the existing result file")
    ap.add_argument("--compiled", action="store_true",
                    help="also bf16 channels-last through torch.compile (compiled once: minutes)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    name = "quality" if args.scale == 4 else f"quality_x{args.scale}"
    result = evaluate(args.weights, args.size, args.scenes, not args.no_onnx, args.scale, args.core,
                      args.precision_only, args.compiled)
    if args.precision_only:
        result = merge_rows(results_dir() / f"{name}.json", result)
    result.update({"environment": environment("cpu"), "size": args.size, "scale": args.scale,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "units": {"psnr": "dB, mean over bands, data range 1", "ssim": "mean over bands",
                             "sam_deg": "degrees, mean over pixels", "ergas": "dimensionless"}})
    path = write_json(name, result)
    print(markdown(result))
    for k, v in result["notes"].items():
        print(f"- {k}: {v}")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
