"""The ``sschsr-deploy`` command line: ``infer`` (files in, file out; or folders / a manifest of scenes through one
loaded model, resumable, with a summary JSON: :mod:`sschsr_deploy.batch`), ``export`` (ONNX, verified), ``build-engine``
(TensorRT), ``bench`` (backends side by side), ``info`` (environment), ``demo`` (synthetic scene).

Every failure ends with one line on stderr (``sschsr-deploy: error: …``) and a non-zero exit status — 2 for bad input or
arguments (including an output with NaN / inf values, refused), 1 for anything else (not enough space for the output, an
I/O error, a failed export check, TensorRT missing, a crash), 130 on SIGINT (Ctrl-C), 143 on SIGTERM, 129 on SIGHUP
(unless SIGHUP is ignored, as under ``nohup``) — and no traceback unless ``--debug`` is given. On a signal the temp
files are removed and one line says whether the output was written (only when the signal came during the final renames,
which finish first). ``--debug`` and ``-v`` are accepted before or after the sub-command. Messages raised by the library
in its own spelling (``tile=128x128``) are reworded into options (``--tile 128``) by :func:`cli_wording`. ``infer``
exits 0 only after the output file and its sidecar have been completely written and renamed into place; on failure
nothing changes under the output's name (see :mod:`sschsr_deploy.io.atomic`). The commands' work lives in their own
modules (:mod:`sschsr_deploy.export`, :mod:`sschsr_deploy.engine_build`, :mod:`sschsr_deploy.bench`,
:mod:`sschsr_deploy.demo`); this module parses, dispatches and reports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sschsr_deploy._version import __version__
from sschsr_deploy.errors import OutputSpaceError, SSCHSRError

__all__ = ["cli_wording", "environment_info", "library_info", "main"]

log = logging.getLogger("sschsr_deploy.cli")

PROG = "sschsr-deploy"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # SIGTERM / SIGHUP: 128 + signal (143 / 129)


# ---------------------------------------------------------------------------------------------------------------------
# argument parsing


class _ArgumentError(Exception):
    """argparse reported a usage error (raised instead of exiting, so ``main`` can return a status)."""


class _Failed(Exception):
    """A command failed for a reason other than its arguments (a check, a missing tool): exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(f"{message} (see {self.prog} --help)")


def _global_flags(with_defaults: bool) -> argparse.ArgumentParser:
    """``--debug`` and ``-v``: on the main parser with their defaults, and on every sub-command without (SUPPRESS),
    so that they work after the sub-command and a flag given before it is not reset there."""
    p = argparse.ArgumentParser(add_help=False)
    extra: dict[str, Any] = {} if with_defaults else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging", **extra)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)", **extra)
    return p


def _tile_arg(value: str) -> int | tuple[int, int] | str | None:
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("none", "whole", "0"):
        return None
    try:
        if "x" in value.lower():
            h, w = (int(v) for v in value.lower().split("x"))
            return h if h == w else (h, w)
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, HxW, 'auto' or 'whole'; got {value!r}") from None


def _nodata_arg(value: str) -> float | str:
    from sschsr_deploy.batch import parse_nodata
    from sschsr_deploy.errors import InputValidationError

    try:
        return parse_nodata(value)
    except InputValidationError:
        raise argparse.ArgumentTypeError(f"expected a number or 'nan'; got {value!r}") from None


SUMMARY_NAME = "sschsr-summary.json"
#: the output extension of each --format in folder mode
FORMAT_EXTENSIONS = {"npy": ".npy", "npz": ".npz", "mat": ".mat", "mat73": ".mat", "h5": ".h5", "envi": ".img",
                     "tiff": ".tif"}

