"""The ``sschsr-deploy`` command line: ``infer`` (files in, file out), ``info`` (environment), ``demo`` (synthetic).

Every failure ends with one line on stderr (``sschsr-deploy: error: …``) and a non-zero exit status — 2 for bad input
or arguments, 1 for anything else, 130 when interrupted — and no traceback unless ``--debug`` is given. ``infer``
exits 0 only after the output file has been completely written and renamed into place; on failure nothing is left
under the output name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sschsr_deploy._version import __version__
from sschsr_deploy.errors import SSCHSRError

__all__ = ["main"]

log = logging.getLogger("sschsr_deploy.cli")

PROG = "sschsr-deploy"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---------------------------------------------------------------------------------------------------------------------
# argument parsing


class _ArgumentError(Exception):
    """argparse reported a usage error (raised instead of exiting, so ``main`` can return a status)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(f"{message} (see {self.prog} --help)")


def _tile_arg(value: str) -> int | str | None:
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("none", "whole", "0"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, 'auto' or 'whole'; got {value!r}") from None


def _build_parser() -> _Parser:
    from sschsr_deploy.io.hsi import FORMATS
    from sschsr_deploy.runtime.planner import DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_TILE

    parser = _Parser(prog=PROG, description="Deploy SSC-HSR: RGB-guided hyperspectral super-resolution.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tile", type=_tile_arg, default=DEFAULT_TILE,
                       help=f"window side in HR px (≥128, multiple of 8), 'auto' or 'whole' (default {DEFAULT_TILE})")
        p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                       help=f"blending overlap in px, multiple of 8 (default {DEFAULT_OVERLAP})")
        p.add_argument("--margin", type=int, default=DEFAULT_MARGIN,
                       help=f"discarded context per interior window side, px (default {DEFAULT_MARGIN})")
        p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
        p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
        p.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    p = sub.add_parser("infer", help="super-resolve an LR cube with an HR RGB reference")
    p.add_argument("--hsi", required=True, help="LR cube: .npy .npz .mat .h5 .hdr/.img (ENVI) .tif")
    p.add_argument("--ref", required=True, help="HR RGB reference: .png .jpg .tif (8 or 16 bit)")
    p.add_argument("--scale", type=int,
                   help="HR / LR size ratio; default: the one the model was trained for (a different one is refused)")
    p.add_argument("--out", required=True, help="output file; the format follows the extension or --format")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from the --out extension)")
    p.add_argument("--out-layout", choices=("hwc", "chw"), default="hwc", help="output band order (default hwc)")
    p.add_argument("--out-variable", default="hsi", help="array name in .npz/.mat/.h5 outputs (default hsi)")
    p.add_argument("--variable", help="array name to read from .npz/.mat/.h5 inputs (default: the only 3-D one)")
    p.add_argument("--hsi-layout", choices=("hwc", "chw"), help="input band order when it cannot be detected")
    p.add_argument("--weights", help="model weights: a shipped name (tiny-x4, tiny-x8), a .safetensors file or an "
                   "official .pth checkpoint (torch backend; default with --preset tiny: the shipped tiny weights for "
                   "--scale)")
    p.add_argument("--engine", metavar="PATH",
                   help="an exported model instead of --weights: .onnx (export/export_onnx.py, standard ops; "
                        "onnxruntime backend) or .engine/.plan (export/build_engine.py; tensorrt backend, CUDA). "
                        "Its own band count, RAFT iterations and batch-norm mode apply (--preset, --bands, --bn-mode "
                        "are ignored); a fixed-tile export runs its own tile unless --tile asks for another (error)")
    p.add_argument("--preset", choices=("tiny", "official"),
                   help="network size (default: from the weights file; official for a .pth)")
    p.add_argument("--bands", type=int, help="bands the model is built for (default: from the weights; 31)")
    p.add_argument("--rgb-bands", type=int, nargs=3, metavar=("R", "G", "B"),
                   help="pseudo-RGB band indices (default 15 8 3 for 31 bands)")
    p.add_argument("--backend", default=None, choices=("torch", "onnxruntime", "tensorrt"),
                   help="inference backend (default: torch; with --engine, from its suffix)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (torch backend)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture CUDA graphs per input shape and replay them (tensorrt backend; unverified)")
    p.add_argument("--bn-mode", choices=("running", "batch"),
                   help="RAFT context batch norm: running statistics (eval, default) or batch statistics (official "
                        "test)")
    p.add_argument("--output-scale", choices=("input", "unit"), default="input",
                   help="output in the LR cube's value range (default) or the network's [0, 1] scale")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run without --weights on an untrained network (testing only)")
    add_runtime(p)
    # no --tile given: the Pipeline's "default" (256 px, or an exported model's own tile). A non-str sentinel, which
    # argparse leaves as is (a str default would go through --tile's type conversion).
    p.set_defaults(tile=object())

    p = sub.add_parser("info", help="show the environment: versions, CUDA, native extension, Triton")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demo", help="generate a synthetic scene and run the tiny model on it (CPU, no downloads)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="HR size (default 256 256)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--weights", help="tiny-preset weights (default: the shipped tiny weights for --scale)")
    p.add_argument("--random-weights", action="store_true", help="use an untrained network (plumbing check)")
    add_runtime(p)
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# commands


