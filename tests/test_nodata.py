"""No-data pixels: masked out of the statistics and the histogram matching, filled for the network, written back as
nodata. The issue's PSNR check (fill rows / columns and a fill border keep the valid interior's PSNR within 0.05 dB
of the same scene without fill) is ``benchmarks/bench_nodata.py``; its logic is tested here on a small scene."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from scipy import ndimage

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import as_cube
from sschsr_deploy.runtime import Pipeline
from sschsr_deploy.scene import PreparedScene, fill_nodata

FILL = -9999.0


def _scene_inputs(seed: int = 0, lr_size: tuple[int, int] = (40, 36)):
    rng = np.random.default_rng(seed)
    lr = ndimage.gaussian_filter(rng.random((*lr_size, 31)), (2, 2, 0)).astype(np.float32)
    ref = (rng.random((lr_size[0] * 4, lr_size[1] * 4, 3)) * 255).astype(np.uint8)
    return lr, ref


bench = load_benchmark("bench_nodata")
_fill_mask = bench.fill_mask  # the benchmark's layout: two fill rows, two fill columns, a 2-pixel border


def test_scene_without_masked_pixels_is_the_path_without_nodata():
    lr, ref = _scene_inputs()
    plain = PreparedScene(as_cube(lr, "hwc"), ref, 4)
    with_nodata = PreparedScene(as_cube(lr, "hwc"), ref, 4, nodata=FILL)
    assert with_nodata.masked_pixels == 0 and with_nodata.hr_mask(0, 16) is None
    for a, b in zip(plain.window(0, 128, 8, 136), with_nodata.window(0, 128, 8, 136), strict=True):
        np.testing.assert_array_equal(a, b)


def test_masked_pixels_leave_the_statistics_and_the_matching():
    lr, ref = _scene_inputs(1)
    m = _fill_mask(*lr.shape[:2])
    filled = lr.copy()
    filled[m] = FILL
    filled[5, 7, 3] = FILL  # one band is enough to mask the pixel
    scene = PreparedScene(as_cube(filled, "hwc"), ref, 4, nodata=FILL)
    valid = ~m
    valid[5, 7] = False
    assert scene.masked_pixels == int((~valid).sum())
    assert scene.lo == pytest.approx(float(lr[valid].min())) and scene.hi == pytest.approx(float(lr[valid].max()))
    np.testing.assert_allclose(scene.band_means, lr[valid].mean(axis=0), rtol=1e-6)
    # the matching map's source range is the valid pixels' pseudo-RGB range, not the fill value's
    for xs, _ in scene.matching:
        assert xs.min() > -0.5 and xs.max() < 1.5
    # every window input is finite and on the unit scale (the fill never reaches the network)
    for a in scene.window(0, 160, 0, 144)[:3]:
        assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
    hr = scene.hr_mask(0, scene.height)
    np.testing.assert_array_equal(hr, np.repeat(np.repeat(~valid, 4, 0), 4, 1))
    np.testing.assert_array_equal(scene.hr_mask(38, 51), hr[38:51])


def test_nan_nodata_and_its_errors():
    lr, ref = _scene_inputs(2)
    nan = lr.copy()
    nan[10:12] = np.nan
    with pytest.raises(InputValidationError, match="--nodata nan"):
        PreparedScene(as_cube(nan, "hwc"), ref, 4)
    scene = PreparedScene(as_cube(nan, "hwc"), ref, 4, nodata="nan")
    assert scene.masked_pixels == 2 * lr.shape[1]
    everything = np.full_like(lr, FILL)
    with pytest.raises(InputValidationError, match="every pixel"):
        PreparedScene(as_cube(everything, "hwc"), ref, 4, nodata=FILL)
    for bad in ("abc", float("inf")):
        with pytest.raises(InputValidationError, match="nodata"):
            PreparedScene(as_cube(lr, "hwc"), ref, 4, nodata=bad)


def test_fill_takes_the_nearest_valid_pixel():
    block = np.arange(5 * 4 * 2, dtype=np.float64).reshape(5, 4, 2)
    mask = np.zeros((5, 4), bool)
    mask[2] = True  # a fill row: each pixel takes the one above or below it
    mask[:, 3] = True
    out = fill_nodata(block, mask, np.zeros(2))
    np.testing.assert_array_equal(out[~mask], block[~mask])
    valid = np.argwhere(~mask)
    for y, x in np.argwhere(mask):
        dist = np.hypot(valid[:, 0] - y, valid[:, 1] - x)
        assert any((out[y, x] == block[yy, xx]).all() for yy, xx in valid[dist == dist.min()])
    np.testing.assert_array_equal(fill_nodata(block, np.ones((5, 4), bool), np.array([7.0, 9.0]))[..., 1], 9.0)


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.from_pretrained("tiny-x4", quiet=True, tile=128)


def test_output_marks_nodata_and_nan_nodata_is_no_error(tiny):
    lr, ref = _scene_inputs(3, (32, 32))
    m = _fill_mask(32, 32)
    filled = lr.copy()
    filled[m] = FILL
    out = tiny.run(filled, ref, nodata=FILL)
    hm = np.repeat(np.repeat(m, 4, 0), 4, 1)
    assert (out[hm] == FILL).all() and np.isfinite(out[~hm]).all() and (out[~hm] != FILL).all()
    filled[m] = np.nan
    out_nan = tiny.run(filled, ref, nodata="nan")
    assert np.isnan(out_nan[hm]).all() and np.isfinite(out_nan[~hm]).all()
    np.testing.assert_allclose(out_nan[~hm], out[~hm], rtol=1e-5, atol=1e-6)


def test_nodata_benchmark_logic(tiny):
    """``benchmarks/bench_nodata.py`` (the issue's PSNR check; its published run is at 256², where the interior gap
    is the goal) on a small scene: the fill is written back, the masked run stays near the clean one where the
    unmasked run (the behaviour before no-data handling) is garbage."""
    row = bench.measure(tiny, seed=3, size=128, interior=12)
    assert row["nodata_written_back"]
    by = {r["min_distance_px"]: r for r in row["by_distance"]}
    assert set(by) == {0, 4, 8, 12, 16} and by[12]["gap_db"] == row["interior_gap_db"]
    assert by[0]["psnr_clean_db"] > 20.0
    assert by[0]["psnr_clean_db"] - by[0]["psnr_fill_unmasked_db"] > 10.0
    for r in by.values():
        assert abs(r["gap_db"]) < 4.0, r
    assert abs(by[8]["gap_db"]) < 1.0
