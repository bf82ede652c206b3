"""Band mapping by wavelength: identity, nearest, Gaussian integration, coverage refusal, applied to blocks."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy.bands import default_model_wavelengths, plan_band_mapping
from sschsr_deploy.errors import InputValidationError

MODEL = default_model_wavelengths(31)


def test_default_model_wavelengths():
    assert MODEL[0] == 400.0 and MODEL[-1] == 700.0 and len(MODEL) == 31
    assert MODEL[1] == pytest.approx(410.0)


def test_identity_within_a_tenth_of_the_spacing():
    m = plan_band_mapping(np.array(MODEL) + 0.5, MODEL)
    assert m.is_identity and m.source_indices == tuple(range(31))
    block = np.random.default_rng(0).random((2, 3, 31)).astype(np.float32)
    assert np.array_equal(m.apply(block), block)


def test_nearest_for_a_similarly_sampled_cube():
    src = np.arange(395.0, 712.0, 11.0)  # 29 bands, slightly coarser and shifted
    m = plan_band_mapping(src, MODEL)
    assert m.method == "nearest"
    want = [int(np.abs(src - t).argmin()) for t in MODEL]
    assert list(m.source_indices) == want
    block = np.random.default_rng(1).random((4, 5, src.size))
    assert np.array_equal(m.apply(block), block[..., want])
    assert m.describe()["source_bands"] == want


def test_gaussian_integration_for_a_finer_cube():
    src = np.linspace(380.0, 2500.0, 224)  # about 9.5 nm: not finer enough → nearest
    assert plan_band_mapping(src, MODEL).method == "nearest"
    fine = np.arange(390.0, 711.0, 2.0)  # 2 nm: five input bands per model band
    m = plan_band_mapping(fine, MODEL)
    assert m.method == "gaussian" and m.source_indices is None
    assert np.allclose(m.weights.sum(axis=1), 1.0)
    # a spectrum linear in wavelength is reproduced exactly at the model's centres (symmetric response)
    spectrum = 0.001 * fine + 0.2
    out = m.apply(np.broadcast_to(spectrum, (2, 2, fine.size)))
    assert out.dtype == np.float32 and out.shape == (2, 2, 31)
    want = 0.001 * np.array(MODEL) + 0.2
    assert np.allclose(out[0, 0, 1:-1], want[1:-1], atol=1e-5)
    assert np.allclose(out[0, 0], want, atol=1e-4)  # the end bands' responses are cut by the input's range
    # a narrow feature at 550 nm spreads only over the model bands near it
    peak = np.zeros_like(fine)
    peak[np.abs(fine - 550.0) < 1] = 1.0
    resp = m.apply(peak[None, None, :])[0, 0]
    assert resp.argmax() == MODEL.index(550.0) and resp[np.abs(np.array(MODEL) - 550.0) > 20].max() == 0.0


def test_uncovered_range_refused():
    with pytest.raises(InputValidationError, match="cover 450–900 nm but the model needs 400–700"):
        plan_band_mapping(np.arange(450.0, 901.0, 10.0), MODEL)
    with pytest.raises(InputValidationError, match="not the model's"):
        plan_band_mapping(np.arange(400.0, 701.0, 5.0), MODEL, method="identity")


@pytest.mark.parametrize("bad, match", [([], "non-empty"), ([400.0, float("nan")], "finite"),
                                        ([400.0, 400.0], "repeat")])
def test_bad_centres(bad, match):
    with pytest.raises(InputValidationError, match=match):
        plan_band_mapping(bad, MODEL)


def test_apply_checks_the_band_count():
    m = plan_band_mapping(np.arange(395.0, 712.0, 11.0), MODEL)
    with pytest.raises(InputValidationError, match="expects 29 input bands"):
        m.apply(np.zeros((1, 1, 30)))
