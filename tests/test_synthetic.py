"""Scene generator: measured spectra, deterministic, misalignment within its bounds, official LR degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from sschsr_deploy.data import make_scene, render_rgb, spectral_response, wavelengths
from sschsr_deploy.data.spectra import CAMERAS, ILLUMINANTS, spectral_library
from sschsr_deploy.data.synthetic import Misalignment, gaussian_filter_wrap, ground_truth_flow, jitter_response
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.model.warp import warp_reference_exact
from sschsr_deploy.preprocess import blur, decimate

WL = wavelengths(31)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, size=(96, 128), scale=4)


# ------------------------------------------------------------------------------------------------ spectral library
def test_library_sizes_and_ranges():
    lib = spectral_library(WL, "all")
    assert lib.reflectances.shape == (238, 31)  # 2 x 24 ColorChecker + 190 rawtoaces patches
    assert 0.0 <= lib.reflectances.min() and lib.reflectances.max() <= 1.0
    assert set(lib.cameras) == {"Nikon D5100", "Canon EOS 5D Mark II", "Sigma SD Merrill"}
    for v in (*lib.illuminants.values(), *lib.cameras.values()):
        assert v.min() >= 0.0 and np.isclose(v.max(), 1.0)
    # a measured fact: the BabelColor "white 9.5" patch reflects ~90 % at 550 nm, "black 2" under 5 %
    names = list(lib.reflectance_names)
    white = lib.reflectances[names.index("BabelColor Average/white 9.5 (.05 D)")]
    black = lib.reflectances[names.index("BabelColor Average/black 2 (1.5 D)")]
    assert 0.8 < white[15] < 0.95 and black[15] < 0.05
    # illuminant A (tungsten) rises towards red, D65 does not
    assert lib.illuminants["A"][-1] > 3 * lib.illuminants["A"][0]
    assert lib.illuminants["D65"][-1] < lib.illuminants["D65"][10]


@pytest.mark.parametrize("camera", ["Nikon D5100", "Canon EOS 5D Mark II", "Sigma SD Merrill"])
def test_camera_curves_are_red_green_blue(camera):
    srf = spectral_response(WL, camera)
    np.testing.assert_allclose(srf.sum(1), 1.0)
    centroid = srf @ WL  # R centroid > G > B
    assert centroid[0] > centroid[1] > centroid[2]


def test_train_and_test_splits_are_disjoint():
    train, test = spectral_library(WL, "train"), spectral_library(WL, "test")
    assert not set(train.reflectance_names) & set(test.reflectance_names)
    assert len(train.reflectances) + len(test.reflectances) == 238
    assert not set(train.cameras) & set(test.cameras) and not set(train.illuminants) & set(test.illuminants)
    s = make_scene(seed=5, size=(64, 64), split="test")
    assert s.camera in CAMERAS["test"] and set(s.illuminants) <= set(ILLUMINANTS["test"])
    assert set(s.material_names) <= set(test.reflectance_names)


# ------------------------------------------------------------------------------------------------ scenes
def test_shapes_dtypes_and_ranges(scene):
    assert scene.hr_hsi.shape == (96, 128, 31) and scene.hr_hsi.dtype == np.float32
    assert scene.lr_hsi.shape == (24, 32, 31) and scene.lr_hsi.dtype == np.float32
    assert scene.ref_rgb.shape == (96, 128, 3) and scene.ref_rgb.dtype == np.uint8
    assert 0.0 <= scene.hr_hsi.min() and 0.5 < scene.hr_hsi.max() <= 1.0
    assert 0.0 <= scene.lr_hsi.min() and scene.lr_hsi.max() <= 1.0
    assert (scene.spectra >= 0).all() and scene.spectra.shape == (6, 31)
    np.testing.assert_allclose(scene.abundances.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scene.srf.sum(1), 1.0)
    assert scene.ref_rgb.max() >= 250 and scene.ref_rgb.min() < 128  # exposed to near full scale, with contrast
    assert scene.describe()["camera"] == scene.camera


def test_deterministic_per_seed(scene):
    again = make_scene(seed=3, size=(96, 128), scale=4)
    for name in ("hr_hsi", "lr_hsi", "ref_rgb", "displacement"):
        np.testing.assert_array_equal(getattr(again, name), getattr(scene, name))
    other = make_scene(seed=4, size=(96, 128), scale=4)
    assert not np.array_equal(other.hr_hsi, scene.hr_hsi)


def test_lr_is_the_official_degradation_plus_noise():
    clean = make_scene(seed=8, size=(96, 128), scale=4, hsi_noise=0.0)
    expected = decimate(blur(clean.hr_hsi.astype(np.float64)), 4)
    np.testing.assert_allclose(clean.lr_hsi, expected, atol=1e-6)
    noisy = make_scene(seed=8, size=(96, 128), scale=4, hsi_noise=0.01)
    np.testing.assert_array_equal(noisy.hr_hsi, clean.hr_hsi)
    assert 0.008 < float(np.std(noisy.lr_hsi.astype(np.float64) - expected)) < 0.012


@pytest.mark.parametrize("bounds", [Misalignment(), Misalignment.large(),
                                    Misalignment(max_translation=0, max_rotation_deg=0, max_zoom=0, max_perspective=0,
                                                 max_nonrigid=0, max_parallax=5.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_misalignment_within_requested_bounds(bounds, seed):
    h, w = 128, 160
    s = make_scene(seed=seed, size=(h, w), misalignment=bounds)
    c = s.components
    # the homography's largest displacement is at a corner: translation + rotation/zoom of the corner radius, plus
    # the perspective term's relative change of the corner position
    r = np.hypot((h - 1) / 2, (w - 1) / 2)
    rot = 2 * np.sin(np.deg2rad(bounds.max_rotation_deg) / 2) * (1 + bounds.max_zoom)
    homography_bound = np.hypot(bounds.max_translation, bounds.max_translation) + r * (
        rot + bounds.max_zoom + 2 * bounds.max_perspective)
    assert c["homography"] <= homography_bound + 1e-6
    assert c["nonrigid"] <= bounds.max_nonrigid * np.sqrt(2) + 1e-6
    assert c["parallax"] <= bounds.max_parallax + 1e-6
    peak = np.sqrt((s.displacement.astype(np.float64) ** 2).sum(-1)).max()
    assert peak <= c["homography"] + c["nonrigid"] + c["parallax"] + 1e-4
    total_bound = homography_bound + bounds.max_nonrigid * np.sqrt(2) + bounds.max_parallax
    assert 0.1 * total_bound < peak  # the bounds are really used, not just respected
    if bounds.max_parallax and not bounds.max_nonrigid:
        assert s.displacement.std(axis=(0, 1)).max() > 0.1  # objects move differently from the background


def test_aligned_photo_has_no_displacement():
    s = make_scene(seed=1, size=(64, 64), misalignment=Misalignment.none())
    assert np.abs(s.displacement).max() == 0.0


def test_ground_truth_flow_aligns_the_photo():
    """Warping the photo with the ground-truth flow brings it onto the cube's grid: the flow's sign and axes."""
    s = make_scene(seed=3, size=(128, 128), misalignment=Misalignment(max_translation=6.0, max_rotation_deg=0,
                   max_zoom=0, max_perspective=0, max_nonrigid=1.0, max_parallax=0), rgb_noise=False, rgb_blur=0.0)
    lin = render_rgb(s.hr_hsi, s.srf)
    aligned = (lin / lin.max()) ** (1 / 2.2)
    ref = torch.from_numpy((s.ref_rgb / 255.0).astype(np.float32).transpose(2, 0, 1))[None]
    flow = torch.from_numpy(np.ascontiguousarray(ground_truth_flow(s).transpose(2, 0, 1)))[None]

    def corr(img: np.ndarray) -> float:
        a, b = img[12:-12, 12:-12, 1].ravel(), aligned[12:-12, 12:-12, 1].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    before = corr(s.ref_rgb / 255.0)
    after = corr(warp_reference_exact(ref, flow)[0].numpy().transpose(1, 2, 0))
    wrong_sign = corr(warp_reference_exact(ref, -flow)[0].numpy().transpose(1, 2, 0))
    assert after > 0.99 and after > before + 0.02 and wrong_sign < before


def test_aligned_photo_is_the_photo_seen_from_the_cube():
    """``ref_rgb_aligned`` (the warp-refine net's training target) matches the photo warped back by the true flow,
    and the photo itself when there is no misalignment (up to noise and 8-bit rounding)."""
    s = make_scene(seed=5, size=(128, 128), rgb_noise=False)
    assert s.ref_rgb_aligned.shape == s.ref_rgb.shape and s.ref_rgb_aligned.dtype == np.float32
    assert 0.0 <= float(s.ref_rgb_aligned.min()) and float(s.ref_rgb_aligned.max()) <= 1.0
    ref = torch.from_numpy((s.ref_rgb / 255.0).astype(np.float32).transpose(2, 0, 1))[None]
    flow = torch.from_numpy(np.ascontiguousarray(ground_truth_flow(s).transpose(2, 0, 1)))[None]
    back = warp_reference_exact(ref, flow)[0].numpy().transpose(1, 2, 0)
    inner = (slice(16, -16), slice(16, -16))
    err_back = np.abs(back[inner] - s.ref_rgb_aligned[inner]).mean()
    err_raw = np.abs(s.ref_rgb[inner] / 255.0 - s.ref_rgb_aligned[inner]).mean()
    assert err_back < 0.5 * err_raw and err_back < 0.03, (err_back, err_raw)
    still = make_scene(seed=5, size=(64, 64), misalignment=Misalignment.none(), rgb_noise=False)
    np.testing.assert_allclose(still.ref_rgb / 255.0, still.ref_rgb_aligned, atol=0.6 / 255 + 1e-6)


def test_band_count_and_structure():
    s = make_scene(seed=0, size=(64, 64), bands=10, scale=2, materials=3)
    assert s.hr_hsi.shape == (64, 64, 10) and s.lr_hsi.shape == (32, 32, 10)
    assert spectral_response(wavelengths(10)).shape == (3, 10)
    edges = np.abs(np.diff(s.hr_hsi, axis=1)).max(axis=-1)
    assert edges.max() > 0.05  # hard edges exist
    assert (edges < 0.01).mean() > 0.2  # and smooth regions


@pytest.mark.parametrize("kwargs", [
    {"size": (102, 128)}, {"scale": 0}, {"bands": 2}, {"size": (4, 4)}, {"camera": "Leica"},
    {"split": "test", "camera": "Nikon D5100"}, {"materials": 500}, {"split": "validation"},
    {"misalignment": Misalignment(max_translation=-1.0)}, {"camera_jitter": -0.1}, {"camera_jitter": 1.5},
])
def test_invalid_arguments(kwargs):
    with pytest.raises(InputValidationError):
        make_scene(**{"size": (96, 128), "scale": 4, **kwargs})


# ------------------------------------------------------------------------------------------------ camera jitter


def test_camera_jitter_changes_only_the_photo_s_camera():
    base = make_scene(seed=5, size=(64, 64), split="train", camera="Nikon D5100")
    jit = make_scene(seed=5, size=(64, 64), split="train", camera="Nikon D5100", camera_jitter=1.0)
    np.testing.assert_array_equal(base.hr_hsi, jit.hr_hsi)
    np.testing.assert_array_equal(base.lr_hsi, jit.lr_hsi)
    np.testing.assert_array_equal(base.displacement, jit.displacement)
    assert not np.allclose(base.srf, jit.srf, atol=1e-3)
    assert np.abs(base.ref_rgb.astype(int) - jit.ref_rgb).mean() > 1.0  # the photo's colours differ
    again = make_scene(seed=5, size=(64, 64), split="train", camera="Nikon D5100", camera_jitter=1.0)
    np.testing.assert_array_equal(jit.ref_rgb, again.ref_rgb)  # deterministic
    np.testing.assert_allclose(jit.srf.sum(axis=1), 1.0, rtol=1e-6)


def test_jitter_response_bounds():
    sens = spectral_library(WL, "train").cameras["Canon EOS 5D Mark II"]
    np.testing.assert_allclose(jitter_response(sens, WL, np.random.default_rng(0), 0.0), sens / sens.max())
    overlaps = []
    for seed in range(20):
        out = jitter_response(sens, WL, np.random.default_rng(seed), 1.0)
        assert out.shape == sens.shape and out.min() >= 0 and out.max() == pytest.approx(1.0)
        n = out / np.linalg.norm(out, axis=1, keepdims=True)
        overlaps.append((n @ n.T)[0, 1])
    n = sens / np.linalg.norm(sens, axis=1, keepdims=True)
    assert max(overlaps) > (n @ n.T)[0, 1] + 0.1  # crosstalk: curves overlap more than the measured camera's


@pytest.mark.parametrize(("h", "w", "sigma"), [(64, 64, 6.4), (33, 47, 5.3), (40, 24, 13.0), (16, 96, 30.0)])
def test_fft_smooth_filter_is_scipy_s_wrapped_gaussian(h, w, sigma):
    # sigma 13 / 30 on a 24 / 16 px axis: the truncated kernel wraps around the period more than once
    a = np.random.default_rng(h * w).standard_normal((h, w))
    ref = ndimage.gaussian_filter(a, sigma, mode="wrap")
    out = gaussian_filter_wrap(a, sigma)
    assert out.shape == a.shape
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-12
    # not the identity or a plain mean: the field keeps structure at this sigma
    assert np.linalg.norm(out - a) > 0.1 * np.linalg.norm(a) and out.std() > 1e-6
