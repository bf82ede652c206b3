"""``sschsr-deploy demo``: a generated held-out scene through the tiled pipeline, with metrics and a labelled preview.

Why generated: no download, and the ground truth is known, so the demo can show what super-resolution does (metrics
against bicubic, an error map) rather than just that it runs. The default scene (384² HR) is larger than the default
tile (256 px), so the pipeline really tiles it (4 windows, blended), as it does on real images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError

__all__ = ["DEFAULT_SIZE", "PANEL_LABELS", "error_heatmap", "labelled_panels", "run_demo"]

DEFAULT_SIZE = (384, 384)
PANEL_LABELS = ("bicubic", "reference photo", "output", "ground truth", "|output - truth|")
GAP = 8  # white space between panels, px


def _render(cube: np.ndarray, srf: np.ndarray, white: float) -> np.ndarray:
    from sschsr_deploy.data import render_rgb

    return np.clip(render_rgb(cube, srf) / white, 0.0, 1.0)


# a dark-to-bright ramp (black, violet, red, orange, pale yellow): error size reads as brightness, also in grey print
_RAMP = np.array([[0.00, 0.00, 0.02], [0.30, 0.05, 0.45], [0.80, 0.20, 0.25], [0.98, 0.60, 0.10], [1.00, 1.00, 0.75]])


def error_heatmap(error: np.ndarray, vmax: float) -> np.ndarray:
    """An H x W error map as H x W x 3 colours in [0, 1], 0 → black, ``vmax`` and above → pale yellow."""
    t = np.clip(error / (vmax or 1.0), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return _RAMP[i] * (1.0 - f) + _RAMP[i + 1] * f


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def labelled_panels(panels: list[np.ndarray], labels: list[list[str]]) -> np.ndarray:
    """Panels (H x W x 3 floats in [0, 1]) side by side, ``GAP`` px apart, under a white header holding each panel's
    label lines (the font shrinks until the longest line fits a panel); returns uint8."""
    from PIL import Image, ImageDraw

    h, w = panels[0].shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    longest = max((line for lines in labels for line in lines), key=len)
    size = 16
    while size > 8 and probe.textlength(longest, font=_font(size)) > w - 6:
        size -= 1
    font = _font(size)
    line_h = size + 4
    header = 6 + line_h * max(len(lines) for lines in labels)
    width = len(panels) * w + (len(panels) - 1) * GAP
    canvas = np.ones((header + h, width, 3))
    for k, panel in enumerate(panels):
        canvas[header:, k * (w + GAP):k * (w + GAP) + w] = panel
    image = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for k, lines in enumerate(labels):
        for j, line in enumerate(lines):
            x = k * (w + GAP) + (w - draw.textlength(line, font=font)) / 2
            draw.text((max(0.0, x), 3 + j * line_h), line, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def _model(random_weights: bool, weights: str | None, scale: int, seed: int):
    """The demo's model, its info and the note that goes into metrics.json."""
    import logging

    from sschsr_deploy.weights import load_model, shipped_name

    if random_weights:
        note = (f"random weights (seed {seed}): the 'model' numbers measure the plumbing, not super-resolution "
                "quality")
        return (*load_model("tiny", random_weights=True, seed=seed, scale=scale), note)
    if weights:
        return (*load_model("tiny", weights, scale=scale), f"user weights {weights}")
    try:
        model, info = load_model(shipped_name("tiny", scale))
    except InputValidationError as exc:
        logging.getLogger(__name__).warning("%s; running with random weights", exc)
        return (*load_model("tiny", random_weights=True, seed=seed, scale=scale), f"random weights: {exc}")
    return model, info, f"shipped tiny weights {info['weights']} (trained on generated scenes of the train split)"


