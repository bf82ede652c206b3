"""``sschsr-deploy infer``: its options, the choice of model and backend (weights, an exported model, Ray actors),
and the runs — one scene, or folders / a manifest of scenes through one loaded model (:mod:`sschsr_deploy.batch`).
:mod:`sschsr_deploy.cli` parses, dispatches here and reports the errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sschsr_deploy.cli_common import EXIT_FAILURE, EXIT_OK, PROG, ArgumentError, add_runtime_arguments

__all__ = ["DESCRIPTION", "FORMAT_EXTENSIONS", "SUMMARY_NAME", "add_arguments", "infer_mode", "run"]

log = logging.getLogger(__name__)

SUMMARY_NAME = "sschsr-summary.json"
#: the output extension of each --format in folder mode
FORMAT_EXTENSIONS = {"npy": ".npy", "npz": ".npz", "mat": ".mat", "mat73": ".mat", "h5": ".h5", "envi": ".img",
                     "tiff": ".tif"}

#: the ``infer`` sub-command's --help text
DESCRIPTION = f"""\
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


def _nodata_arg(value: str) -> float | str:
    from sschsr_deploy.batch import parse_nodata
    from sschsr_deploy.errors import InputValidationError

    try:
        return parse_nodata(value)
    except InputValidationError:
        raise argparse.ArgumentTypeError(f"expected a number or 'nan'; got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``infer`` options."""
    from sschsr_deploy.batch import BAND_MAPPINGS, JOB_OPTIONS
    from sschsr_deploy.io.hsi import FORMATS

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
    add_runtime_arguments(p)
    # no --tile given: the Pipeline's "default" (256 px, or an exported model's own tile). A non-str sentinel, which
    # argparse leaves as is (a str default would go through --tile's type conversion).
    p.set_defaults(tile=object())


_BATCH_FLAGS = (("keep_going", "--keep-going"), ("summary", "--summary"), ("no_resume", "--no-resume"))


def infer_mode(args: argparse.Namespace) -> str:
    """``infer``'s mode from its arguments: ``"file"`` (one scene), ``"folders"`` or ``"manifest"``; a usage error
    (:class:`ArgumentError`) for a mix of them."""
    from sschsr_deploy.io.hsi import EXTENSIONS

    def usage(message: str) -> ArgumentError:
        return ArgumentError(f"{message} (see {PROG} infer --help)")

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
    pipe = Pipeline(model, backend=backend, compile=args.compile, channels_last=args.channels_last or "auto",
                    model_info=info, **common)
    if args.compile:  # compile for the run's one window shape now, not inside the first scene
        if not args.quiet:
            print(f"compiling the model for {pipe.tile} px windows (minutes on a CPU) ...", file=sys.stderr,
                  flush=True)
        seconds = pipe.warmup()
        if not args.quiet and seconds:
            print(f"compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    return pipe


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


def run(args: argparse.Namespace) -> int:
    """Run ``infer`` (one scene, or many: :func:`_infer_many`); returns the exit status."""
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.io.atomic import check_writable
    from sschsr_deploy.io.hsi import format_from_path

    mode = getattr(args, "infer_mode", None) or infer_mode(args)
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
