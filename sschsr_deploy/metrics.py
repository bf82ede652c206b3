"""Image-quality metrics for hyperspectral super-resolution: PSNR, SSIM, SAM and ERGAS.

All functions take two cubes of the same shape, H x W x C (channels last, the package's numpy convention), as numpy
arrays (torch tensors are converted) and compute in float64. ``prediction`` is the estimate, ``target`` the ground
truth. Conventions follow the hyperspectral super-resolution literature:

- PSNR: mean over bands of the per-band PSNR with peak ``data_range`` (1 for [0, 1] data); ``reduction="global"``
  gives the PSNR of the whole-cube MSE instead.
- SSIM: mean over bands of the single-band SSIM of Wang et al. (2004): 11 x 11 Gaussian window, sigma 1.5 (truncated at
  3.5 sigma), K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over the interior where the window
  fits, i.e. the definition of ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``.
- SAM: mean over pixels of the angle (radians) between the predicted and the true spectrum. Pixels where either
  spectrum is all zeros are skipped (their angle is undefined).
- ERGAS: ``100 / scale * sqrt(mean_b (RMSE_b / mean_b(target))^2)``, ``scale`` = HR / LR pixel ratio (e.g. 4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from sschsr_deploy.errors import InputValidationError

__all__ = ["all_metrics", "ergas", "psnr", "sam", "ssim"]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(prediction: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 H x W x C arrays of one shape (2-D images get a band axis)."""
    arrays = []
    for name, x in (("prediction", prediction), ("target", target)):
        if hasattr(x, "detach") and hasattr(x, "cpu"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3:
            raise InputValidationError(f"{name} must be an H x W x C cube (or an H x W image); got shape {x.shape}")
        arrays.append(x)
    p, t = arrays
    if p.shape != t.shape:
        raise InputValidationError(f"prediction {p.shape} and target {t.shape} must have the same shape")
    return p, t


def psnr(prediction: Any, target: Any, data_range: float = 1.0, reduction: str = "bands") -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical inputs).

    ``reduction="bands"`` (default) averages the per-band PSNR; ``"global"`` uses the MSE over the whole cube.
    """
    p, t = _pair(prediction, target)
    if reduction == "global":
        mse = float(np.mean((p - t) ** 2))
        return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
    if reduction != "bands":
        raise InputValidationError(f"reduction must be 'bands' or 'global'; got {reduction!r}")
    mse_b = np.mean((p - t) ** 2, axis=(0, 1))
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range**2 / mse_b)
    return float(np.mean(values))


def _ssim_band(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    filt = lambda a: ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")  # noqa: E731
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x * mu_x
    syy = filt(y * y) - mu_y * mu_y
    sxy = filt(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # the window radius: 5 px, an 11 x 11 window
    return float(s[pad:-pad, pad:-pad].mean())


def ssim(prediction: Any, target: Any, data_range: float = 1.0) -> float:
    """Structural similarity, the mean over bands of the Gaussian-window SSIM (see the module docstring)."""
    p, t = _pair(prediction, target)
    if min(p.shape[:2]) < 11:
        raise InputValidationError(f"SSIM needs images of at least 11 x 11 pixels; got {p.shape[0]} x {p.shape[1]}")
    return float(np.mean([_ssim_band(p[:, :, b], t[:, :, b], data_range) for b in range(p.shape[2])]))


def sam(prediction: Any, target: Any) -> float:
    """Spectral angle mapper: the mean angle in radians between predicted and true pixel spectra."""
    p, t = _pair(prediction, target)
    dot = np.sum(p * t, axis=2)
    norms = np.linalg.norm(p, axis=2) * np.linalg.norm(t, axis=2)
    valid = norms > 0
    if not valid.any():
        raise InputValidationError("SAM is undefined: every pixel has an all-zero spectrum")
    cos = np.clip(dot[valid] / norms[valid], -1.0, 1.0)
    return float(np.mean(np.arccos(cos)))


def ergas(prediction: Any, target: Any, scale: float) -> float:
    """Relative dimensionless global error in synthesis (ERGAS); ``scale`` is the super-resolution factor."""
    if not (isinstance(scale, int | float) and scale > 0):
        raise InputValidationError(f"ERGAS needs a positive scale factor; got {scale!r}")
    p, t = _pair(prediction, target)
    rmse_b = np.sqrt(np.mean((p - t) ** 2, axis=(0, 1)))
    mean_b = np.mean(t, axis=(0, 1))
    if np.any(mean_b == 0):
        raise InputValidationError("ERGAS is undefined: a target band has mean 0")
    return float(100.0 / scale * np.sqrt(np.mean((rmse_b / mean_b) ** 2)))


def all_metrics(prediction: Any, target: Any, scale: float, data_range: float = 1.0) -> dict[str, float]:
    """``{"psnr", "ssim", "sam", "ergas"}`` of one prediction."""
    return {
        "psnr": psnr(prediction, target, data_range),
        "ssim": ssim(prediction, target, data_range),
        "sam": sam(prediction, target),
        "ergas": ergas(prediction, target, scale),
    }
