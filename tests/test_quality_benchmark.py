"""The quality table's script (benchmarks/quality.py) on a small run: rows, scales, per-scene gains."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("quality_bench", BENCH / "quality.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("scale", [4, 8])
def test_core_rows_on_the_shipped_weights(quality, scale):
    result = quality.evaluate(None, size=128, scenes=2, onnx=False, scale=scale, core=True)
    rows = result["rows"]
    assert list(rows) == ["bicubic", "model, whole image (fp32, PyTorch)", "model, mismatched reference",
                          "model, photo without misalignment", "tiled 256 px, overlap 32 (default)"]
    assert [s["scale"] for s in result["scenes"]] == [scale, scale]
    whole = rows["model, whole image (fp32, PyTorch)"]
    gains = np.array(whole["psnr_per_scene"]) - np.array(rows["bicubic"]["psnr_per_scene"])
    assert whole["psnr_gain_vs_bicubic"] == pytest.approx(gains.mean())
    assert whole["psnr_gain_vs_bicubic"] > 0.5  # the shipped weights of this scale really beat bicubic
    # a 128² scene is one 256 px tile: the tiled row equals the whole image
    assert rows["tiled 256 px, overlap 32 (default)"]["rel_dev_vs_whole_fp32"] < 1e-6
    assert rows["model, mismatched reference"]["rel_dev_vs_whole_fp32"] > 1e-4  # the photo changes the output
    table = quality.markdown(result)
    assert table.count("\n") == 1 + len(rows) and "± " in table
