"""Tile planner: window geometry (size, alignment, edges, padding), blending weights, memory-based tile choice."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime.planner import (
    FIXED_BYTES,
    axis_starts,
    axis_weights,
    choose_tile,
    estimate_forward_bytes,
    padded_size,
    plan_tiles,
)

GEOMETRIES = [
    (256, 320, 128, 32, 8),
    (256, 320, 192, 64, 0),
    (300, 333, 128, 16, 8),
    (1000, 700, 256, 32, 8),
    (129, 1000, 128, 0, 0),
    (64, 900, 256, 64, 16),
]


@pytest.mark.parametrize("h,w,tile,overlap,margin", GEOMETRIES)
def test_windows_are_aligned_full_size_and_inside(h, w, tile, overlap, margin):
    plan = plan_tiles(h, w, tile, overlap, margin)
    assert plan.padded_height == padded_size(h) and plan.padded_width == padded_size(w)
    for win in plan.windows:
        assert win.h == plan.tile_h >= 128 and win.w == plan.tile_w >= 128
        assert win.h % 8 == 0 and win.w % 8 == 0
        assert win.y0 % 8 == 0 and win.x0 % 8 == 0
        assert 0 <= win.y0 and win.y1 <= plan.padded_height
        assert 0 <= win.x0 and win.x1 <= plan.padded_width
    # the last window is shifted inward to end at the edge instead of shrinking
    assert plan.row_starts[-1] + plan.tile_h == plan.padded_height
    assert plan.col_starts[-1] + plan.tile_w == plan.padded_width
    assert [w.index for w in plan.windows] == list(range(len(plan)))


@pytest.mark.parametrize("h,w,tile,overlap,margin", GEOMETRIES)
def test_every_pixel_gets_positive_weight(h, w, tile, overlap, margin):
    plan = plan_tiles(h, w, tile, overlap, margin)
    acc = np.zeros((plan.padded_height, plan.padded_width))
    for win in plan.windows:
        wy, wx = plan.weights(win)
        assert wy.dtype == np.float32 and (wy >= 0).all() and (wx >= 0).all()
        acc[win.y0:win.y1, win.x0:win.x1] += np.outer(wy, wx)
    assert (acc > 0).all()


def test_padding_rules():
    assert padded_size(1) == 128
    assert padded_size(127) == 128
    assert padded_size(128) == 128
    assert padded_size(130) == 136
    assert padded_size(1000) == 1000
    plan = plan_tiles(100, 50, 256)
    assert (plan.padded_height, plan.padded_width) == (128, 128)
    assert plan.whole_image and plan.padding == (28, 78)
    plan = plan_tiles(130, 250, 128, 16, 8)
    assert (plan.padded_height, plan.padded_width) == (136, 256)


def test_tile_none_is_whole_image_and_large_tiles_clip():
    plan = plan_tiles(300, 410, None)
    assert plan.whole_image and (plan.tile_h, plan.tile_w) == (304, 416)
    plan = plan_tiles(200, 200, 512)
    assert plan.whole_image and plan.tile_h == 200


def test_rectangular_tiles():
    plan = plan_tiles(512, 512, (128, 256), 32, 0)
    assert (plan.tile_h, plan.tile_w) == (128, 256)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tile": 120}, "at least 128"),
        ({"tile": 132}, "multiple of 8"),
        ({"tile": 128, "overlap": 20}, "multiple of 8"),
        ({"tile": 128, "overlap": 64, "margin": 32}, "no stride"),
        ({"tile": 128, "margin": -8}, "at least 0"),
        ({"tile": 128.0}, "integer"),
    ],
)
def test_invalid_geometry_is_refused(kwargs, match):
    with pytest.raises(InputValidationError, match=match):
        plan_tiles(512, 512, **kwargs)


def test_ramps_are_complementary_at_exact_stride():
    # two windows one stride apart: the raw weights already sum to one over the overlap (sin² + cos²)
    tile, overlap, margin, length = 128, 32, 8, 1000
    starts = axis_starts(length, tile, overlap, margin)
    stride = tile - overlap - 2 * margin
    assert starts[1] - starts[0] == stride
    acc = np.zeros(length)
    for s in starts[:-1]:
        acc[s:s + tile] += axis_weights(s, tile, length, overlap, margin)
    interior = acc[margin: starts[-2] + tile - margin - overlap]  # covered by the regular windows only
    np.testing.assert_allclose(interior, 1.0, atol=1e-6)


def test_axis_weights_shape():
    w = axis_weights(96, 128, 512, 32, 8)
    assert w.shape == (128,)
    assert (w[:8] == 0).all() and (w[-8:] == 0).all()  # context margins dropped
    assert (w[8:40] > 0).all() and (w[8:40] < 1).all()  # ramp
    assert (w[40:88] == 1).all()
    edge = axis_weights(0, 128, 512, 32, 8)
    assert (edge[:64] == 1).all()  # no neighbour before: full weight up to the image border


def test_memory_estimate_and_tile_choice(caplog):
    fixed = FIXED_BYTES
    small = estimate_forward_bytes("tiny", 128, 128) - fixed
    big = estimate_forward_bytes("tiny", 1024, 1024) - fixed
    assert big > 64 * small  # linear activations plus RAFT's quadratic correlation volume
    assert estimate_forward_bytes("official", 256, 256) > estimate_forward_bytes("tiny", 256, 256)
    assert estimate_forward_bytes("tiny", 256, 256, batch=4) > 3 * estimate_forward_bytes("tiny", 256, 256)
    assert choose_tile("tiny", 300, 300, budget_bytes=1 << 40) is None  # fits: whole image
    tile = choose_tile("tiny", 4096, 4096, budget_bytes=estimate_forward_bytes("tiny", 256, 256))
    assert tile == 256
    with caplog.at_level(logging.WARNING):
        assert choose_tile("tiny", 4096, 4096, budget_bytes=1) == 128
    assert "exceed the memory budget" in caplog.text


# ---- negotiation: request x backend limits x memory -> one checked plan -------------------------------------------

def test_resolve_tile_checks_a_request_once_without_an_image():
    from sschsr_deploy.runtime.planner import TileLimits, resolve_tile

    free = TileLimits()
    assert resolve_tile("default", free) == 256 and resolve_tile((128, 192), free) == (128, 192)
    assert resolve_tile("auto", free) == "auto" and resolve_tile(None, free) is None
    with pytest.raises(InputValidationError, match="no stride"):
        resolve_tile(128, free, overlap=64, margin=32)  # refused at once, not when a large image comes
    with pytest.raises(InputValidationError, match="multiple of 8"):
        resolve_tile(130, free)
    fixed = TileLimits(((192, 192), (192, 192)), (192, 192), "onnxruntime")
    assert resolve_tile("default", fixed) == resolve_tile("auto", fixed) == 192
    with pytest.raises(InputValidationError, match="does not fit the onnxruntime model"):
        resolve_tile(256, fixed)
    with pytest.raises(InputValidationError, match="whole-image mode"):
        resolve_tile(None, fixed)
    dynamic = TileLimits(((128, 128), (192, 256)))
    assert resolve_tile("default", dynamic) == (192, 256)


def test_negotiate_plan_pads_up_to_the_minimum_and_refuses_beyond_the_maximum():
    from sschsr_deploy.runtime.planner import TileLimits, negotiate_plan

    limits = TileLimits(((256, 256), (256, 256)))
    plan = negotiate_plan(128, 192, 256, limits)
    assert (plan.tile_h, plan.tile_w, plan.padded_height, plan.padded_width) == (256, 256, 256, 256)
    assert len(plan) == 1
    with pytest.raises(InputValidationError, match="exceed the largest"):
        negotiate_plan(300, 300, None, TileLimits(((128, 128), (256, 256))))


def test_negotiate_plan_auto_follows_the_memory_budget_within_the_bounds():
    from sschsr_deploy.runtime.planner import TileLimits, negotiate_plan

    budget = estimate_forward_bytes("tiny", 136, 136)
    plan = negotiate_plan(1000, 1000, "auto", TileLimits(((128, 128), (192, 192))), config="tiny", budget=budget)
    assert plan.tile_h == 136
    whole = negotiate_plan(184, 184, "auto", TileLimits(), config="tiny", budget=1 << 40)
    assert whole.whole_image
    assert negotiate_plan(1000, 1000, "auto", TileLimits(((128, 128), (192, 192)))).tile_h == 192  # no config
