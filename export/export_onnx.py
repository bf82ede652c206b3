#!/usr/bin/env python
"""Export SSC-HSR (per-tile network or flow estimator) to ONNX, then check it (checker, shapes, ORT parity).

The same command as ``sschsr-deploy export`` (same options, same code: :mod:`sschsr_deploy.export`); kept so that
the export runs from a checkout without installing the package.

    python export/export_onnx.py --preset tiny --tile 128 128 --out tiny_128.onnx
    python export/export_onnx.py --preset official --weights model-best.pth --tile 256 256 --batch 4 \\
        --precision fp16 --ops custom --out official_256_fp16.onnx

Without --weights the tiny preset exports its shipped weights (tiny-x4, or tiny-x8 with --scale 8); the official
preset exports random weights, with a warning. Exit status: 0 when the export and every check pass, 1 when a check
fails (the file is left for inspection), 2 on bad arguments. A JSON report goes to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: Sequence[str] | None = None) -> int:
    """``sschsr-deploy export`` with these arguments."""
    from sschsr_deploy.cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
