"""Tests for sschsr_deploy.preprocess: golden parity with the official data pipeline, and input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.preprocess import (
    DEFAULT_BANDS,
    ModelInputs,
    bicubic_upsample,
    blur,
    blur_decimate,
    decimate,
    degrade,
    gaussian_kernel,
    match_histograms_per_channel,
    minmax_normalize,
    official_inputs_from_hr,
    pseudo_rgb,
    reference_to_unit,
)
from sschsr_deploy.scene import prepare_inputs

GOLDEN = Path(__file__).parent / "data" / "golden"
CASES = {"A": ("case_A_128x128_sf4_seed0.npz", 4), "B": ("case_B_128x192_sf8_seed1.npz", 8)}
FIELDS = ("hsi_sr", "hsi_rgb_sr", "ref_hr", "hsi_rgb_sr_flow", "ref_hr_flow")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    fname, sf = CASES[request.param]
    with np.load(GOLDEN / fname) as z:
        arrays = {k: z[k] for k in z.files if k.startswith(("in.", "data."))}
    return request.param, sf, arrays


@pytest.fixture(scope="module")
def case_a():
    fname, sf = CASES["A"]
    with np.load(GOLDEN / fname) as z:
        arrays = {k: z[k] for k in z.files if k.startswith(("in.", "data."))}
    return sf, arrays


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# ------------------------------------------------------------------------------------------------- golden parity


def test_full_official_pipeline_is_bit_exact_on_case_a(case_a):
    sf, z = case_a
    sample = official_inputs_from_hr(z["data.raw_hsi"], z["data.ref_png"], sf)
    for name, got in zip(FIELDS, sample.inputs.as_tuple(), strict=True):
        ref = z["in." + name]
        assert got.dtype == np.float32 and got.shape == ref.shape, name
        assert got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, ref, err_msg=name)
    # intermediates stored by the fixtures, float64 as in the pipeline
    np.testing.assert_array_equal(sample.lr_hsi, z["data.lr_hsi"])
    np.testing.assert_array_equal(sample.rgb_lr, z["data.rgb_lr"])
    raw = z["data.raw_hsi"].astype(np.float64)
    np.testing.assert_array_equal(sample.hsi_hr, ((raw - raw.min()) / (raw.max() - raw.min())).transpose(2, 0, 1))
    assert sample.hsi_hr.min() == 0.0 and sample.hsi_hr.max() == 1.0


def test_degradation_pieces_reproduce_stored_lr_and_rgb_lr(case_a):
    sf, z = case_a
    hsi_hr = minmax_normalize(z["data.raw_hsi"])
    assert hsi_hr.dtype == np.float64
    lr = decimate(blur(hsi_hr), sf)
    np.testing.assert_array_equal(_hwc(z["data.lr_hsi"]), lr)
    rgb_lr = degrade(z["data.ref_png"] / 255.0, sf)
    np.testing.assert_array_equal(_hwc(z["data.rgb_lr"]), rgb_lr)


def test_blur_uses_scipy_default_origin_of_the_even_kernel(case_a):
    # The even 8x8 kernel is placed with SciPy's default origin. Shifting it by one pixel must break the parity,
    # which proves the fixtures pin the half-pixel placement down.
    sf, z = case_a
    from scipy import ndimage

    hsi_hr = minmax_normalize(z["data.raw_hsi"])
    shifted = ndimage.convolve(hsi_hr, gaussian_kernel()[..., None], mode="nearest", origin=(-1, -1, 0))
    assert not np.array_equal(shifted[::sf, ::sf], _hwc(z["data.lr_hsi"]))


def test_fused_blur_decimate_is_bit_exact_on_the_fixtures(case_a):
    sf, z = case_a
    # the official pipeline's LR cube (stored C x h x w, float64) from the fused form, bit for bit
    np.testing.assert_array_equal(blur_decimate(minmax_normalize(z["data.raw_hsi"]), sf), _hwc(z["data.lr_hsi"]))


@pytest.mark.parametrize("shape", [(128, 128, 31), (37, 53, 3), (40, 41), (9, 7, 2), (3, 2, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("sf", [1, 3, 4, 8])
def test_fused_blur_decimate_equals_the_two_steps(shape, dtype, sf):
    # same taps, same edge replication, same even-kernel origin: only the summation order may differ
    rng = np.random.default_rng(hash((shape, sf)) % 2**32)
    img = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    for kernel in (None, gaussian_kernel(5, 1.3), rng.random((3, 6)), rng.random((1, 1))):
        want, got = decimate(blur(img, kernel), sf), blur_decimate(img, sf, kernel)
        assert got.shape == want.shape and got.dtype == want.dtype
        rel = np.linalg.norm((got.astype(np.float64) - want).ravel()) / np.linalg.norm(want.ravel())
        assert rel < (1e-6 if got.dtype == np.float32 else 1e-14)


def test_fused_blur_decimate_takes_strided_views_and_refuses_bad_input():
    rng = np.random.default_rng(5)
    big = rng.random((80, 60, 8)).astype(np.float32)
    view = big[::2, ::-1, 1::2]  # non-contiguous, negative stride
    np.testing.assert_array_equal(blur_decimate(view, 4), decimate(blur(np.ascontiguousarray(view)), 4))
    with pytest.raises(InputValidationError, match="scale must be a positive integer"):
        blur_decimate(big, 0)
    with pytest.raises(InputValidationError, match="2-D"):
        blur_decimate(big, 4, np.ones((2, 2, 2)))
    with pytest.raises(InputValidationError):
        blur_decimate(np.zeros((4,)), 4)


def test_upsampling_stored_lr_reproduces_inputs(case):
    name, sf, z = case
    up = bicubic_upsample(_hwc(z["data.lr_hsi"]), sf)
    assert up.dtype == np.float64
    np.testing.assert_array_equal(np.clip(up, 0, 1).astype(np.float32), _hwc(z["in.hsi_sr"][0]))
    rgb = match_histograms_per_channel(pseudo_rgb(up).astype(np.float32), _hwc(z["data.rgb_lr"]))
    assert rgb.dtype == np.float32
    np.testing.assert_array_equal(np.clip(rgb, 0, 1), _hwc(z["in.hsi_rgb_sr"][0]))
    # README section 3 step 4: the official RAFT copy (float32 arithmetic on the raw 0..255 cube) stays within
    # 5e-5 of 255 x the bands of the unclipped float64 upsampled cube. Measured: 4.58e-5 in both cases.
    flow = (255.0 * pseudo_rgb(up)).astype(np.float32)
    assert _maxabs(flow, _hwc(z["in.hsi_rgb_sr_flow"][0])) <= 5e-5


def test_flow_copy_vs_unclipped_upsampled_case_a(case_a):
    sf, z = case_a
    up = degrade(minmax_normalize(z["data.raw_hsi"]), sf)
    # The raw cube spans exactly 0..255, so 255 x normalised == raw up to float32 rounding (measured 4.2e-5).
    assert _maxabs(255.0 * pseudo_rgb(up), _hwc(z["in.hsi_rgb_sr_flow"][0])) <= 5e-5


# ------------------------------------------------------------------------------------------------- prepare_inputs


def test_prepare_inputs_without_normalisation_matches_official(case):
    # The stored LR cube is already on the HR cube's [0, 1] scale, so skipping the normalisation reproduces the
    # official upsampled input and pseudo-RGB bit for bit; the RAFT copy differs by float32 rounding only.
    name, sf, z = case
    out = prepare_inputs(_hwc(z["data.lr_hsi"]), z["data.ref_png"], sf, normalize=False)
    for field in ("hsi_sr", "hsi_rgb_sr", "ref_hr", "ref_hr_flow"):
        np.testing.assert_array_equal(getattr(out, field), z["in." + field], err_msg=field)
    assert _maxabs(out.hsi_rgb_sr_flow, z["in.hsi_rgb_sr_flow"]) <= 5e-5


def test_prepare_inputs_normalises_the_lr_cube_with_its_own_range(case):
    name, sf, z = case
    lr = _hwc(z["data.lr_hsi"])
    lo, hi = lr.min(), lr.max()
    # blurring shrinks the range, so min-max normalising the LR cube is NOT the identity ...
    assert lo > 0.01 and hi < 0.99
    out = prepare_inputs(lr, z["data.ref_png"], sf)
    assert not np.array_equal(out.hsi_sr, z["in.hsi_sr"])
    # ... but OpenCV's cubic weights sum to 1, so it is the same affine map applied after upsampling. The official
    # input is not clipped anywhere in these fixtures, hence comparable; float32 storage of it bounds the error.
    official = z["in.hsi_sr"].astype(np.float64)
    assert official.min() > 0.0 and official.max() < 1.0
    expected = np.clip((official - lo) / (hi - lo), 0.0, 1.0)
    assert _maxabs(out.hsi_sr, expected) <= 1e-6
    # Histogram matching is rank based, hence nearly invariant to that affine map; float32 rounding of the source
    # changes some ties (measured: 13 pixels / 4.4e-5 in case A, 75 pixels / 8.6e-5 in case B).
    assert _maxabs(out.hsi_rgb_sr, z["in.hsi_rgb_sr"]) <= 2e-4
    # reference-derived inputs do not depend on the HSI at all
    np.testing.assert_array_equal(out.ref_hr, z["in.ref_hr"])
    np.testing.assert_array_equal(out.ref_hr_flow, z["in.ref_hr_flow"])


def test_prepare_inputs_shapes_dtypes_and_ranges(case):
    name, sf, z = case
    lr = _hwc(z["data.lr_hsi"]).astype(np.float32) * 4000.0 + 100.0  # arbitrary sensor scale
    h, w, c = lr.shape
    out = prepare_inputs(lr, z["data.ref_png"], sf)
    shapes = {"hsi_sr": (1, c, h * sf, w * sf), **{f: (1, 3, h * sf, w * sf) for f in FIELDS[1:]}}
    for field, arr in zip(FIELDS, out.as_tuple(), strict=True):
        assert arr.shape == shapes[field] and arr.dtype == np.float32 and arr.flags.c_contiguous, field
        assert np.isfinite(arr).all(), field
    for field in ("hsi_sr", "hsi_rgb_sr", "ref_hr"):
        arr = getattr(out, field)
        assert arr.min() >= 0.0 and arr.max() <= 1.0, field
    assert out.ref_hr_flow.max() > 1.0 and out.ref_hr_flow.max() <= 255.0
    # the RAFT copy is 255 x the unclipped normalised bands: it may overshoot 0..255 a little (bicubic ringing)
    assert 200.0 < out.hsi_rgb_sr_flow.max() < 275.0 and out.hsi_rgb_sr_flow.min() > -20.0
    # the normalised cube spans [0, 1] before upsampling, so its upsampled clip reaches both ends
    assert out.hsi_sr.min() == 0.0 and out.hsi_sr.max() == 1.0


def test_prepare_inputs_is_invariant_to_the_cube_scale(case_a):
    sf, z = case_a
    lr = _hwc(z["data.lr_hsi"])
    a = prepare_inputs(lr, z["data.ref_png"], sf)
    b = prepare_inputs(lr * 255.0 + 7.0, z["data.ref_png"], sf)
    assert _maxabs(a.hsi_sr, b.hsi_sr) <= 1e-6
    assert _maxabs(a.hsi_rgb_sr_flow, b.hsi_rgb_sr_flow) <= 1e-4


def test_reference_dtypes_give_the_same_inputs(case_a):
    sf, z = case_a
    lr = _hwc(z["data.lr_hsi"])
    png = z["data.ref_png"]
    a = prepare_inputs(lr, png, sf)
    b = prepare_inputs(lr, png.astype(np.uint16) * 257, sf)  # 257 * v / 65535 == v / 255
    c = prepare_inputs(lr, png / 255.0, sf)
    for other in (b, c):
        for x, y in zip(a.as_tuple(), other.as_tuple(), strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(reference_to_unit(png.astype(np.float32) / 255.0), (png.astype(np.float32) / 255.0))


def test_model_inputs_to_torch(case_a):
    sf, z = case_a
    out = prepare_inputs(_hwc(z["data.lr_hsi"]), z["data.ref_png"], sf)
    tensors = out.to_torch()
    assert len(tensors) == 5
    for t, a in zip(tensors, out.as_tuple(), strict=True):
        assert str(t.dtype) == "torch.float32" and tuple(t.shape) == a.shape
        np.testing.assert_array_equal(t.numpy(), a)
    assert str(out.to_torch("cpu")[0].device) == "cpu"


def test_model_inputs_is_frozen_and_checks_layout(case_a):
    sf, z = case_a
    out = prepare_inputs(_hwc(z["data.lr_hsi"]), z["data.ref_png"], sf)
    with pytest.raises(AttributeError):
        out.hsi_sr = out.ref_hr  # type: ignore[misc]
    with pytest.raises(InputValidationError, match="float32 1 x C x H x W"):
        ModelInputs(out.hsi_sr.astype(np.float64), *out.as_tuple()[1:])
    with pytest.raises(InputValidationError, match="spatial size"):
        ModelInputs(out.hsi_sr[..., :64], *out.as_tuple()[1:])


# ------------------------------------------------------------------------------------------------- building blocks


def test_gaussian_kernel_properties():
    k = gaussian_kernel()
    assert k.shape == (8, 8) and k.dtype == np.float64
    assert abs(k.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(k, k.T, rtol=0, atol=0)
    np.testing.assert_allclose(k, k[::-1, :], rtol=0, atol=1e-18)
    np.testing.assert_allclose(k, k[:, ::-1], rtol=0, atol=1e-18)
    # taps at +-0.5 ... +-3.5: the four central taps are the largest and equal, ratio to a neighbour is exp(-2/18)
    assert k[3, 3] == k.max() and k[3, 4] == k[4, 3] == k[4, 4] == k[3, 3]
    np.testing.assert_allclose(k[3, 2] / k[3, 3], np.exp(-(1.5**2 - 0.5**2) / 18.0), rtol=1e-12)
    assert (k > 0).all()


def test_bicubic_upsample_many_bands_in_chunks():
    rng = np.random.default_rng(0)
    import cv2

    cube = rng.random((6, 5, 600))
    up = bicubic_upsample(cube, 2)
    assert up.shape == (12, 10, 600) and up.dtype == np.float64
    per_band = np.stack(
        [cv2.resize(np.ascontiguousarray(cube[..., i]), (10, 12), interpolation=cv2.INTER_CUBIC) for i in range(600)],
        axis=-1,
    )
    np.testing.assert_array_equal(up, per_band)  # float64: chunking does not change a single bit
    up32 = bicubic_upsample(cube.astype(np.float32), 2)
    assert up32.dtype == np.float32
    # float32: OpenCV's code path depends on the channel count; measured difference 2.4e-7 (1 ulp)
    assert _maxabs(up32, per_band) <= 1e-6


def test_bicubic_upsample_single_band_and_2d_keep_layout():
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    assert bicubic_upsample(img, 3).shape == (12, 15)
    assert bicubic_upsample(img[..., None], 3).shape == (12, 15, 1)
    assert bicubic_upsample(img.astype(np.uint16), 2).dtype == np.float64


def test_degrade_keeps_float_dtype_and_size():
    cube = np.random.default_rng(1).random((16, 24, 4)).astype(np.float32)
    out = degrade(cube, 4)
    assert out.dtype == np.float32 and out.shape == cube.shape
    assert degrade(cube.astype(np.float64), 8).dtype == np.float64
    assert blur(cube[..., 0]).shape == (16, 24)


def test_pseudo_rgb_custom_bands():
    cube = np.arange(2 * 2 * 128, dtype=np.float64).reshape(2, 2, 128)
    np.testing.assert_array_equal(pseudo_rgb(cube, (69, 99, 35)), cube[..., [69, 99, 35]])
    assert DEFAULT_BANDS == (15, 8, 3)


def test_minmax_normalize_is_global_over_pixels_and_bands():
    x = np.array([[[2.0, 4.0]], [[6.0, 10.0]]], dtype=np.float32)
    out = minmax_normalize(x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, (x.astype(np.float64) - 2.0) / 8.0)
    with pytest.raises(InputValidationError, match=r"cube is constant \(min == max == 3\.0\)"):
        minmax_normalize(np.full((2, 2, 3), 3, dtype=np.uint16))


# ------------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(3)
    lr = rng.random((4, 6, 31))
    ref = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    return lr, ref


def test_small_inputs_are_valid(small):
    lr, ref = small
    prepare_inputs(lr, ref, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_cube_is_rejected(small, bad):
    lr, ref = small
    lr = lr.copy()
    lr[1, 2, 3] = bad
    with pytest.raises(InputValidationError, match=r"LR cube contains 1 non-finite value"):
        prepare_inputs(lr, ref, 4)


def test_non_finite_reference_is_rejected(small):
    lr, ref = small
    ref = ref / 255.0
    ref[0, 0, 0] = np.nan
    with pytest.raises(InputValidationError, match=r"reference contains 1 non-finite"):
        prepare_inputs(lr, ref, 4)


def test_non_finite_hr_cube_is_rejected(small):
    _, ref = small
    cube = np.ones((16, 24, 31), np.float32)
    cube[0, 0, 0] = np.nan
    with pytest.raises(InputValidationError, match=r"HR cube contains 1 non-finite"):
        official_inputs_from_hr(cube, ref, 4)


def test_constant_cube_is_rejected(small):
    _, ref = small
    msg = r"LR cube is constant \(min == max == 5\.0\).*normalisation is impossible"
    with pytest.raises(InputValidationError, match=msg):
        prepare_inputs(np.full((4, 6, 31), 5.0), ref, 4)
    with pytest.raises(InputValidationError, match=r"HR cube is constant \(min == max == 0\.0\)"):
        official_inputs_from_hr(np.zeros((16, 24, 31), np.float32), ref, 4)


@pytest.mark.parametrize("shape", [(4, 6), (1, 4, 6, 31)])
def test_wrong_cube_ndim_is_rejected(small, shape):
    _, ref = small
    with pytest.raises(InputValidationError, match=rf"LR cube must be a 3-D array .*got a {len(shape)}-D array"):
        prepare_inputs(np.ones(shape), ref, 4)


def test_wrong_reference_ndim_is_rejected(small):
    lr, ref = small
    with pytest.raises(InputValidationError, match=r"reference must be a 3-D array .*got a 2-D array"):
        prepare_inputs(lr, ref[..., 0], 4)


@pytest.mark.parametrize("channels", [1, 4])
def test_reference_not_three_channels_is_rejected(small, channels):
    lr, _ = small
    ref = np.zeros((16, 24, channels), np.uint8)
    with pytest.raises(InputValidationError, match=rf"reference must have 3 channels .*got {channels} channels"):
        prepare_inputs(lr, ref, 4)


def test_reference_size_mismatch_states_both_sizes(small):
    lr, ref = small
    # one rule with the tiled runtime: refused beyond 2 % apart (within, resized with a warning)
    msg = r"the RGB reference is 16x24 but the LR cube x scale is 12x18 \(33.3% apart, more than the 2% tolerance\)"
    with pytest.raises(InputValidationError, match=msg):
        prepare_inputs(lr, ref, 3)


def test_hr_size_not_multiple_of_sf_is_rejected(small):
    rng = np.random.default_rng(0)
    cube = rng.random((18, 24, 31)).astype(np.float32)
    ref = np.zeros((18, 24, 3), np.uint8)
    with pytest.raises(InputValidationError, match=r"HR size 18x24 is not the LR size 4x6 x sf 4 = 16x24"):
        official_inputs_from_hr(cube, ref, 4)
    with pytest.raises(InputValidationError, match=r"reference size 18x20 does not match the HR cube size 18x24"):
        official_inputs_from_hr(cube, ref[:, :20], 4)


@pytest.mark.parametrize("sf", [0, -4, 2.5, 4.0, "4", True, None])
def test_bad_scale_factor_is_rejected(small, sf):
    lr, ref = small
    with pytest.raises(InputValidationError, match=r"scale must be a positive integer"):
        prepare_inputs(lr, ref, sf)


def test_numpy_integer_scale_factor_is_accepted(small):
    lr, ref = small
    assert prepare_inputs(lr, ref, np.int64(4)).hsi_sr.shape == (1, 31, 16, 24)


@pytest.mark.parametrize("bands", [(31, 8, 3), (15, 8, -1), (15, 100, 3)])
def test_band_index_out_of_range_is_rejected(small, bands):
    lr, ref = small
    bad = next(b for b in bands if not 0 <= b < 31)
    with pytest.raises(InputValidationError, match=rf"band index {bad} is out of range for a cube with 31 bands"):
        prepare_inputs(lr, ref, 4, bands=bands)


def test_band_triple_must_have_three_entries(small):
    lr, ref = small
    with pytest.raises(InputValidationError, match=r"exactly 3 band indices"):
        prepare_inputs(lr, ref, 4, bands=(1, 2))


@pytest.mark.parametrize("shape", [(0, 6, 31), (4, 0, 31), (4, 6, 0)])
def test_empty_cube_is_rejected(small, shape):
    _, ref = small
    with pytest.raises(InputValidationError, match=r"LR cube is empty"):
        prepare_inputs(np.ones(shape), ref, 4)


def test_empty_reference_is_rejected(small):
    lr, _ = small
    with pytest.raises(InputValidationError, match=r"reference is empty"):
        prepare_inputs(lr, np.zeros((0, 24, 3), np.uint8), 4)


def test_float_reference_out_of_unit_range_is_rejected(small):
    lr, ref = small
    with pytest.raises(InputValidationError, match=r"float reference must be in \[0, 1\]; got values in \[0, 2\d\d\]"):
        prepare_inputs(lr, ref.astype(np.float32), 4)


def test_unsupported_reference_dtype_is_rejected(small):
    lr, ref = small
    with pytest.raises(InputValidationError, match=r"reference dtype int64 is not supported"):
        prepare_inputs(lr, ref.astype(np.int64), 4)


def test_non_array_cube_is_rejected(small):
    _, ref = small
    with pytest.raises(InputValidationError, match=r"LR cube must be a numpy array"):
        prepare_inputs([[[1.0, 2.0]]], ref, 4)


def test_errors_are_value_errors(small):
    _, ref = small
    with pytest.raises(ValueError):
        prepare_inputs(np.full((4, 6, 31), 1.0), ref, 4)


def test_prepare_inputs_follows_the_runtime_rule_for_a_slightly_off_reference(small, caplog):
    """One rule for both paths (sschsr_deploy.scene): within 2 % of LR size x scale the reference is resized with a
    warning, exactly as the tiled runtime does."""
    import logging

    import cv2

    lr, ref = small
    rng = np.random.default_rng(5)
    lr = rng.random(lr.shape).astype(np.float32)
    big_lr = cv2.resize(lr, (60, 40), interpolation=cv2.INTER_LINEAR)  # 40 x 60 LR: 160 x 240 HR at x4
    big_ref = rng.integers(0, 255, (162, 241, 3), dtype=np.uint8)  # 1.25 % / 0.4 % off
    with caplog.at_level(logging.WARNING):
        out = prepare_inputs(big_lr, big_ref, 4)
    assert out.ref_hr.shape == (1, 3, 160, 240) and "resized to fit" in caplog.text