def _cmd_infer(args: argparse.Namespace) -> int:
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.io.atomic import check_writable
    from sschsr_deploy.io.hsi import format_from_path
    from sschsr_deploy.runtime import Pipeline
    from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES, backend_for_path

    out = check_writable(args.out)
    format_from_path(out, args.format)
    for name in ("hsi", "ref"):
        path = Path(getattr(args, name))
        if not path.exists():
            raise InputValidationError(f"--{name}: file not found: {path}")
    tile = args.tile if args.tile is None or isinstance(args.tile, int | str) else "default"
    backend = args.backend
    common = dict(
        device=args.device, tile=tile, overlap=args.overlap, margin=args.margin, batch=args.batch, quiet=args.quiet,
        rgb_bands=args.rgb_bands, output_scale=args.output_scale,
    )
    if args.engine is not None:
        engine = Path(args.engine)
        if args.weights is not None:
            raise InputValidationError("give --weights (torch backend) or --engine (an exported model), not both")
        if backend is None:
            backend = backend_for_path(engine)
        elif backend == "torch":
            raise InputValidationError("--engine runs an exported model: use --backend onnxruntime (.onnx) or "
                                       "tensorrt (.engine); the torch backend takes --weights")
        made_for = ENGINE_SUFFIXES.get(engine.suffix.lower())
        if made_for is not None and made_for != backend:
            raise InputValidationError(
                f"--engine {engine.name} is a file for the {made_for} backend, not {backend} (ONNX files run on "
                "onnxruntime; TensorRT engines are built from them with export/build_engine.py)"
            )
        if not engine.exists():
            raise InputValidationError(f"--engine: file not found: {engine}")
        if args.compile:
            raise InputValidationError("--compile applies to the torch backend only")
        if args.cuda_graph and backend != "tensorrt":
            raise InputValidationError("--cuda-graph applies to the tensorrt backend only")
        options = {"cuda_graph": True} if args.cuda_graph else {}
        pipe = Pipeline(engine, backend=backend, backend_options=options, **common)
    else:
        backend = backend or "torch"
        if backend != "torch":
            raise InputValidationError(
                f"--backend {backend} runs an exported model: give --engine PATH (an .onnx file from "
                "export/export_onnx.py, or a TensorRT engine from export/build_engine.py)"
            )
        if args.cuda_graph:
            raise InputValidationError("--cuda-graph applies to the tensorrt backend only")
        model, info = _load_infer_model(args)
        pipe = Pipeline(model, backend=backend, compile=args.compile, model_info=info, **common)
    t0 = time.perf_counter()
    path = pipe.run_files(
        args.hsi, args.ref, args.scale, out, format=args.format, out_layout=args.out_layout, variable=args.variable,
        hsi_layout=args.hsi_layout, out_variable=args.out_variable,
    )
    if not args.quiet:
        plan = pipe.last_plan
        print(f"wrote {path} ({plan.height}x{plan.width}x{pipe.backend.bands} float32, {len(plan)} window(s), "
              f"{pipe.backend.name}, {time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def _load_infer_model(args: argparse.Namespace):
    """``infer``'s model: --weights (a shipped name or a file, its metadata checked against --preset / --scale /
    --bands / --bn-mode), the shipped weights for --preset tiny, or an untrained network on request."""
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.runtime import load_model

    fields = dict(scale=args.scale, bands=args.bands, rgb_bands=args.rgb_bands, batchnorm_mode=args.bn_mode)
    if args.weights is not None:
        if args.preset is None:
            return load_model(args.weights, **fields)
        return load_model(args.preset, args.weights, **fields)
    if args.allow_random_weights:
        return load_model(args.preset or "official", random_weights=True, **fields)
    if args.preset != "tiny":
        raise InputValidationError(
            "no --weights given and no weights ship for the official preset (the official checkpoint cannot be "
            "bundled): pass --weights, use --preset tiny (or --weights tiny-x4) for the shipped small model, or "
            "--allow-random-weights for a plumbing test"
        )
    name = f"tiny-x{args.scale or 4}"
    log.info("using the shipped weights %s", name)
    return load_model(name, **{k: v for k, v in fields.items() if k != "scale"})


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """What ``sschsr-deploy info`` reports."""
    import torch

    from sschsr_deploy.ops._backend import native_status

    info: dict[str, Any] = {
        "sschsr_deploy": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    info["native_extension"] = native_status()
    info["triton"] = _version_of("triton") if importlib.util.find_spec("triton") is not None else None
    info["libraries"] = {
        name: _version_of(name)
        for name in ("numpy", "scipy", "opencv-python-headless", "scikit-image", "h5py", "tifffile", "safetensors",
                     "onnx", "onnxruntime-gpu", "onnxruntime", "tensorrt")
    }
    return info


def _cmd_info(args: argparse.Namespace) -> int:
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v if v is not None else 'not installed'}")
        elif isinstance(value, list):
            print(f"{key}:")
            for item in value:
                print("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(f"{key}: {value if value is not None else 'not installed'}")
    return EXIT_OK


def _render(cube, srf, white: float):
    import numpy as np

    from sschsr_deploy.data import render_rgb

    return np.clip(render_rgb(cube, srf) / white, 0.0, 1.0)


def _demo_model(args: argparse.Namespace):
    """The demo's model, its info and the note that goes into metrics.json."""
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.runtime import load_model

    if args.random_weights:
        note = (f"random weights (seed {args.seed}): the 'model' numbers measure the plumbing, not super-resolution "
                "quality")
        return (*load_model("tiny", random_weights=True, seed=args.seed, scale=args.scale), note)
    if args.weights:
        return (*load_model("tiny", args.weights, scale=args.scale), f"user weights {args.weights}")
    try:
        model, info = load_model(f"tiny-x{args.scale}")
    except InputValidationError as exc:
        log.warning("%s; running with random weights", exc)
        return (*load_model("tiny", random_weights=True, seed=args.seed, scale=args.scale),
                f"random weights: {exc}")
    return model, info, f"shipped tiny weights {info['weights']} (trained on generated scenes of the train split)"


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from sschsr_deploy import metrics
    from sschsr_deploy.data import make_scene, render_rgb
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.io import atomic_write_json, load_hsi, to_uint8, write_hsi, write_rgb
    from sschsr_deploy.preprocess import bicubic_upsample
    from sschsr_deploy.runtime import Pipeline

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputValidationError(f"--out {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputValidationError(f"cannot create the output directory {out_dir}: {exc}") from exc
    h, w = args.size
    # held-out spectra, illuminants and camera: the demo shows what the shipped weights do on data they never saw
    scene = make_scene(seed=args.seed, size=(h, w), scale=args.scale, split="test")
    write_hsi(out_dir / "input_lr.npy", scene.lr_hsi)
    write_rgb(out_dir / "input_ref.png", scene.ref_rgb)
    write_hsi(out_dir / "ground_truth.npy", scene.hr_hsi)
    model, info, note = _demo_model(args)
    pipe = Pipeline(model, device=args.device, tile=args.tile, overlap=args.overlap, margin=args.margin,
                    batch=args.batch, quiet=args.quiet, model_info=info)
    out_path = pipe.run_files(out_dir / "input_lr.npy", out_dir / "input_ref.png", args.scale, out_dir / "output.npy",
                              extra_info={"demo": {"seed": args.seed, "size": [h, w], "note": note}})
    output = load_hsi(out_path)
    bicubic = np.clip(bicubic_upsample(scene.lr_hsi.astype(np.float64), args.scale), 0.0, 1.0)
    gt = scene.hr_hsi
    results: dict[str, Any] = {}
    for name, fn in (("psnr", metrics.psnr), ("ssim", metrics.ssim), ("sam", metrics.sam)):
        results[name] = {"bicubic": fn(bicubic, gt), "model": fn(output, gt)}
    results["ergas"] = {"bicubic": metrics.ergas(bicubic, gt, args.scale), "model": metrics.ergas(output, gt,
                                                                                                  args.scale)}
    results.update({
        "units": {"psnr": "dB (mean over bands, data range 1)", "ssim": "mean over bands", "sam": "radians",
                  "ergas": "dimensionless"},
        "random_weights": info["random_weights"],
        "weights": note,
        "scene": {"seed": args.seed, "size": [h, w], "scale": args.scale, "bands": int(gt.shape[2])},
        "plan": pipe.last_plan.describe(),
        "timings": pipe.last_timings,
    })
    atomic_write_json(out_dir / "metrics.json", results)
    white = float(np.percentile(render_rgb(gt, scene.srf), 99.5)) or 1.0
    gap = np.ones((h, 8, 3))
    panels = [_render(bicubic, scene.srf, white), gap, scene.ref_rgb / 255.0, gap, _render(output, scene.srf, white)]
    write_rgb(out_dir / "preview.png", to_uint8(np.concatenate(panels, axis=1)))
    if not args.quiet:
        print(f"demo written to {out_dir}: output.npy (+ .json), metrics.json, preview.png")
        print(f"  PSNR bicubic {results['psnr']['bicubic']:.2f} dB, model {results['psnr']['model']:.2f} dB "
              f"({'random weights' if info['random_weights'] else info['weights']})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _setup_logging(args: argparse.Namespace | None) -> None:
    level = logging.WARNING
    if args is not None and (args.verbose or args.debug):
        level = logging.DEBUG if args.debug else logging.INFO
    root = logging.getLogger("sschsr_deploy")
    root.setLevel(level)
    for old in [h for h in root.handlers if getattr(h, "_sschsr_cli", False)]:
        root.removeHandler(old)  # a previous main() call in this process may hold a stale stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    handler._sschsr_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 = success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
    except _ArgumentError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
    _setup_logging(args)
    handler = {"infer": _cmd_infer, "info": _cmd_info, "demo": _cmd_demo}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SSCHSRError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
