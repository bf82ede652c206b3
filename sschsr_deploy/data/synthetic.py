"""Seeded synthetic scenes for the demo and the tests: an HR cube, its LR observation and an unaligned HR RGB photo.

The scene is a linear mixture: ``cube = shading * (abundances @ spectra)`` with

- spectra: a few smooth, positive material spectra over ``bands`` wavelengths (400-700 nm), each a baseline plus two
  Gaussian bumps;
- abundances: per-pixel material weights that sum to one, from smooth random fields (soft regions), hard-edged shapes
  (rectangles and discs), a striped texture and fine-grained detail near the Nyquist limit;
- shading: a smooth illumination field.

The RGB reference is rendered from the HR cube through a 3 x bands spectral response (Gaussian R, G, B curves), then
displaced by a global shift plus a smooth non-rigid field of a few pixels (bilinear resampling, reflected borders) and
quantised to 8 bits. The LR cube is the HR cube blurred with the official kernel and decimated by ``scale``
(:func:`sschsr_deploy.preprocess.blur` and :func:`~sschsr_deploy.preprocess.decimate`), i.e. ``preprocess.degrade``
without the final bicubic upsampling. Everything is deterministic for a given seed (numpy ``default_rng``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.preprocess import blur, decimate

__all__ = ["SyntheticScene", "make_scene", "render_rgb", "spectral_response", "wavelengths"]


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A generated scene. Arrays are H x W x C (channels last).

    Attributes:
        hr_hsi: ground-truth HR cube, float32 in [0, 1], ``size`` x ``bands``.
        lr_hsi: LR observation, float32, (H / scale) x (W / scale) x bands.
        ref_rgb: HR RGB reference, uint8, H x W x 3, rendered from ``hr_hsi`` and displaced by ``displacement``.
        spectra: material spectra, float32, materials x bands.
        abundances: material weights, float32, H x W x materials (sum to one per pixel).
        srf: the 3 x bands spectral response used for the RGB rendering (rows R, G, B; each row sums to one).
        displacement: H x W x 2 (dy, dx) pixels: the RGB at p shows the scene at p + displacement(p).
        wavelengths: band centres in nm.
        scale: HR / LR factor.
        seed: the seed that produced the scene.
    """

    hr_hsi: np.ndarray
    lr_hsi: np.ndarray
    ref_rgb: np.ndarray
    spectra: np.ndarray
    abundances: np.ndarray
    srf: np.ndarray
    displacement: np.ndarray
    wavelengths: np.ndarray
    scale: int
    seed: int


def wavelengths(bands: int = 31, start: float = 400.0, stop: float = 700.0) -> np.ndarray:
    """Band centres in nm, evenly spaced from ``start`` to ``stop`` (31 bands = 10 nm steps)."""
    return np.linspace(start, stop, bands)


def spectral_response(wl: np.ndarray) -> np.ndarray:
    """A 3 x bands RGB camera response: Gaussian curves at 610, 540 and 460 nm, each row normalised to sum to one."""
    centres, widths = (610.0, 540.0, 460.0), (40.0, 40.0, 35.0)
    srf = np.stack([np.exp(-0.5 * ((wl - c) / s) ** 2) for c, s in zip(centres, widths, strict=True)])
    return srf / srf.sum(axis=1, keepdims=True)


def render_rgb(cube_hwc: np.ndarray, srf: np.ndarray) -> np.ndarray:
    """Linear RGB (float, H x W x 3) of a cube through a 3 x bands response."""
    return np.einsum("hwc,rc->hwr", cube_hwc, srf)


def _spectra(rng: np.random.Generator, wl: np.ndarray, materials: int) -> np.ndarray:
    span = wl[-1] - wl[0] if len(wl) > 1 else 1.0
    out = []
    for _ in range(materials):
        base = rng.uniform(0.05, 0.25)
        s = np.full_like(wl, base)
        for _ in range(2):
            centre = rng.uniform(wl[0], wl[-1])
            width = rng.uniform(0.08, 0.3) * span
            s = s + rng.uniform(0.2, 0.7) * np.exp(-0.5 * ((wl - centre) / width) ** 2)
        out.append(s)
    spectra = np.stack(out)
    return spectra / spectra.max() * 0.95


