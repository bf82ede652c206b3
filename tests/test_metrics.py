"""Metrics against hand-computed values and scikit-image's SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sschsr_deploy import metrics
from sschsr_deploy.errors import InputValidationError


def test_psnr_of_known_mse():
    target = np.full((8, 9, 4), 0.5)
    pred = target + 0.1  # MSE 0.01 in every band -> 20 dB at data range 1
    assert metrics.psnr(pred, target) == pytest.approx(20.0)
    assert metrics.psnr(pred, target, reduction="global") == pytest.approx(20.0)
    assert metrics.psnr(pred * 2, target * 2, data_range=2.0) == pytest.approx(20.0)
    assert metrics.psnr(target, target) == math.inf


def test_psnr_is_the_mean_of_band_psnrs():
    target = np.zeros((4, 4, 2))
    pred = target.copy()
    pred[..., 0] += 0.1  # 20 dB
    pred[..., 1] += 0.01  # 40 dB
    assert metrics.psnr(pred, target) == pytest.approx(30.0)
    mse = (0.01 + 0.0001) / 2
    assert metrics.psnr(pred, target, reduction="global") == pytest.approx(10 * math.log10(1 / mse))


def test_sam_of_known_angles():
    target = np.zeros((1, 3, 2))
    pred = np.zeros((1, 3, 2))
    target[0, :, 0] = 1.0
    pred[0, 0] = (1.0, 0.0)  # 0
    pred[0, 1] = (1.0, 1.0)  # pi / 4
    pred[0, 2] = (0.0, 2.0)  # pi / 2
    assert metrics.sam(pred, target) == pytest.approx((0 + math.pi / 4 + math.pi / 2) / 3)
    assert metrics.sam(target * 3.7, target) == pytest.approx(0.0, abs=1e-7)  # scale-invariant


def test_sam_skips_zero_spectra():
    target = np.ones((2, 1, 3))
    pred = np.ones((2, 1, 3))
    pred[1] = 0.0
    assert metrics.sam(pred, target) == pytest.approx(0.0, abs=1e-7)


def test_ssim_identical_is_one_and_matches_skimage():
    rng = np.random.default_rng(0)
    target = rng.random((48, 40, 3))
    pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
    assert metrics.ssim(target, target) == pytest.approx(1.0)
    ref = np.mean([
        structural_similarity(pred[..., b], target[..., b], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0)
        for b in range(3)
    ])
    assert metrics.ssim(pred, target) == pytest.approx(ref, abs=1e-10)


def test_ergas_hand_computed():
    target = np.stack([np.full((4, 4), 0.5), np.full((4, 4), 0.25)], axis=-1)
    pred = target + np.array([0.05, 0.05])  # RMSE 0.05 per band; relative 0.1 and 0.2
    expected = 100 / 4 * math.sqrt((0.1**2 + 0.2**2) / 2)
    assert metrics.ergas(pred, target, scale=4) == pytest.approx(expected)
    assert metrics.ergas(target, target, scale=4) == 0.0


def test_inputs_torch_and_errors():
    a = torch.rand(16, 16, 3)
    res = metrics.all_metrics(a, a, scale=4)
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1.0) and res["ergas"] == 0.0
    with pytest.raises(InputValidationError, match="same shape"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 2)))
    with pytest.raises(InputValidationError, match="at least 11"):
        metrics.ssim(np.zeros((8, 8, 1)), np.zeros((8, 8, 1)))
    with pytest.raises(InputValidationError, match="positive scale"):
        metrics.ergas(np.ones((4, 4, 1)), np.ones((4, 4, 1)), scale=0)
