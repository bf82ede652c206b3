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
modules (:mod:`sschsr_deploy.infer_command`, :mod:`sschsr_deploy.export`, :mod:`sschsr_deploy.engine_build`,
:mod:`sschsr_deploy.bench`, :mod:`sschsr_deploy.environment`, :mod:`sschsr_deploy.demo`); this module parses, dispatches
and reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from sschsr_deploy._version import __version__
from sschsr_deploy.cli_common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    ArgumentError,
    add_runtime_arguments,
)
from sschsr_deploy.errors import OutputSpaceError, SSCHSRError

__all__ = ["cli_wording", "main"]

log = logging.getLogger("sschsr_deploy.cli")


# ---------------------------------------------------------------------------------------------------------------------
# argument parsing


class _Failed(Exception):
    """A command failed for a reason other than its arguments (a check, a missing tool): exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgumentError(f"{message} (see {self.prog} --help)")


def _global_flags(with_defaults: bool) -> argparse.ArgumentParser:
    """``--debug`` and ``-v``: on the main parser with their defaults, and on every sub-command without (SUPPRESS),
    so that they work after the sub-command and a flag given before it is not reset there."""
    p = argparse.ArgumentParser(add_help=False)
    extra: dict[str, Any] = {} if with_defaults else {"default": argparse.SUPPRESS}
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging", **extra)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)", **extra)
    return p


def _build_parser() -> _Parser:
    from sschsr_deploy import bench, demo, engine_build, export, infer_command

    parser = _Parser(prog=PROG, description="Deploy SSC-HSR: RGB-guided hyperspectral super-resolution.",
                     parents=[_global_flags(True)])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    flags = _global_flags(False)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[flags], **kw)

    p = command("infer", help="super-resolve an LR cube with an HR RGB reference (one scene, a folder of scenes or a "
                              "manifest)", description=infer_command.DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    infer_command.add_arguments(p)

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
    add_runtime_arguments(p)
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# commands


def _cmd_infer(args: argparse.Namespace) -> int:
    from sschsr_deploy.infer_command import run

    return run(args)


def _cmd_info(args: argparse.Namespace) -> int:
    from sschsr_deploy.environment import environment_info, environment_lines

    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else "\n".join(environment_lines(info)))
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
    from sschsr_deploy.allocator import tune_allocator

    tune_allocator()  # before torch starts its threads: few arenas, large blocks reused (allocator.py)
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "infer":  # a mix of modes is a usage error, like argparse's own
            from sschsr_deploy.infer_command import infer_mode

            args.infer_mode = infer_mode(args)
    except ArgumentError as exc:
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
