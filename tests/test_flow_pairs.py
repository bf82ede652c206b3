"""Stage-0 flow pairs: exact labels (the displaced photo warped back by the flow is the photo), bounds, determinism."""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.data.flow_pairs import FlowPairPool
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.model.warp import warp_reference_exact


@pytest.fixture(scope="module")
def pool():
    return FlowPairPool(scenes=2, scene_size=160, crop=128, max_displacement=6.0, seed=3)


def test_shapes_ranges_and_bounds(pool):
    hsi, ref, flow = pool.batch(4)
    assert hsi.shape == ref.shape == (4, 3, 128, 128) and flow.shape == (4, 2, 128, 128)
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 255.0 + 1e-3 and float(hsi.max()) > 50  # RAFT's 0..255 scale
    assert float(flow.abs().max()) <= 6.0 + 1e-5  # translation 70 % + smooth part 30 % of the bound
    assert float(flow.abs().amax(dim=(1, 2, 3)).max()) > 0.3  # and the pairs really move


def test_flow_label_is_exact(pool):
    """Sampling the displaced photo at p + flow(p) gives back the aligned photo at p (up to bilinear blur)."""
    torch.manual_seed(0)
    hsi, ref, flow = pool.batch(6, same_modality=1.0)  # first image = the aligned photo crop
    inner = (..., slice(16, -16), slice(16, -16))
    back = warp_reference_exact(ref, flow)
    err = (back - hsi)[inner].abs().mean(dim=(1, 2, 3))
    unwarped = (ref - hsi)[inner].abs().mean(dim=(1, 2, 3))
    moving = flow.abs().amax(dim=(1, 2, 3)) > 1.0
    assert bool(moving.any())
    assert bool((err[moving] < 0.35 * unwarped[moving]).all()), (err, unwarped)
    wrong_sign = (warp_reference_exact(ref, -flow) - hsi)[inner].abs().mean(dim=(1, 2, 3))
    assert bool((wrong_sign[moving] > 2 * err[moving]).all())  # the convention is not symmetric: a sign error fails


def test_modality_switch_and_determinism():
    a = FlowPairPool(scenes=2, scene_size=136, crop=128, seed=7)
    b = FlowPairPool(scenes=2, scene_size=136, crop=128, seed=7)
    hsi_a, ref_a, flow_a = a.batch(3, same_modality=0.0)
    hsi_b, ref_b, flow_b = b.batch(3, same_modality=0.0)
    for x, y in ((hsi_a, hsi_b), (ref_a, ref_b), (flow_a, flow_b)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    crops = {tuple(e.hsi_flow.shape) for e in a.entries}
    assert crops == {(3, 136, 136)}
    # cross-modal pairs: the first image is the cube's pseudo-RGB, not the photo
    photo, _, _ = a.batch(3, same_modality=1.0)
    cube, _, _ = a.batch(3, same_modality=0.0)
    assert float((photo - cube).abs().mean()) > 1.0


def test_bad_arguments():
    with pytest.raises(InputValidationError, match="crop"):
        FlowPairPool(scenes=1, scene_size=128, crop=136)
    with pytest.raises(InputValidationError, match="max_displacement"):
        FlowPairPool(scenes=1, scene_size=128, crop=128, max_displacement=-1)
