"""Does the model use the photo? Gains over bicubic on held-out scenes with three photos per scene.

For each scene (test split, seeds outside every training and quality-table range): PSNR gain over bicubic of the
model fed (a) the scene's own misaligned photo, (b) the same photo without misalignment (the cube's viewpoint) and
(c) another scene's photo. (a) − (c) is what the photo contributes; (b) − (a) is what better alignment would add.
This is the measurement that ranked training runs (the three validation crops of a run are too few); the quality
table (``quality.py``) is the deployment view on three larger scenes.

Usage: ``python benchmarks/photo_use.py [--weights W ... [--labels NAME ...]] [--scale 4] [--sizes 128x8 256x4]`` →
``photo_use_x<scale>.json`` in ``results/local/`` (``--publish``: ``results/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_arguments, environment, use_output_arguments, write_json  # noqa: E402

from sschsr_deploy.pretrained import shipped_weights  # noqa: E402
from sschsr_deploy.runtime import load_model  # noqa: E402
from sschsr_deploy.train import _psnr as psnr  # noqa: E402
from sschsr_deploy.train import make_sample  # noqa: E402

SCENE_SEED = 2_000_000  # the scenes
OTHER_SEED = 2_100_000  # the mismatched photos


def gains(weights: str, scale: int, sizes: list[tuple[int, int]]) -> dict:
    """Per-scene and mean gains (dB over bicubic) with own / aligned / mismatched photo for one weights file."""
    model, info = load_model("tiny", weights)
    model.validate_inputs = False
    rows = []
    for size, count in sizes:
        for i in range(count):
            own = make_sample(SCENE_SEED + i, size, scale, "test")
            aligned = make_sample(SCENE_SEED + i, size, scale, "test", misalignment=0.0)
            other = make_sample(OTHER_SEED + i, size, scale, "test")
            mismatched = list(own.inputs)
            mismatched[2], mismatched[4] = other.inputs[2], other.inputs[4]  # the photo and its RAFT copy
            bic = psnr(own.bicubic, own.target)
            with torch.no_grad():
                rows.append({"seed": SCENE_SEED + i, "size": size,
                             "own": psnr(model(*own.inputs), own.target) - bic,
                             "aligned": psnr(model(*aligned.inputs), aligned.target) - bic,
                             "mismatched": psnr(model(*mismatched), own.target) - bic})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("own", "aligned", "mismatched")}
    return {"weights": weights, "weights_sha256": info["weights_sha256"], "mean_gain_db": mean, "scenes": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", help="tiny weights files (default: the shipped ones for --scale)")
    ap.add_argument("--labels", nargs="+", help="a name per weights file for the result (default: the paths)")
    ap.add_argument("--scale", type=int, default=4, choices=(4, 8))
    ap.add_argument("--sizes", nargs="+", default=["128x8", "256x4"], help="SIZExCOUNT scene groups")
    ap.add_argument("--threads", type=int, default=2)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    weights = args.weights or [str(shipped_weights("tiny", args.scale))]
    t0 = time.perf_counter()
    labels = args.labels or weights
    if len(labels) != len(weights):
        ap.error("--labels needs one name per weights file")
    results = [{"label": name, **gains(w, args.scale, sizes)} for name, w in zip(labels, weights, strict=True)]
    for r in results:
        m = r["mean_gain_db"]
        print(f"{r['label']}: gain over bicubic own photo {m['own']:+.2f} dB, aligned {m['aligned']:+.2f}, "
              f"mismatched {m['mismatched']:+.2f}")
    path = write_json(f"photo_use_x{args.scale}", {
        "results": results, "scale": args.scale, "sizes": args.sizes, "environment": environment("cpu"),
        "seconds": round(time.perf_counter() - t0, 1),
        "units": "dB of PSNR (mean over bands, data range 1) over bicubic"})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