def _smooth_field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _abundances(rng: np.random.Generator, h: int, w: int, materials: int) -> np.ndarray:
    scale = min(h, w)
    # soft regions: a softmax over smooth random fields
    logits = np.stack([_smooth_field(rng, h, w, scale / 10.0) for _ in range(materials)], axis=-1) * 3.0
    ab = np.exp(logits - logits.max(axis=-1, keepdims=True))
    ab /= ab.sum(axis=-1, keepdims=True)
    yy, xx = np.mgrid[0:h, 0:w]
    # hard-edged shapes: each pins one material
    for _ in range(3 + materials // 2):
        m = rng.integers(materials)
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
            mask = (yy >= y0) & (yy < y0 + rng.integers(h // 10, h // 3)) & (xx >= x0) & (xx < x0 + rng.integers(
                w // 10, w // 3))
        else:
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(scale / 16, scale / 6)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        ab[mask] = 0.0
        ab[mask, m] = 1.0
    # striped texture in one band of the image: alternate two materials with a period of a few pixels
    period, angle = rng.uniform(4.0, 9.0), rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    band = (yy > h * 0.55) & (yy < h * 0.7)
    a, b = rng.choice(materials, size=2, replace=False)
    ab[band] = 0.0
    ab[band, a] = stripes[band]
    ab[band, b] = 1.0 - stripes[band]
    # fine detail: small random perturbations of the mixture, renormalised
    ab = ab * (1.0 + 0.15 * rng.uniform(-1, 1, size=ab.shape))
    ab = np.clip(ab, 0.0, None)
    ab /= ab.sum(axis=-1, keepdims=True) + 1e-12
    return ab


def _displace(img: np.ndarray, disp: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + disp[..., 0], xx + disp[..., 1]]
    return np.stack(
        [ndimage.map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(img.shape[2])],
        axis=-1,
    )


def make_scene(
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    bands: int = 31,
    scale: int = 4,
    materials: int = 6,
    shift: tuple[float, float] | None = None,
    max_nonrigid: float = 2.0,
) -> SyntheticScene:
    """Generate a scene of HR ``size`` (H, W), both multiples of ``scale``.

    Args:
        seed: random seed; the same seed gives the same scene.
        size: HR height and width.
        bands: number of spectral bands (400-700 nm).
        scale: HR / LR factor (the LR cube is H/scale x W/scale).
        materials: number of material spectra.
        shift: global (dy, dx) displacement of the RGB in pixels; random in [-3, 3] when omitted.
        max_nonrigid: peak magnitude (pixels) of the smooth non-rigid displacement added to the shift.
    """
    h, w = (int(s) for s in size)
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise InputValidationError(f"scale must be a positive integer; got {scale!r}")
    if h < 8 or w < 8 or h % scale or w % scale:
        raise InputValidationError(f"size {h}x{w} must be at least 8x8 and a multiple of the scale {scale}")
    if bands < 3 or materials < 2:
        raise InputValidationError(f"need at least 3 bands and 2 materials; got {bands} and {materials}")
    rng = np.random.default_rng(seed)
    wl = wavelengths(bands)
    spectra = _spectra(rng, wl, materials)
    ab = _abundances(rng, h, w, materials)
    shading = 0.75 + 0.25 * np.tanh(_smooth_field(rng, h, w, min(h, w) / 4.0))
    hr = np.clip(shading[..., None] * (ab @ spectra), 0.0, 1.0)

    srf = spectral_response(wl)
    if shift is None:
        shift = tuple(rng.uniform(-3.0, 3.0, size=2))
    nonrigid = np.stack([_smooth_field(rng, h, w, min(h, w) / 6.0) for _ in range(2)], axis=-1)
    nonrigid *= max_nonrigid / (np.abs(nonrigid).max() + 1e-12)
    disp = nonrigid + np.asarray(shift, dtype=np.float64)
    rgb = _displace(render_rgb(hr, srf), disp)
    rgb = rgb / max(float(np.percentile(rgb, 99.5)), 1e-6)  # camera exposure: 99.5th percentile -> full scale
    ref = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)

    lr = decimate(blur(hr), scale)
    return SyntheticScene(
        hr_hsi=hr.astype(np.float32),
        lr_hsi=np.ascontiguousarray(lr, dtype=np.float32),
        ref_rgb=ref,
        spectra=spectra.astype(np.float32),
        abundances=ab.astype(np.float32),
        srf=srf,
        displacement=disp.astype(np.float32),
        wavelengths=wl,
        scale=int(scale),
        seed=int(seed),
    )