_INFER_DESCRIPTION = f"""\
Super-resolve LR hyperspectral cubes with HR RGB references.

  one scene:   --hsi CUBE --ref RGB --out FILE
  folders:     --hsi DIR --ref DIR --out DIR   (cubes and references paired by file stem; outputs
               <stem> + the extension of --format: npy .npy, npz .npz, mat/mat73 .mat, h5 .h5, envi .img (+ .hdr),
               tiff .tif; default .npy)
  manifest:    --manifest FILE                 (CSV with a header row, or JSON lines: hsi, ref, out, options)

Many scenes run in one process (the model is loaded once), one progress bar over the scenes. A scene whose output is
complete (the output and its sidecar renamed into place by a finished run) is skipped, so an interrupted run resumes
where it stopped (--no-resume runs them again). The summary JSON (per scene: done / skipped / failed / not run, the
error, the timings) is written in every case, also when the run stops early: default
<--out folder>/{SUMMARY_NAME}, or <manifest stem>.summary.json beside the manifest; --summary PATH puts it
elsewhere. The options given here apply to every scene; a manifest's columns override them per scene.

Exit status with many scenes: 0 when every scene is done or skipped; 1 when scenes failed under --keep-going (one line
says how many and where the summary is); without --keep-going the first failure ends the run with that scene's error
and its usual status (2 for bad input, 1 for I/O errors); 130 / 143 on SIGINT / SIGTERM.
"""


