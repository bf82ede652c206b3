"""Seeded, physically plausible synthetic scenes: an HR cube, its LR observation and an unaligned HR RGB photo.

Used by the demo, the tests, the training of the shipped ``tiny`` weights and the quality table. A scene is built as
a camera would see it:

1. **Reflectance**: per-pixel mixtures of measured surface spectra (:mod:`.spectra`: ColorChecker and rawtoaces
   patches) painted onto a spatial layout with soft regions, hard-edged shapes (edges), a striped texture, a fine
   checkerboard near the Nyquist limit and small mixture perturbations (fine detail).
2. **Illumination**: a measured illuminant (daylight, tungsten or fluorescent), blended smoothly with a second one
   across the image, times a smooth shading field (gradients, light fall-off).
3. **HR cube** = illumination x reflectance, scaled to [0, 1] (``hr_hsi``, the ground truth).
4. **LR cube** = the official degradation (:func:`sschsr_deploy.preprocess.blur` + ``decimate``, fused in
   :func:`~sschsr_deploy.preprocess.blur_decimate`) plus Gaussian sensor noise (``hsi_noise``).
5. **RGB photo** through a measured camera's sensitivities (Nikon D5100 / Canon 5D Mark II / Sigma SD Merrill), white
   balanced for the illuminant, seen from a slightly different viewpoint: the image is resampled along a displacement
   field = a global homography (translation, rotation, zoom, perspective) + a smooth non-rigid field + local
   parallax-like shifts of objects at other depths; then its own optical blur, shot/read noise, exposure, sRGB-like
   gamma and 8-bit quantisation.

``split`` selects training or held-out spectra, illuminants and cameras (see :mod:`.spectra`). Everything is
deterministic for a given seed (numpy ``default_rng``); a 256 x 256 scene takes a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.preprocess import blur_decimate

from .spectra import Split, spectral_library

__all__ = [
    "Misalignment", "SyntheticScene", "ground_truth_flow", "jitter_response", "make_scene", "render_rgb",
    "spectral_response", "wavelengths",
]


@dataclass(frozen=True)
class Misalignment:
    """Bounds of the RGB photo's displacement relative to the cube, in HR pixels (each drawn uniformly within).

    ``max_translation`` per axis; ``max_rotation_deg`` and ``max_zoom`` (relative) about the image centre;
    ``max_perspective`` = largest relative change of the projective denominator at the image corners;
    ``max_nonrigid`` = peak magnitude of the smooth field; ``max_parallax`` = peak magnitude of the object shifts.
    """

    max_translation: float = 4.0
    max_rotation_deg: float = 0.5
    max_zoom: float = 0.01
    max_perspective: float = 0.002
    max_nonrigid: float = 2.0
    max_parallax: float = 3.0

    @classmethod
    def none(cls) -> Misalignment:
        """An aligned photo (all bounds zero)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def large(cls) -> Misalignment:
        """Tens of pixels: a hand-held second camera a few centimetres away."""
        return cls(max_translation=20.0, max_rotation_deg=2.0, max_zoom=0.03, max_perspective=0.005,
                   max_nonrigid=4.0, max_parallax=8.0)


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A generated scene. Arrays are H x W x C (channels last).

    Attributes:
        hr_hsi: ground-truth HR cube, float32 in [0, 1], ``size`` x ``bands``.
        lr_hsi: LR observation, float32, (H / scale) x (W / scale) x bands.
        ref_rgb: HR RGB photo, uint8, H x W x 3, rendered from ``hr_hsi`` and displaced by ``displacement``.
        spectra: the material reflectance spectra used, float32, materials x bands.
        abundances: material weights, float32, H x W x materials (sum to one per pixel).
        srf: the camera's 3 x bands spectral response (rows R, G, B, each summing to one) for linear RGB renders.
        displacement: H x W x 2 (dy, dx) pixels: the RGB at p shows the scene at p + displacement(p).
        ref_rgb_aligned: the photo as it would look from the cube's viewpoint (same camera, blur, exposure and gamma; no
            displacement, noise or quantisation), float32 in [0, 1]: the target of the warp-refine net in training.
        components: peak |displacement| (pixels) of each part: ``homography``, ``nonrigid``, ``parallax``.
        wavelengths: band centres in nm.
        scale: HR / LR factor.
        seed: the seed that produced the scene.
        camera, illuminants, material_names: what was drawn from the spectral library.
        split: the library split the spectra came from.
    """

    hr_hsi: np.ndarray
    lr_hsi: np.ndarray
    ref_rgb: np.ndarray
    spectra: np.ndarray
    abundances: np.ndarray
    srf: np.ndarray
    displacement: np.ndarray
    ref_rgb_aligned: np.ndarray
    wavelengths: np.ndarray
    scale: int
    seed: int
    components: dict[str, float] = field(default_factory=dict)
    camera: str = ""
    illuminants: tuple[str, ...] = ()
    material_names: tuple[str, ...] = ()
    split: str = "all"

    def describe(self) -> dict:
        """JSON-able summary (for sidecars and cards)."""
        return {"seed": self.seed, "size": list(self.hr_hsi.shape[:2]), "bands": int(self.hr_hsi.shape[2]),
                "scale": self.scale, "split": self.split, "camera": self.camera, "illuminants": list(self.illuminants),
                "materials": list(self.material_names), "misalignment_px": dict(self.components)}


def wavelengths(bands: int = 31, start: float = 400.0, stop: float = 700.0) -> np.ndarray:
    """Band centres in nm, evenly spaced from ``start`` to ``stop`` (31 bands = 10 nm steps)."""
    return np.linspace(start, stop, bands)


def spectral_response(wl: np.ndarray, camera: str = "Nikon D5100") -> np.ndarray:
    """A measured camera's 3 x bands response at ``wl`` (rows R, G, B), each row normalised to sum to one."""
    cams = spectral_library(wl, "all").cameras
    if camera not in cams:
        raise InputValidationError(f"unknown camera {camera!r}; available: {', '.join(cams)}")
    srf = cams[camera]
    return srf / srf.sum(axis=1, keepdims=True)


