"""Synthetic scene generator: deterministic, well-formed, consistent with the preprocessing's degradation."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy.data import make_scene, render_rgb, spectral_response, wavelengths
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.preprocess import blur, decimate


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, size=(96, 128), scale=4)


def test_shapes_dtypes_and_ranges(scene):
    assert scene.hr_hsi.shape == (96, 128, 31) and scene.hr_hsi.dtype == np.float32
    assert scene.lr_hsi.shape == (24, 32, 31) and scene.lr_hsi.dtype == np.float32
    assert scene.ref_rgb.shape == (96, 128, 3) and scene.ref_rgb.dtype == np.uint8
    assert 0.0 <= scene.hr_hsi.min() and scene.hr_hsi.max() <= 1.0
    assert (scene.spectra > 0).all()
    np.testing.assert_allclose(scene.abundances.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scene.srf.sum(1), 1.0)
    assert scene.ref_rgb.max() == 255 and scene.ref_rgb.min() < 128  # exposed to full scale, with contrast


def test_deterministic_per_seed(scene):
    again = make_scene(seed=3, size=(96, 128), scale=4)
    for name in ("hr_hsi", "lr_hsi", "ref_rgb", "displacement"):
        np.testing.assert_array_equal(getattr(again, name), getattr(scene, name))
    other = make_scene(seed=4, size=(96, 128), scale=4)
    assert not np.array_equal(other.hr_hsi, scene.hr_hsi)


def test_lr_is_the_official_degradation(scene):
    expected = decimate(blur(scene.hr_hsi.astype(np.float64)), 4)
    np.testing.assert_allclose(scene.lr_hsi, expected, atol=1e-6)


def test_reference_is_displaced_render(scene):
    disp = scene.displacement
    assert 0.5 < np.abs(disp).max() <= 3 * np.sqrt(2) + 2.0 + 1e-4  # global shift ≤ 3 px per axis + non-rigid ≤ 2
    assert disp.std(axis=(0, 1)).max() > 0.05  # not a pure translation
    # the reference correlates with the (aligned) render of the HR cube, but is not identical to it
    render = render_rgb(scene.hr_hsi, scene.srf)
    corr = np.corrcoef(render[..., 1].ravel(), scene.ref_rgb[..., 1].ravel())[0, 1]
    assert corr > 0.5


def test_band_count_and_structure():
    s = make_scene(seed=0, size=(64, 64), bands=10, scale=2, materials=3)
    assert s.hr_hsi.shape == (64, 64, 10) and s.lr_hsi.shape == (32, 32, 10)
    assert spectral_response(wavelengths(10)).shape == (3, 10)
    edges = np.abs(np.diff(s.hr_hsi, axis=1)).max(axis=-1)
    assert edges.max() > 0.05  # hard edges exist
    assert (edges < 0.01).mean() > 0.2  # and smooth regions


@pytest.mark.parametrize("kwargs", [{"size": (102, 128)}, {"scale": 0}, {"bands": 2}, {"size": (4, 4)}])
def test_invalid_arguments(kwargs):
    with pytest.raises(InputValidationError):
        make_scene(**{"size": (96, 128), "scale": 4, **kwargs})