def run_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    scale: int = 4,
    weights: str | None = None,
    random_weights: bool = False,
    device: str = "cpu",
    tile: Any = "default",
    overlap: int | None = None,
    margin: int | None = None,
    batch: int = 1,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the demo into ``out_dir`` (inputs, ground truth, output + sidecar, ``metrics.json``, ``preview.png``);
    returns the metrics (SAM in degrees)."""
    from sschsr_deploy import metrics
    from sschsr_deploy.data import make_scene, render_rgb
    from sschsr_deploy.io import atomic_write_json, load_hsi, write_hsi, write_rgb
    from sschsr_deploy.preprocess import bicubic_upsample
    from sschsr_deploy.runtime import Pipeline
    from sschsr_deploy.runtime.planner import DEFAULT_MARGIN, DEFAULT_OVERLAP

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputValidationError(f"--out {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputValidationError(f"cannot create the output directory {out_dir}: {exc}") from exc
    h, w = size
    # held-out spectra, illuminants and camera: the demo shows what the shipped weights do on data they never saw
    scene = make_scene(seed=seed, size=(h, w), scale=scale, split="test")
    write_hsi(out_dir / "input_lr.npy", scene.lr_hsi)
    write_rgb(out_dir / "input_ref.png", scene.ref_rgb)
    write_hsi(out_dir / "ground_truth.npy", scene.hr_hsi)
    model, info, note = _model(random_weights, weights, scale, seed)
    pipe = Pipeline(model, device=device, tile=tile, overlap=DEFAULT_OVERLAP if overlap is None else overlap,
                    margin=DEFAULT_MARGIN if margin is None else margin, batch=batch, quiet=quiet, model_info=info)
    out_path = pipe.run_files(out_dir / "input_lr.npy", out_dir / "input_ref.png", scale, out_dir / "output.npy",
                              extra_info={"demo": {"seed": seed, "size": [h, w], "note": note}})
    output = load_hsi(out_path)
    bicubic = np.clip(bicubic_upsample(scene.lr_hsi.astype(np.float64), scale), 0.0, 1.0)
    gt = scene.hr_hsi
    results: dict[str, Any] = {}
    for name, fn in (("psnr", metrics.psnr), ("ssim", metrics.ssim)):
        results[name] = {"bicubic": fn(bicubic, gt), "model": fn(output, gt)}
    results["sam"] = {"bicubic": float(np.degrees(metrics.sam(bicubic, gt))),
                      "model": float(np.degrees(metrics.sam(output, gt)))}
    results["ergas"] = {"bicubic": metrics.ergas(bicubic, gt, scale), "model": metrics.ergas(output, gt, scale)}
    results.update({
        "units": {"psnr": "dB (mean over bands, data range 1)", "ssim": "mean over bands",
                  "sam": "degrees (mean spectral angle over pixels)", "ergas": "dimensionless"},
        "random_weights": info["random_weights"],
        "weights": note,
        "scene": {"seed": seed, "size": [h, w], "scale": scale, "bands": int(gt.shape[2])},
        "plan": pipe.last_plan.describe(),
        "timings": pipe.last_timings,
    })
    atomic_write_json(out_dir / "metrics.json", results)

    white = float(np.percentile(render_rgb(gt, scene.srf), 99.5)) or 1.0
    err_model = np.mean(np.abs(output.astype(np.float64) - gt), axis=2)
    # one scale for the map: where bicubic's error saturates, so a dark map means "much better than bicubic"
    vmax = float(np.percentile(np.mean(np.abs(bicubic - gt), axis=2), 99)) or 1.0
    panels = [_render(bicubic, scene.srf, white), scene.ref_rgb / 255.0, _render(output, scene.srf, white),
              _render(gt, scene.srf, white), error_heatmap(err_model, vmax)]
    labels = [[PANEL_LABELS[0], f"PSNR {results['psnr']['bicubic']:.1f} dB"],
              [PANEL_LABELS[1], "(RGB input)"],
              [PANEL_LABELS[2], f"PSNR {results['psnr']['model']:.1f} dB"],
              [PANEL_LABELS[3], "(not an input)"],
              [PANEL_LABELS[4], f"band mean, 0-{vmax:.3f}"]]
    write_rgb(out_dir / "preview.png", labelled_panels(panels, labels))
    return results