def render_rgb(cube_hwc: np.ndarray, srf: np.ndarray) -> np.ndarray:
    """Linear RGB (float, H x W x 3) of a cube through a 3 x bands response."""
    return np.einsum("hwc,rc->hwr", cube_hwc, srf)


CAMERA_JITTER_SHIFT_NM = 30.0  # largest shift of a channel's response at camera_jitter=1
CAMERA_JITTER_CROSSTALK = 0.6  # largest share of another channel's response mixed in at camera_jitter=1


def jitter_response(sens: np.ndarray, wl: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A random camera near ``sens`` (3 x bands): each channel's curve shifted by up to ``amount`` x 30 nm, then
    channels mixed with up to ``amount`` x 0.6 of the others (crosstalk). The measured training cameras are all Bayer
    sensors with well separated curves; this spans responses as different as a layered (Foveon) sensor's broad,
    overlapping ones, so that what learns from the photo does not learn one camera's colours. Scaled to a maximum of 1.
    """
    shifted = np.stack([np.interp(wl - rng.uniform(-1, 1) * amount * CAMERA_JITTER_SHIFT_NM, wl, s, left=0.0, right=0.0)
                        for s in sens])
    mix = np.eye(3) + amount * CAMERA_JITTER_CROSSTALK * rng.uniform(0.0, 1.0, (3, 3)) * (1.0 - np.eye(3))
    out = np.clip(mix @ shifted, 0.0, None)
    return out / out.max()


def ground_truth_flow(scene: SyntheticScene) -> np.ndarray:
    """The optical flow (x, y) from the cube's view to the RGB photo, H x W x 2: the photo at p + flow(p) shows what
    the cube shows at p. Exact for a pure translation; first-order (``-displacement``) for smooth fields."""
    d = scene.displacement
    return np.stack([-d[..., 1], -d[..., 0]], axis=-1)


# ---------------------------------------------------------------------------------------------------------------------
# spatial layout


def _wrapped_gaussian_kernel(sigma: float, n: int) -> np.ndarray:
    """scipy's truncated Gaussian (radius int(4 sigma + 0.5), normalised) folded onto a period of ``n`` samples."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    kernel = np.zeros(n)
    np.add.at(kernel, x % n, weights / weights.sum())
    return kernel


def gaussian_filter_wrap(a: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(a, sigma, mode="wrap")`` of a 2-D array as a circular convolution by FFT.

    The same result to rounding (~1e-15 relative), but its cost does not grow with sigma: the smooth fields of a 384²
    scene have sigmas up to 128 px, where the direct filter took 60% of the scene's generation time.
    """
    for axis in (0, 1):
        n = a.shape[axis]
        shape = [1, 1]
        shape[axis] = -1
        transfer = np.fft.rfft(_wrapped_gaussian_kernel(sigma, n)).reshape(shape)
        a = np.fft.irfft(np.fft.rfft(a, axis=axis) * transfer, n=n, axis=axis)
    return a


def _smooth_field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    f = gaussian_filter_wrap(rng.standard_normal((h, w)), sigma)
    return (f - f.mean()) / (f.std() + 1e-12)


def _shape_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, h: int, w: int) -> np.ndarray:
    if rng.random() < 0.5:
        y0, x0 = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
        return (yy >= y0) & (yy < y0 + rng.integers(h // 10, h // 3)) & (xx >= x0) & (xx < x0 + rng.integers(
            w // 10, w // 3))
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(min(h, w) / 16, min(h, w) / 6)
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def _abundances(rng: np.random.Generator, h: int, w: int, materials: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Material weights (H x W x materials, sum to one) and the masks of the hard-edged objects."""
    scale = min(h, w)
    logits = np.stack([_smooth_field(rng, h, w, scale / 10.0) for _ in range(materials)], axis=-1) * 3.0
    ab = np.exp(logits - logits.max(axis=-1, keepdims=True))
    ab /= ab.sum(axis=-1, keepdims=True)
    yy, xx = np.mgrid[0:h, 0:w]
    objects = []
    for _ in range(3 + materials // 2):  # hard-edged shapes: each pins one material
        mask = _shape_mask(rng, yy, xx, h, w)
        ab[mask] = 0.0
        ab[mask, rng.integers(materials)] = 1.0
        objects.append(mask)
    # striped texture across a horizontal band of the image: two materials alternating with a period of a few pixels
    period, angle = rng.uniform(4.0, 9.0), rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    band = (yy > h * 0.55) & (yy < h * 0.7)
    a, b = rng.choice(materials, size=2, replace=False)
    ab[band] = 0.0
    ab[band, a] = stripes[band]
    ab[band, b] = 1.0 - stripes[band]
    # a fine checkerboard patch (cells of 1-3 px: detail only the HR photo resolves)
    cell = int(rng.integers(1, 4))
    ph, pw = max(h // 6, 4), max(w // 6, 4)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    checker = ((yy[y0:y0 + ph, x0:x0 + pw] // cell + xx[y0:y0 + ph, x0:x0 + pw] // cell) % 2).astype(np.float64)
    a, b = rng.choice(materials, size=2, replace=False)
    ab[y0:y0 + ph, x0:x0 + pw] = 0.0
    ab[y0:y0 + ph, x0:x0 + pw, a] = checker
    ab[y0:y0 + ph, x0:x0 + pw, b] = 1.0 - checker
    # fine detail: small random perturbations of the mixture, renormalised
    ab = ab * (1.0 + 0.15 * rng.uniform(-1, 1, size=ab.shape))
    ab = np.clip(ab, 0.0, None)
    ab /= ab.sum(axis=-1, keepdims=True) + 1e-12
    return ab, objects


# ---------------------------------------------------------------------------------------------------------------------
# viewpoint


def _homography_displacement(rng: np.random.Generator, h: int, w: int, m: Misalignment) -> np.ndarray:
    """(dy, dx) of a random homography about the image centre: p' = H p, displacement p' - p."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    theta = np.deg2rad(rng.uniform(-1, 1) * m.max_rotation_deg)
    zoom = 1.0 + rng.uniform(-1, 1) * m.max_zoom
    ty, tx = rng.uniform(-1, 1, size=2) * m.max_translation
    # perspective terms scaled so that |g·(p - c)| <= max_perspective at the corners
    gy, gx = rng.uniform(-1, 1, size=2) * m.max_perspective / np.array([max(cy, 1.0), max(cx, 1.0)]) / 2.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = yy - cy, xx - cx
    c, s = np.cos(theta) * zoom, np.sin(theta) * zoom
    denom = 1.0 + gy * y + gx * x
    ny = (s * x + c * y) / denom + ty
    nx = (c * x - s * y) / denom + tx
    return np.stack([ny - y, nx - x], axis=-1)


def _parallax_displacement(rng: np.random.Generator, h: int, w: int, objects: list[np.ndarray],
                           peak: float) -> np.ndarray:
    """Objects at other depths shift along the baseline by different amounts; a smooth depth ramp for the rest."""
    if peak <= 0:
        return np.zeros((h, w, 2))
    depth = 0.3 * (np.tanh(_smooth_field(rng, h, w, min(h, w) / 3.0)) + 1.0) / 2.0
    for mask in objects:
        if rng.random() < 0.6:
            depth = np.where(mask, rng.uniform(0.3, 1.0), depth)
    depth = ndimage.gaussian_filter(depth, 1.0)  # soft occlusion boundaries keep the resampling well behaved
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    disp = depth[..., None] * direction
    return disp * (peak * rng.uniform(0.5, 1.0) / (np.abs(depth).max() + 1e-12))


def _displace(img: np.ndarray, disp: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + disp[..., 0], xx + disp[..., 1]]
    return np.stack(
        [ndimage.map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(img.shape[2])],
        axis=-1,
    )


def _peak(d: np.ndarray) -> float:
    return float(np.sqrt((d ** 2).sum(-1)).max())


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _check_args(h: int, w: int, scale: object, bands: int, materials: int, m: Misalignment) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise InputValidationError(f"scale must be a positive integer; got {scale!r}")
    if h < 8 or w < 8 or h % scale or w % scale:
        raise InputValidationError(f"size {h}x{w} must be at least 8x8 and a multiple of the scale {scale}")
    if bands < 3 or materials < 2:
        raise InputValidationError(f"need at least 3 bands and 2 materials; got {bands} and {materials}")
    if any(v < 0 for v in asdict(m).values()):
        raise InputValidationError(f"misalignment bounds must be non-negative; got {m}")


def make_scene(
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    bands: int = 31,
    scale: int = 4,
    materials: int = 6,
    *,
    split: Split = "all",
    camera: str | None = None,
    misalignment: Misalignment | None = None,
    hsi_noise: float | None = None,
    rgb_noise: bool = True,
    rgb_blur: float | None = None,
    camera_jitter: float = 0.0,
) -> SyntheticScene:
    """Generate a scene of HR ``size`` (H, W), both multiples of ``scale``.

    Args:
        seed: random seed; the same arguments and seed give the same scene.
        size: HR height and width.
        bands: number of spectral bands over 400-700 nm.
        scale: HR / LR factor (the LR cube is H/scale x W/scale).
        materials: number of measured reflectances mixed into the scene (at most the split's library size).
        split: ``"train"``, ``"test"`` (held-out spectra, illuminants and camera) or ``"all"``.
        camera: a camera name of the split (random when omitted).
        misalignment: displacement bounds of the RGB photo (default :class:`Misalignment`).
        hsi_noise: standard deviation of the LR cube's Gaussian noise (random in [0, 0.003] when omitted; 0 gives
            exactly the official degradation).
        rgb_noise: add shot and read noise to the photo.
        rgb_blur: Gaussian sigma (pixels) of the photo's optics (random in [0.3, 0.8] when omitted).
        camera_jitter: in [0, 1]; > 0 renders the photo through a random camera near the drawn one
            (:func:`jitter_response`, drawn from its own stream: the scene is otherwise the same as without it).
    """
    h, w = (int(s) for s in size)
    m = misalignment if misalignment is not None else Misalignment()
    _check_args(h, w, scale, bands, materials, m)
    if not 0.0 <= camera_jitter <= 1.0:
        raise InputValidationError(f"camera_jitter must be in [0, 1], got {camera_jitter}")
    rng = np.random.default_rng(seed)
    wl = wavelengths(bands)
    lib = spectral_library(wl, split)
    if materials > len(lib.reflectances):
        raise InputValidationError(f"materials={materials} exceeds the {len(lib.reflectances)} spectra of {split!r}")
    cams = list(lib.cameras)
    if camera is None:
        camera = cams[int(rng.integers(len(cams)))]
    elif camera not in lib.cameras:
        raise InputValidationError(f"camera {camera!r} is not in the {split!r} split ({', '.join(cams)})")

    pick = rng.choice(len(lib.reflectances), size=materials, replace=False)
    spectra = lib.reflectances[pick]
    ab, objects = _abundances(rng, h, w, materials)
    names = list(lib.illuminants)
    i1, i2 = rng.choice(len(names), size=2, replace=len(names) < 2)
    mix = 0.5 * (np.tanh(_smooth_field(rng, h, w, min(h, w) / 3.0)) + 1.0) * rng.uniform(0.0, 0.5)
    shading = 0.6 + 0.4 * (np.tanh(_smooth_field(rng, h, w, min(h, w) / 4.0)) + 1.0) / 2.0
    illum = (1.0 - mix)[..., None] * lib.illuminants[names[i1]] + mix[..., None] * lib.illuminants[names[i2]]
    radiance = shading[..., None] * illum * (ab @ spectra)
    hr = radiance / (radiance.max() + 1e-12) * rng.uniform(0.85, 1.0)

    # the photo: camera response, white balance for the dominant illuminant, viewpoint, optics, noise, gamma, 8 bit
    sens = lib.cameras[camera]
    if camera_jitter > 0:
        sens = jitter_response(sens, wl, np.random.default_rng((seed, 0xCA3)), camera_jitter)
    white = sens @ lib.illuminants[names[i1]]
    linear = render_rgb(hr, sens) / white
    homography = _homography_displacement(rng, h, w, m)
    nonrigid = np.stack([_smooth_field(rng, h, w, min(h, w) / 6.0) for _ in range(2)], axis=-1)
    nonrigid *= m.max_nonrigid * rng.uniform(0.5, 1.0) / (np.abs(nonrigid).max() + 1e-12)
    parallax = _parallax_displacement(rng, h, w, objects, m.max_parallax)
    disp = homography + nonrigid + parallax
    rgb = _displace(linear, disp)
    sigma = rng.uniform(0.3, 0.8) if rgb_blur is None else float(rgb_blur)
    aligned = linear
    if sigma > 0:
        rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0), mode="reflect")
        aligned = ndimage.gaussian_filter(linear, (sigma, sigma, 0), mode="reflect")
    white_level, gain = max(float(np.percentile(rgb, 99.5)), 1e-6), rng.uniform(0.9, 1.0)  # exposure
    rgb = rgb / white_level * gain
    aligned = np.clip(aligned / white_level * gain, 0.0, 1.0) ** (1 / 2.2)
    if rgb_noise:
        shot, read = rng.uniform(1e-4, 1e-3), rng.uniform(1e-3, 4e-3)
        rgb = rgb + rng.standard_normal(rgb.shape) * np.sqrt(shot * np.clip(rgb, 0, None) + read ** 2)
    ref = np.round(np.clip(rgb, 0.0, 1.0) ** (1 / 2.2) * 255.0).astype(np.uint8)

    lr = blur_decimate(hr, scale)
    noise = rng.uniform(0.0, 0.003) if hsi_noise is None else float(hsi_noise)
    if noise > 0:
        lr = np.clip(lr + rng.standard_normal(lr.shape) * noise, 0.0, 1.0)
    return SyntheticScene(
        hr_hsi=hr.astype(np.float32),
        lr_hsi=np.ascontiguousarray(lr, dtype=np.float32),
        ref_rgb=ref,
        spectra=spectra.astype(np.float32),
        abundances=ab.astype(np.float32),
        srf=sens / sens.sum(axis=1, keepdims=True),
        displacement=disp.astype(np.float32),
        ref_rgb_aligned=aligned.astype(np.float32),
        wavelengths=wl,
        scale=int(scale),
        seed=int(seed),
        components={"homography": _peak(homography), "nonrigid": _peak(nonrigid), "parallax": _peak(parallax)},
        camera=camera,
        illuminants=(names[i1], names[i2]),
        material_names=tuple(lib.reflectance_names[i] for i in pick),
        split=split,
    )