def _build_parser() -> _Parser:
    from sschsr_deploy import bench, demo, engine_build, export
    from sschsr_deploy.batch import BAND_MAPPINGS, JOB_OPTIONS
    from sschsr_deploy.io.hsi import FORMATS
    from sschsr_deploy.runtime.planner import DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_TILE

    parser = _Parser(prog=PROG, description="Deploy SSC-HSR: RGB-guided hyperspectral super-resolution.",
                     parents=[_global_flags(True)])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    flags = _global_flags(False)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[flags], **kw)

    def add_runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tile", type=_tile_arg, default=DEFAULT_TILE,
                       help=f"window side in HR px (≥128, multiple of 8), HxW, 'auto' or 'whole' (default "
                            f"{DEFAULT_TILE})")
        p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                       help=f"blending overlap in px, multiple of 8 (default {DEFAULT_OVERLAP})")
        p.add_argument("--margin", type=int, default=DEFAULT_MARGIN,
                       help=f"discarded context per interior window side, px (default {DEFAULT_MARGIN})")
        p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
        p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
        p.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    p = command("infer", help="super-resolve an LR cube with an HR RGB reference (one scene, a folder of scenes or a "
                              "manifest)", description=_INFER_DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hsi", help="LR cube: .npy .npz .mat .h5 .hdr/.img (ENVI) .tif; or a folder of them (then --ref "
                                 "and --out are folders too)")
    p.add_argument("--ref", help="HR RGB reference: .png .jpg .tif (8 or 16 bit); or a folder of them, paired with the "
                                 "cubes by file stem")
    p.add_argument("--scale", type=int,
                   help="HR / LR size ratio; default: the one the model was trained for (a different one is refused)")
    p.add_argument("--out", help="output file; the format follows the extension or --format. With folders: the "
                                 "output folder (created), outputs named <cube stem> + the --format's extension "
                                 "(default .npy)")
    p.add_argument("--manifest", metavar="FILE",
                   help="scenes listed in a CSV file with a header row or JSON lines (.jsonl): hsi, ref, out and "
                        f"optionally {', '.join(JOB_OPTIONS)} per scene (they override the options given here); "
                        "relative paths are relative to the manifest. Instead of --hsi/--ref/--out")
    p.add_argument("--keep-going", action="store_true",
                   help="many scenes: record a scene that fails on its input or an I/O error and go on with the next "
                        "(exit status 1 at the end if any failed); default: stop at the first failure")
    p.add_argument("--summary", metavar="PATH",
                   help="many scenes: where to write the summary JSON (per scene: status, error, timings); default "
                        f"<--out folder>/{SUMMARY_NAME}, or <manifest stem>.summary.json beside a manifest (m.csv: "
                        "m.summary.json)")
    p.add_argument("--no-resume", action="store_true",
                   help="many scenes: run scenes whose output is already complete again (default: skip them)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: actors on a Ray cluster, each loading the model once "
                        "(many scenes: a scene per actor at a time; one scene: its windows spread over the actors, "
                        "blended here); needs pip install 'sschsr-deploy[ray]' (docs/scale-out.md)")
    p.add_argument("--address", help="--executor ray: the cluster to join (ray start's address, or 'auto'); default: "
                                     "a local cluster started for this run")
    p.add_argument("--workers", type=int, help="--executor ray: actors (default: one per GPU, else per CPU)")
    p.add_argument("--ray-outputs", choices=("worker", "driver"), default=None,
                   help="--executor ray, many scenes: worker (default): each actor reads its scene and writes its "
                        "output on a file system shared with this machine; driver: this process reads the inputs, "
                        "sends them to the actors and writes the outputs they return (no shared file system; this "
                        "machine's disk and memory carry them). One scene: this process always writes")
    p.add_argument("--format", choices=FORMATS,
                   help="output format (default: from the --out extension; with folders: npy)")
    p.add_argument("--out-layout", choices=("hwc", "chw", "bip", "bil", "bsq"), default=None,
                   help="output band order (default: the input's: ENVI interleave bsq / bil / bip, else hwc or chw as "
                        "read)")
    p.add_argument("--nodata", type=_nodata_arg, metavar="VALUE",
                   help="nodata value of the LR cube (default: the file's own: ENVI data ignore value, GeoTIFF "
                        "nodata); masked pixels are excluded from the statistics, filled for the network and written "
                        "back as nodata")
    p.add_argument("--band-mapping", choices=BAND_MAPPINGS, default="auto",
                   help="how a cube with band centres other than the model's is mapped onto them: auto (nearest "
                        "when sampled about as finely, gaussian FWHM-weighted integration when finer), nearest, "
                        "gaussian, or none (ignore wavelengths: band-count rule)")
    p.add_argument("--out-variable", default="hsi", help="array name in .npz/.mat/.h5 outputs (default hsi)")
    p.add_argument("--variable", help="array name to read from .npz/.mat/.h5 inputs (default: the only 3-D one)")
    p.add_argument("--hsi-layout", choices=("hwc", "chw"), help="input band order when it cannot be detected")
    p.add_argument("--weights", help="model weights: a shipped name (tiny-x4, tiny-x8), a .safetensors file or an "
                   "official .pth checkpoint (torch backend; default with --preset tiny: the shipped tiny weights for "
                   "--scale)")
    p.add_argument("--engine", metavar="PATH",
                   help="an exported model instead of --weights: .onnx (sschsr-deploy export, standard ops; "
                        "onnxruntime backend) or .engine/.plan (sschsr-deploy build-engine; tensorrt backend, CUDA). "
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
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=None,
                   help="torch backend: fp32 (default), bf16 or fp16 autocast (float32 islands where 16 bits lose "
                        "what matters); with --engine: the precision the model must have been exported in (default: "
                        "its own; int8 = a QDQ export from sschsr-deploy export --precision int8). The output's "
                        "sidecar records it")
    p.add_argument("--channels-last", action="store_true",
                   help="torch backend: channels-last memory format for fp32 too (on by default for bf16 / fp16 on a "
                        "CPU; faster depthwise convolutions and layer norms)")
    p.add_argument("--in-flight", type=int, default=1, metavar="N",
                   help="onnxruntime on a CPU: N windows at once, each on its own one-thread session (throughput "
                        "1.11-1.17x on 2 cores with N=2, measured; needs --batch >= N; default 1)")
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

    p = command("export", help="export the network to ONNX and verify it (checker, shapes, ONNX Runtime parity); "
                               "JSON report on stdout")
    export.add_arguments(p)

    p = command("build-engine", help="build a TensorRT engine (+ sidecar) from an exported ONNX file (-v: TensorRT's "
                                     "verbose log)")
    engine_build.add_arguments(p)

    p = command("bench", help="per-tile latency, throughput and peak memory of backends side by side; JSON on stdout")
    bench.add_arguments(p)

    from sschsr_deploy.serving import cli as serving_cli

    p = command("serve", help="serve the model with NVIDIA Triton Inference Server (HTTP, gRPC, metrics) until "
                              "SIGINT / SIGTERM; see docs/serving.md")
    serving_cli.add_arguments(p)

    p = command("info", help="show the environment: versions, CUDA, native extension, Triton, ONNX Runtime")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("demo", help="generate a synthetic scene and run the tiny model on it (CPU, no downloads)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--seed", type=int, default=0)
    h, w = demo.DEFAULT_SIZE
    p.add_argument("--size", type=int, nargs=2, default=demo.DEFAULT_SIZE, metavar=("H", "W"),
                   help=f"HR size (default {h} {w}: several windows of the default tile, so it shows the tiling)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--weights", help="tiny-preset weights (default: the shipped tiny weights for --scale)")
    p.add_argument("--random-weights", action="store_true", help="use an untrained network (plumbing check)")
    add_runtime(p)
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# commands


_BATCH_FLAGS = (("keep_going", "--keep-going"), ("summary", "--summary"), ("no_resume", "--no-resume"))


def _infer_mode(args: argparse.Namespace) -> str:
    """``infer``'s mode from its arguments: ``"file"`` (one scene), ``"folders"`` or ``"manifest"``; a usage error
    (:class:`_ArgumentError`) for a mix of them."""
    from sschsr_deploy.io.hsi import EXTENSIONS

    def usage(message: str) -> _ArgumentError:
        return _ArgumentError(f"{message} (see {PROG} infer --help)")

    if args.executor != "ray" and (args.address is not None or args.workers is not None):
        raise usage("--address and --workers apply to --executor ray")
    if args.executor != "ray" and args.ray_outputs is not None:
        raise usage("--ray-outputs applies to --executor ray")
    given = [f"--{n}" for n in ("hsi", "ref", "out") if getattr(args, n) is not None]
    if args.manifest is not None:
        if given:
            raise usage(f"--manifest replaces --hsi, --ref and --out: give one or the other, not both (got --manifest "
                        f"and {', '.join(given)})")
        return "manifest"
    missing = [f"--{n}" for n in ("hsi", "ref", "out") if getattr(args, n) is None]
    if missing:
        raise usage(f"the following arguments are required: {', '.join(missing)}"
                    + (" (or --manifest FILE instead of --hsi, --ref and --out)" if len(missing) == 3 else ""))
    hsi, ref, out = Path(args.hsi), Path(args.ref), Path(args.out)

    def what(path: Path) -> str:
        return "a file" if path.exists() else "not found"

    if hsi.is_dir():
        if not ref.is_dir():
            raise usage(f"--hsi {hsi} is a folder, so --ref must be a folder of references too; {ref} is {what(ref)}")
        if (out.exists() and not out.is_dir()) or (not out.exists() and out.suffix.lower() in EXTENSIONS):
            raise usage(f"--hsi {hsi} is a folder, so --out must be an output folder too, not a file: {out}")
        return "folders"
    if ref.is_dir():
        raise usage(f"--ref {ref} is a folder, so --hsi must be a folder of cubes too; {hsi} is {what(hsi)}")
    batch_only = [flag for attr, flag in _BATCH_FLAGS if getattr(args, attr)]
    if batch_only:
        raise usage(f"{', '.join(batch_only)}: for many scenes (folders for --hsi, --ref and --out, or --manifest), "
                    "not one file")
    return "file"


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """``run_files`` keyword arguments from ``infer``'s options; the newer ones only when set, so that a pipeline
    that does not know them yet is not handed them."""
    options: dict[str, Any] = dict(format=args.format, variable=args.variable, hsi_layout=args.hsi_layout,
                                   out_variable=args.out_variable)
    if args.out_layout is not None:
        options["out_layout"] = args.out_layout
    if args.nodata is not None:
        options["nodata"] = args.nodata
    if args.band_mapping not in (None, "auto"):
        options["band_mapping"] = args.band_mapping
    return options


def _infer_jobs(args: argparse.Namespace, mode: str) -> tuple[list, Path]:
    """The scenes of a folder or manifest run (the command line's options as every scene's defaults, a manifest's
    own columns overriding them) and the summary path."""
    from sschsr_deploy.batch import SceneJob, jobs_from_folders, jobs_from_manifest

    defaults = {k: v for k, v in _run_options(args).items() if v is not None}
    if args.scale is not None:
        defaults["scale"] = args.scale
    if mode == "folders":
        out_dir = Path(args.out)
        created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            jobs = jobs_from_folders(args.hsi, args.ref, out_dir, FORMAT_EXTENSIONS[args.format or "npy"], **defaults)
        except BaseException:
            for d in created:  # nothing to run: leave no empty folders behind
                d.rmdir()
            raise
        summary = out_dir / SUMMARY_NAME
    else:
        manifest = Path(args.manifest)
        jobs = [SceneJob(j.hsi, j.ref, j.out, {**defaults, **j.options}) for j in jobs_from_manifest(manifest)]
        summary = manifest.with_name(f"{manifest.stem}.summary.json")
    return jobs, Path(args.summary) if args.summary is not None else summary


def _model_choice(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """``infer``'s checked model choice: the Pipeline options shared by every backend and the backend (from
    ``--engine``'s suffix, ``--backend``, or torch for weights); mismatched flags are refused here."""
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES, backend_for_path

    tile = args.tile if args.tile is None or isinstance(args.tile, int | str) else "default"
    backend = args.backend
    common = dict(
        device=args.device, tile=tile, overlap=args.overlap, margin=args.margin, batch=args.batch, quiet=args.quiet,
        rgb_bands=args.rgb_bands, output_scale=args.output_scale, precision=args.precision,
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
                "onnxruntime; TensorRT engines are built from them with sschsr-deploy build-engine)"
            )
        if not engine.exists():
            raise InputValidationError(f"--engine: file not found: {engine}")
        if args.compile or args.channels_last:
            raise InputValidationError(f"{'--compile' if args.compile else '--channels-last'} applies to the torch "
                                       "backend only (an exported model's precision and layout are chosen at export)")
        if args.cuda_graph and backend != "tensorrt":
            raise InputValidationError("--cuda-graph applies to the tensorrt backend only")
        _check_in_flight(args, backend)
        return common, backend
    backend = backend or "torch"
    if backend != "torch":
        raise InputValidationError(
            f"--backend {backend} runs an exported model: give --engine PATH (an .onnx file from "
            "sschsr-deploy export, or a TensorRT engine from sschsr-deploy build-engine)"
        )
    if args.cuda_graph:
        raise InputValidationError("--cuda-graph applies to the tensorrt backend only")
    _check_in_flight(args, backend)
    if args.weights is None and not args.allow_random_weights and args.preset != "tiny":
        raise InputValidationError(
            "no --weights given and no weights ship for the official preset (the official checkpoint cannot be "
            "bundled): pass --weights, use --preset tiny (or --weights tiny-x4) for the shipped small model, or "
            "--allow-random-weights for a plumbing test"
        )
    return common, backend


def _check_in_flight(args: argparse.Namespace, backend: str) -> None:
    from sschsr_deploy.errors import InputValidationError

    n = getattr(args, "in_flight", 1)
    if n == 1:
        return
    if n < 1:
        raise InputValidationError(f"--in-flight must be at least 1; got {n}")
    if backend != "onnxruntime":
        raise InputValidationError("--in-flight applies to the onnxruntime backend (an .onnx --engine) on a CPU")
    if args.batch < n:
        raise InputValidationError(f"--in-flight {n} runs {n} windows at once: give --batch {n} or more")


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"cuda_graph": True} if args.cuda_graph else {}
    if getattr(args, "in_flight", 1) > 1:
        options["in_flight"] = args.in_flight
    return options


def _make_pipeline(args: argparse.Namespace):
    """``infer``'s pipeline: an exported model (--engine) or the network (--weights / --preset); with ``--executor
    ray`` a :class:`~sschsr_deploy.distributed.RayPipeline` whose actors load the same model."""
    from sschsr_deploy.runtime import Pipeline

    common, backend = _model_choice(args)
    if args.executor == "ray":
        from sschsr_deploy.distributed import RayPipeline

        return RayPipeline(_model_spec(args, common, backend), address=args.address, workers=args.workers,
                           quiet=args.quiet)
    if args.engine is not None:
        return Pipeline(Path(args.engine), backend=backend, backend_options=_engine_options(args), **common)
    model, info = _load_infer_model(args)
    return Pipeline(model, backend=backend, compile=args.compile, channels_last=args.channels_last or "auto",
                    model_info=info, **common)


def _model_spec(args: argparse.Namespace, common: dict[str, Any], backend: str):
    """What Ray actors load (a picklable description, not a model): the same choices as :func:`_load_infer_model`."""
    from sschsr_deploy.distributed import ModelSpec
    from sschsr_deploy.weights import shipped_name

    pipeline = {k: v for k, v in common.items() if k != "quiet"}
    if args.engine is not None:
        return ModelSpec(str(args.engine), backend=backend, pipeline={**pipeline,
                                                                      "backend_options": _engine_options(args)})
    load = {k: v for k, v in dict(scale=args.scale, bands=args.bands, rgb_bands=args.rgb_bands,
                                  batchnorm_mode=args.bn_mode).items() if v is not None}
    weights = None
    if args.weights is not None:
        source, weights = (args.weights, None) if args.preset is None else (args.preset, args.weights)
    elif args.allow_random_weights:
        source = args.preset or "official"
        load["random_weights"] = True
    else:  # --preset tiny (checked by _model_choice): the shipped weights
        source = shipped_name("tiny", args.scale)
        load.pop("scale", None)
    return ModelSpec(source, weights=weights, load=load, pipeline={**pipeline, "compile": args.compile,
                                                                  "channels_last": args.channels_last or "auto"})


def _cmd_infer(args: argparse.Namespace) -> int:
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.io.atomic import check_writable
    from sschsr_deploy.io.hsi import format_from_path

    mode = getattr(args, "infer_mode", None) or _infer_mode(args)
    if mode != "file":
        return _infer_many(args, mode)
    out = check_writable(args.out)
    format_from_path(out, args.format)
    for name in ("hsi", "ref"):
        path = Path(getattr(args, name))
        if not path.exists():
            raise InputValidationError(f"--{name}: file not found: {path}")
    pipe = _make_pipeline(args)
    t0 = time.perf_counter()
    try:
        path = pipe.run_files(args.hsi, args.ref, args.scale, out, **_run_options(args))
    except BaseException:
        args.written = getattr(pipe, "last_output", None)  # a signal during the commit comes after it: say so
        raise
    finally:
        if hasattr(pipe, "close"):  # a RayPipeline's actors
            pipe.close()
    if not args.quiet:
        plan = pipe.last_plan
        print(f"wrote {path} ({plan.height}x{plan.width}x{pipe.backend.bands} float32, {len(plan)} window(s), "
              f"{pipe.backend.name}, {time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def _infer_many(args: argparse.Namespace, mode: str) -> int:
    """Folders or a manifest: every scene through one pipeline (:func:`sschsr_deploy.batch.run_scenes`)."""
    from sschsr_deploy.batch import run_scenes
    from sschsr_deploy.io.atomic import check_writable

    jobs, summary_path = _infer_jobs(args, mode)
    check_writable(summary_path)
    try:
        if args.executor == "ray":  # actors load the model, a scene each at a time
            from sschsr_deploy.distributed import run_scenes_ray

            spec = _model_spec(args, *_model_choice(args))
            summary = run_scenes_ray(spec, jobs, address=args.address, workers=args.workers,
                                     resume=not args.no_resume, keep_going=args.keep_going,
                                     summary_path=summary_path, progress=not args.quiet,
                                     outputs=args.ray_outputs or "worker")
        else:
            pipe = _make_pipeline(args)  # once, for all scenes
            summary = run_scenes(pipe, jobs, resume=not args.no_resume, keep_going=args.keep_going,
                                 summary_path=summary_path, progress=not args.quiet)
    except BaseException:
        _note_stopped_run(args, summary_path)
        raise
    counts, total = summary.counts, len(summary.scenes)
    if not args.quiet:
        print(f"{total} scene(s): {counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped, "
              f"{counts.get('failed', 0)} failed ({summary.seconds:.1f} s)")
    if counts.get("failed"):
        print(f"{PROG}: error: {counts['failed']} of {total} scene(s) failed; see {summary_path}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _note_stopped_run(args: argparse.Namespace, summary_path: Path) -> None:
    """For ``main``'s last line when a many-scene run stops: the scene that failed and how far the run got (from the
    summary, written before the error propagates)."""
    try:
        scenes = json.loads(summary_path.read_text(encoding="utf-8"))["scenes"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    complete = sum(s.get("status") in ("done", "skipped") for s in scenes)
    failed = [s for s in scenes if s.get("status") == "failed"]
    args.error_scene = Path(failed[-1]["hsi"]).name if failed else None
    args.stopped = f"{complete} of {len(scenes)} scene(s) complete (summary: {summary_path})"


def _load_infer_model(args: argparse.Namespace):
    """``infer``'s model: --weights (a shipped name or a file, its metadata checked against --preset / --scale /
    --bands / --bn-mode), the shipped weights for --preset tiny, or an untrained network on request."""
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.weights import load_model, shipped_name

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
    name = shipped_name("tiny", args.scale)
    log.info("using the shipped weights %s", name)
    return load_model(name, **{k: v for k, v in fields.items() if k != "scale"})


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


#: modules ``info`` reports, by the name they are imported under (the distribution that provides one may be named
#: otherwise: ``onnxruntime`` comes from ``onnxruntime-gpu``, ``cv2`` from ``opencv-python-headless``)
LIBRARIES = ("numpy", "scipy", "cv2", "skimage", "h5py", "tifffile", "safetensors", "onnx", "onnxscript", "onnxruntime",
             "tensorrt")


def library_info(module: str, distributions: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """Version and providing distribution of an importable ``module`` (``None`` when it cannot be imported);
    ONNX Runtime also lists the execution providers its build offers. ``distributions``: a ready
    ``importlib.metadata.packages_distributions()`` (it scans every installed package)."""
    if importlib.util.find_spec(module) is None:
        return None
    table = distributions if distributions is not None else importlib.metadata.packages_distributions()
    dists = table.get(module) or []
    dist = dists[0] if dists else None
    info: dict[str, Any] = {"version": _version_of(dist) if dist else None, "distribution": dist}
    if module == "onnxruntime":
        try:
            import onnxruntime

            info["version"] = info["version"] or onnxruntime.__version__
            info["providers"] = list(onnxruntime.get_available_providers())
        except Exception as exc:  # a broken install: say so rather than fail `info`
            info["error"] = f"{type(exc).__name__}: {exc}"
    return info


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
    dists = importlib.metadata.packages_distributions()
    info["libraries"] = {name: library_info(name, dists) for name in LIBRARIES}
    return info


def _library_line(value: dict[str, Any] | None, module: str) -> str:
    if value is None:
        return "not installed"
    text = str(value.get("version") or "installed, version unknown")
    dist = value.get("distribution")
    extra = [f"distribution {dist}"] if dist and dist != module else []
    if "providers" in value:
        extra.append(f"providers {', '.join(value['providers'])}")
    if "error" in value:
        extra.append(f"unusable: {value['error']}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _cmd_info(args: argparse.Namespace) -> int:
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key, value in info.items():
        if key == "libraries":
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {_library_line(v, k)}")
        elif isinstance(value, dict):
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from sschsr_deploy.demo import run_demo

    results = run_demo(args.out, seed=args.seed, size=tuple(args.size), scale=args.scale, weights=args.weights,
                       random_weights=args.random_weights, device=args.device, tile=args.tile, overlap=args.overlap,
                       margin=args.margin, batch=args.batch, quiet=args.quiet)
    if not args.quiet:
        plan = results["plan"]
        print(f"demo written to {args.out}: output.npy (+ .json), metrics.json, preview.png")
        print(f"  {plan['image'][0]}x{plan['image'][1]} HR scene in {plan['windows']} window(s) of "
              f"{plan['tile'][0]}x{plan['tile'][1]} px (overlap {plan['overlap']}, blended)")
        print(f"  PSNR bicubic {results['psnr']['bicubic']:.2f} dB, model {results['psnr']['model']:.2f} dB; "
              f"SAM bicubic {results['sam']['bicubic']:.2f}°, model {results['sam']['model']:.2f}°")
        print(f"  weights: {results['weights']}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from sschsr_deploy.engine.onnx import ExportCheckError
    from sschsr_deploy.export import choose_weights, export_from_args

    source = choose_weights(args.preset, args.weights, args.scale, args.bands)
    if source.random:
        log.warning("%s", source.note)
    elif source.note:
        print(f"{PROG}: {source.note}", file=sys.stderr)
    try:
        result = export_from_args(args, source)
    except ExportCheckError as exc:
        raise _Failed(f"export check FAILED: {exc} (the file is left for inspection: {args.out})") from exc
    print(json.dumps(result.as_dict(), indent=2))
    return EXIT_OK


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from sschsr_deploy.engine_build import build_from_args
    from sschsr_deploy.errors import InputValidationError

    try:
        report = build_from_args(args)
    except InputValidationError:
        raise
    except (SSCHSRError, AssertionError) as exc:  # TensorRT missing, build failed, parity failed
        raise _Failed(str(exc)) from exc
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from sschsr_deploy.serving.cli import run

    return run(args, PROG)


def _cmd_bench(args: argparse.Namespace) -> int:
    from sschsr_deploy.bench import bench_from_args, summary_lines

    def progress(message: str) -> None:
        print(f"{PROG}: bench: {message}", file=sys.stderr)

    report = bench_from_args(args, None if args.quiet else progress)
    if not args.quiet:
        print("\n".join(summary_lines(report)), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------------
# messages in the command line's words

# (pattern, replacement): the library's keyword spellings -> the options that set them. Applied in order.
_WORDING: list[tuple[str, Any]] = [
    (r"\(tile=None / --tile whole\)", "(--tile whole)"),
    (r"\btile=None\b", "--tile whole"),
    (r"\btile=\(?(\d+)\s*[x,]\s*(\d+)\)?", lambda m: f"--tile {m[1]}" if m[1] == m[2] else f"--tile {m[1]}x{m[2]}"),
    (r"\btile=(\d+)", r"--tile \1"),
    (r"\btile=(['\"]?)(auto|default)\1", r"--tile \2"),
    (r"^tile (\d+)x(\d+):", r"--tile \1 \2:"),
    (r"\btile_min\b", "--tile-min"),
    (r"\btile_max\b", "--tile-max"),
    (r"\bpart=(['\"]?)(\w+)\1", r"--part \2"),
    (r"\bbackend=(['\"]?)(\w+)\1", r"--backend \2"),
    (r"\bpass scale \(--scale\)", "pass --scale"),
    (r"\bomit the scale\b", "omit --scale"),
    (r"\bpass bands=(\d+)", r"pass --bands \1"),
    (r"\bpass rgb_bands\b", "pass --rgb-bands"),
    (r"\bcompile=True\b", "--compile"),
    (r"\boutput_scale must\b", "--output-scale must"),
    (r"^(batch|overlap|margin) must\b", r"--\1 must"),
    (r"\bexport/export_onnx\.py\b", "sschsr-deploy export"),
    (r"\bexport/build_engine\.py\b", "sschsr-deploy build-engine"),
    (r"\bsschsr_deploy\.engine\.onnx\.export_onnx\b", "sschsr-deploy export"),
]


def cli_wording(message: str, command: str | None = None) -> str:
    """``message`` (raised by the library, worded for its API) worded for the command line: ``tile=128x128`` →
    ``--tile 128``, ``tile=None`` → ``--tile whole``, ``export/export_onnx.py`` → ``sschsr-deploy export``, …"""
    random_flag = "--allow-random-weights" if command == "infer" else "--random-weights"
    message = re.sub(r"random_weights=True(?: \(--random-weights\))?", random_flag, message)
    for pattern, replacement in _WORDING:
        message = re.sub(pattern, replacement, message)
    return message


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _in_scene(args: argparse.Namespace, message: str) -> str:
    """``message`` of a many-scene run that stopped: which scene, and how far the run got."""
    scene, stopped = getattr(args, "error_scene", None), getattr(args, "stopped", None)
    if scene:
        message = f"scene {scene}: {message}"
    return f"{message}; {stopped}" if stopped else message


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
    from sschsr_deploy.malloc_arenas import limit_malloc_arenas

    limit_malloc_arenas()  # before torch starts its threads: freed memory is reused, peak RSS stays flat
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "infer":
            args.infer_mode = _infer_mode(args)
    except _ArgumentError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
    _setup_logging(args)
    debug = debug or args.debug
    handler = {"infer": _cmd_infer, "info": _cmd_info, "demo": _cmd_demo, "export": _cmd_export,
               "build-engine": _cmd_build_engine, "bench": _cmd_bench,
               "serve": _cmd_serve}[args.command]
    from sschsr_deploy.io.signals import Terminated, terminate_on_signals

    try:
        with terminate_on_signals():  # SIGTERM / SIGHUP (if not ignored) unwind like Ctrl-C, removing temp files
            return handler(args)
    except (KeyboardInterrupt, Terminated) as exc:
        if debug:
            raise
        name = exc.signal_name if isinstance(exc, Terminated) else "SIGINT"
        written = getattr(args, "written", None)
        what = f"{written} was written before it stopped" if written else "no output was written"
        what = getattr(args, "stopped", None) or what
        print(f"{PROG}: interrupted ({name}); {what}", file=sys.stderr)
        return exc.code if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except _Failed as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_in_scene(args, cli_wording(_one_line(exc), args.command))}", file=sys.stderr)
        return EXIT_FAILURE
    except OutputSpaceError as exc:  # not the arguments' fault: the same run succeeds where there is room
        if debug:
            raise
        print(f"{PROG}: error: {_in_scene(args, _one_line(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except SSCHSRError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_in_scene(args, cli_wording(_one_line(exc), args.command))}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_in_scene(args, f'{type(exc).__name__}: {_one_line(exc)}')}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        message = f"{type(exc).__name__}: {_one_line(exc)} (rerun with --debug for a traceback)"
        print(f"{PROG}: internal error: {_in_scene(args, message)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
