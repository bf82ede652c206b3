"""Blender: seamless raised-cosine blending in fp32, normalised weights, streaming rows with flat memory."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy.runtime.blender import StreamingBlender, blend
from sschsr_deploy.runtime.planner import plan_tiles

PLANS = [
    (256, 320, 128, 32, 8),
    (256, 320, 128, 64, 0),
    (300, 333, 128, 16, 8),
    (100, 50, 128, 16, 8),
    (520, 400, 192, 64, 8),
    (256, 256, 128, 0, 0),
]


def _crops(plan, field):
    return [field[:, w.y0:w.y1, w.x0:w.x1].astype(np.float32) for w in plan.windows]


@pytest.mark.parametrize("geometry", PLANS)
def test_constant_is_reproduced(geometry):
    plan = plan_tiles(*geometry)
    field = np.full((2, plan.padded_height, plan.padded_width), 0.7311, dtype=np.float32)
    field[1] = -123.5
    out = blend(plan, _crops(plan, field), 2)
    assert out.shape == (2, plan.height, plan.width) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.float32(0.7311), rtol=4e-7, atol=0)
    np.testing.assert_allclose(out[1], np.float32(-123.5), rtol=4e-7, atol=0)


@pytest.mark.parametrize("geometry", PLANS)
def test_normalised_weights_sum_to_one_everywhere(geometry):
    # blending all-ones tiles gives the sum of the normalised weights: 1 at every pixel, borders and corners included
    plan = plan_tiles(*geometry)
    ones = np.ones((1, plan.padded_height, plan.padded_width), dtype=np.float32)
    out = blend(plan, _crops(plan, ones), 1)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=2.5e-7)
    for corner in (out[0, 0, 0], out[0, 0, -1], out[0, -1, 0], out[0, -1, -1]):
        assert abs(corner - 1.0) <= 2.5e-7


@pytest.mark.parametrize("geometry", PLANS)
def test_smooth_function_is_reproduced_without_seams(geometry):
    plan = plan_tiles(*geometry)
    yy, xx = np.mgrid[0:plan.padded_height, 0:plan.padded_width].astype(np.float64)
    field = np.stack([np.sin(yy / 37.0) + np.cos(xx / 23.0), 1e-3 * yy * xx + 5.0])
    out = blend(plan, _crops(plan, field), 2)
    ref = field[:, :plan.height, :plan.width].astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_tiles_that_disagree_blend_smoothly():
    # window-dependent offsets: the blend must stay within the range of the contributions and vary smoothly
    plan = plan_tiles(256, 320, 128, 32, 8)
    tiles = [np.full((1, w.h, w.w), float(w.index), np.float32) for w in plan.windows]
    out = blend(plan, tiles, 1)[0]
    assert out.min() >= 0 and out.max() <= len(plan) - 1
    assert np.abs(np.diff(out, axis=1)).max() < 1.0  # no hard seam between neighbours whose values differ by 1


def test_streaming_rows_in_order_and_flat_memory():
    plan = plan_tiles(1000, 300, 128, 32, 8)
    rows = []

    def sink(y0, block):
        rows.append((y0, block.shape[1]))
        assert block.shape[0] == 3 and block.shape[2] == 300

    blender = StreamingBlender(plan, 3, sink)
    assert blender._acc.shape == (3, 128, plan.padded_width)  # one window tall, whatever the image height
    for w in plan.windows:
        blender.add(w, np.ones((3, w.h, w.w), np.float32))
    blender.finish()
    covered = [y for y0, n in rows for y in range(y0, y0 + n)]
    assert covered == list(range(1000))
    assert len(rows) > 3  # rows were emitted before the end


def test_order_and_completeness_are_enforced():
    plan = plan_tiles(256, 256, 128, 32, 8)
    blender = StreamingBlender(plan, 1, lambda y0, b: None)
    wins = plan.windows
    blender.add(wins[1], np.ones((1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="plan order"):
        blender.add(wins[0], np.ones((1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        blender.add(wins[2], np.ones((2, 128, 128), np.float32))
    with pytest.raises(RuntimeError, match="finished after"):
        blender.finish()


def test_wide_scenes_are_emitted_in_bounded_chunks(monkeypatch):
    """Finished rows go to the sink in blocks of about EMIT_BYTES, so the sink's temporaries do not grow with the
    scene's width; the result is the same as emitting whole bands."""
    from sschsr_deploy.runtime import blender as blender_mod

    plan = plan_tiles(400, 700, 128, 32, 8)
    rng = np.random.default_rng(0)
    tiles = [rng.random((3, w.h, w.w), dtype=np.float32) for w in plan.windows]
    whole = blend(plan, tiles, 3)
    monkeypatch.setattr(blender_mod, "EMIT_BYTES", 4 * 3 * 700 * 5)  # five rows per block
    sizes = []
    out = np.empty_like(whole)

    def sink(y0, block):
        sizes.append(block.shape[1])
        out[:, y0:y0 + block.shape[1]] = block

    b = StreamingBlender(plan, 3, sink)
    for w, t in zip(plan.windows, tiles, strict=True):
        b.add(w, t)
    b.finish()
    assert max(sizes) == 5 and sum(sizes) == 400
    assert np.array_equal(out, whole)
