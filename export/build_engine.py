#!/usr/bin/env python
"""Build a TensorRT engine (+ its sidecar JSON) from an ONNX file made by export_onnx.py / ``sschsr-deploy export``.

The same command as ``sschsr-deploy build-engine`` (same options, same code: :mod:`sschsr_deploy.engine_build`);
kept so that the build runs from a checkout without installing the package.

    python export/build_engine.py tiny_128.onnx --out tiny_128.engine
    python export/build_engine.py official_256_fp16.onnx --out official_256_fp16.engine \\
        --profile 1 4 8 --workspace-gib 8 --timing-cache trt.cache --deform-conv plugin

Unverified: no TensorRT was available where this was written (see sschsr_deploy/engine/tensorrt.py). Exit status:
0 on success, 1 when TensorRT is missing or the build or the parity check fails, 2 on bad arguments. ``--verbose``
turns on TensorRT's verbose log.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: Sequence[str] | None = None) -> int:
    """``sschsr-deploy build-engine`` with these arguments."""
    from sschsr_deploy.cli import main as cli_main

    return cli_main(["build-engine", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
