"""Build the five SSC-HSR model inputs from an HSI cube and an RGB reference, exactly like the official data pipeline.

The official code (SSC-HSR, inheriting HSI-RefSR's ``FusionDataset`` and torchlight's ``SRDegrade``) prepares the inputs
with SciPy, OpenCV and scikit-image. Histogram matching is rank based and OpenCV's bicubic kernel has its own border
rules, so a "close enough" re-implementation drifts from the trained model's input distribution. This module therefore
calls the same library routines in the same order and with the same dtypes; on the golden fixtures the result is
bit-identical to the tensors the official model received.

Conventions: every array function takes and returns numpy arrays in H x W x C (channels-last) layout, like the official
dataset code. Only the final :class:`ModelInputs` is laid out as the model wants it: float32, 1 x C x H x W (NCHW,
batch 1).

:func:`official_inputs_from_hr` reproduces the official synthetic-degradation path (HR cube -> blur, decimate,
bicubic), for parity tests and for evaluating on HR data. The deployment path (a real LR cube plus an HR reference,
spec sections 2.4 and 2.5) is :mod:`sschsr_deploy.scene` (``PreparedScene``, ``prepare_inputs``), built from the
functions and validators here.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.exposure import match_histograms

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.limits import check_scale

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BANDS",
    "SKETCH_CAPACITY",
    "KERNEL_SIGMA",
    "KERNEL_SIZE",
    "ModelInputs",
    "OfficialSample",
    "bicubic_upsample",
    "blur",
    "blur_decimate",
    "blur_decimate_rows",
    "check_array",
    "check_reference_array",
    "check_rgb_bands",
    "check_scale",
    "decimate",
    "degrade",
    "gaussian_kernel",
    "histogram_matching_map",
    "match_histograms_per_channel",
    "minmax_normalize",
    "official_inputs_from_hr",
    "pseudo_rgb",
    "reference_to_unit",
    "ValueSketch",
]

#: Bands used as (R, G, B) of the pseudo-RGB image. Hard-wired to (15, 8, 3) in the official 31-band code.
DEFAULT_BANDS: tuple[int, int, int] = (15, 8, 3)
#: Side length of the official blur kernel. It does not depend on the scale factor.
KERNEL_SIZE: int = 8
#: Standard deviation (pixels) of the official blur kernel. It does not depend on the scale factor.
KERNEL_SIGMA: float = 3.0

# ---------------------------------------------------------------------------------------------------------------------
# validation helpers


def check_array(arr: object, name: str, ndims: tuple[int, ...], layout: str) -> np.ndarray:
    """Check that ``arr`` is a non-empty real numeric array with one of the allowed ``ndims``; return it as ndarray."""
    if not isinstance(arr, np.ndarray):
        raise InputValidationError(f"{name} must be a numpy array ({layout}); got {type(arr).__name__}")
    if arr.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise InputValidationError(
            f"{name} must be a {allowed} array ({layout}); got a {arr.ndim}-D array of shape {arr.shape}"
        )
    if arr.size == 0:
        raise InputValidationError(f"{name} is empty (shape {arr.shape}); expected a non-empty {layout} array")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputValidationError(f"{name} must have a real numeric dtype (integer or float); got {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or inf: they would silently poison the global min/max and the histogram matching."""
    if np.issubdtype(arr.dtype, np.floating):
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputValidationError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); all values must be finite "
                "(fill or mask dead pixels before preprocessing)"
            )


def check_rgb_bands(bands: Sequence[int], n_bands: int, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Validate the pseudo-RGB band triple against the cube's band count (channels-last) and return it as a tuple."""
    try:
        items = tuple(bands)
    except TypeError:
        raise InputValidationError(f"bands must be a sequence of 3 band indices (R, G, B); got {bands!r}") from None
    if len(items) != 3:
        raise InputValidationError(f"bands must hold exactly 3 band indices (R, G, B); got {len(items)}: {items!r}")
    out = []
    for b in items:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise InputValidationError(f"band indices must be integers; got {b!r} in {items!r}")
        if not 0 <= int(b) < n_bands:
            raise InputValidationError(
                f"band index {int(b)} is out of range for a cube with {n_bands} bands (valid: 0..{n_bands - 1}): "
                f"choose the pseudo-RGB bands (rgb_bands, --rgb-bands) for this cube, which must be channels-last "
                f"H x W x C (got shape {shape})"
            )
        out.append(int(b))
    return out[0], out[1], out[2]


def _as_float(img: np.ndarray) -> np.ndarray:
    """Keep float32/float64 as they are (the official code preserves them); promote anything else to float64.

    SciPy's convolution writes into the input dtype, so an integer cube would be truncated after blurring; OpenCV's
    resize does not accept every dtype either. Promoting is the only sensible behaviour for such inputs.
    """
    if img.dtype in (np.float32, np.float64):
        return img
    return img.astype(np.float64)


def _to_nchw_f32(img_hwc: np.ndarray) -> np.ndarray:
    """H x W x C -> contiguous float32 1 x C x H x W (the official collate + ``.float()``)."""
    return np.ascontiguousarray(img_hwc.transpose(2, 0, 1)[None], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# building blocks


def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """Return the MATLAB ``fspecial('gaussian')``-style ``size`` x ``size`` kernel (float64, sums to 1).

    Taps sit at integer offsets from the centre ``(size - 1) / 2``: for the official 8 x 8 kernel that is
    +-0.5 ... +-3.5. Values below ``eps * max`` are zeroed before normalising, as MATLAB does.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise InputValidationError(f"kernel size must be a positive integer; got {size!r}")
    if not (isinstance(sigma, numbers.Real) and np.isfinite(sigma) and sigma > 0):
        raise InputValidationError(f"kernel sigma must be a finite positive number; got {sigma!r}")
    offsets = np.arange(int(size), dtype=np.float64) - (int(size) - 1) / 2.0
    xx, yy = np.meshgrid(offsets, offsets)
    kernel = np.exp(-(xx * xx + yy * yy) / (2.0 * float(sigma) ** 2))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0.0
    return kernel / kernel.sum()


@functools.cache
def _official_kernel() -> np.ndarray:
    kernel = gaussian_kernel()
    kernel.setflags(write=False)
    return kernel


def blur(img: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
    """Blur every band of an H x W (x C) image like torchlight's ``SRDegrade``: SciPy convolution, edge replicate.

    The kernel is applied as a plain ``scipy.ndimage.convolve`` with mode ``"nearest"`` and SciPy's default origin.
    The official kernel has even size, so its centre sits half a pixel off the pixel grid; this exact placement is what
    the trained model saw. float32/float64 input keeps its dtype (other dtypes are promoted to float64).
    """
    img = _as_float(check_array(img, "image", (2, 3), "H x W or H x W x C"))
    k = _official_kernel() if kernel is None else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise InputValidationError(f"blur kernel must be 2-D; got shape {k.shape}")
    if img.ndim == 3:
        k = k[..., None]
    return ndimage.convolve(img, k, mode="nearest")


def blur_decimate(img: np.ndarray, sf: int, kernel: np.ndarray | None = None) -> np.ndarray:
    """``decimate(blur(img, kernel), sf)`` computed only at the kept pixels: ``sf``² times less work.

    The same taps at the same places (SciPy's ``convolve`` with mode ``"nearest"`` flips the kernel, and for an
    even-sized kernel shifts it by one, i.e. correlation with the flipped kernel at offsets ``-(n // 2) + 1 - n % 2``
    ... along each axis), accumulated in float64 like SciPy does, then cast to the input's float dtype; results differ
    from the two-step form only in the summation order (about 1e-16 relative, tested), so rounding to float32 can move
    a value by one ulp. It is :func:`blur_decimate_rows` over all rows.
    """
    img = _as_float(check_array(img, "image", (2, 3), "H x W or H x W x C"))
    sf = check_scale(sf)
    h = img.shape[0]
    return blur_decimate_rows(lambda r0, r1: img[r0:r1], h, sf, 0, -(-h // sf), kernel)


def blur_decimate_rows(
    read_rows: Callable[[int, int], np.ndarray],
    height: int,
    sf: int,
    lr_r0: int,
    lr_r1: int,
    kernel: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``lr_r0 .. lr_r1`` of :func:`blur_decimate` of an image of ``height`` rows, reading only the rows they need.

    ``read_rows(r0, r1)`` returns the image's rows ``r0 .. r1`` (all columns, float32 / float64). Only the kernel's
    taps around the kept rows are read (clamped at the image's own edges), so a large image can be degraded in row
    bands, with the same arithmetic in the same order as the whole-image call: identical results.
    """
    sf = check_scale(sf)
    k = _official_kernel() if kernel is None else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise InputValidationError(f"blur kernel must be 2-D; got shape {k.shape}")
    flipped = k[::-1, ::-1]

    def taps(n: int) -> np.ndarray:  # the input offset of each tap of the flipped kernel (SciPy's convolve origin)
        return np.arange(n) - n // 2 + (1 - n % 2)

    ys = np.arange(lr_r0, lr_r1) * sf
    rows = np.clip(ys[None, :] + taps(k.shape[0])[:, None], 0, height - 1)  # edge replicate = clamp
    r0 = int(rows.min())
    img = read_rows(r0, int(rows.max()) + 1)
    rows -= r0
    w = img.shape[1]
    xs = np.arange(0, w, sf)
    cols = np.clip(xs[None, :] + taps(k.shape[1])[:, None], 0, w - 1)
    out = np.zeros((len(ys), len(xs)) + img.shape[2:], dtype=np.float64)
    for a in range(k.shape[0]):
        band = img[rows[a]]
        for b in range(k.shape[1]):
            if flipped[a, b] != 0.0:
                out += flipped[a, b] * band[:, cols[b]]
    return out.astype(img.dtype, copy=False)


def decimate(img: np.ndarray, sf: int) -> np.ndarray:
    """Keep every ``sf``-th row and column, starting at index 0 (no anti-aliasing: the blur before it is the filter)."""
    img = check_array(img, "image", (2, 3), "H x W or H x W x C")
    sf = check_scale(sf)
    return img[::sf, ::sf]


@functools.cache
def _max_resize_channels() -> int:
    """Largest channel count ``cv2.resize`` accepts in one call (512 in OpenCV 4.x, 128 in OpenCV 5.0)."""
    for n in (512, 256, 128, 64, 32, 16, 8, 4):
        try:
            cv2.resize(np.zeros((2, 2, n), np.float32), (4, 4), interpolation=cv2.INTER_CUBIC)
        except cv2.error:
            continue
        return n
    return 4  # pragma: no cover - every OpenCV build supports 4 channels


def bicubic_upsample(img: np.ndarray, sf: int) -> np.ndarray:
    """Upsample an H x W (x C) image by ``sf`` with OpenCV ``INTER_CUBIC`` (a = -0.75, half-pixel centres).

    This is the interpolation the official pipeline uses; PyTorch's bicubic differs at the borders. The output size is
    exactly ``(H * sf, W * sf)`` and float32/float64 input keeps its dtype (other dtypes are promoted to float64).
    ``cv2.resize`` refuses images with too many channels (more than 512 in OpenCV 4, more than 128 in OpenCV 5), so
    wide cubes are processed in channel chunks. Cubes that fit in one call take one call, like the official code, so
    results stay bit-identical; for chunked float32 cubes OpenCV's channel-count-dependent code paths can move
    values by about 1 ulp.
    """
    img = _as_float(check_array(img, "image", (2, 3), "H x W or H x W x C"))
    sf = check_scale(sf)
    h, w = img.shape[:2]
    dsize = (w * sf, h * sf)  # OpenCV takes (width, height)
    if img.ndim == 2:
        return cv2.resize(np.ascontiguousarray(img), dsize, interpolation=cv2.INTER_CUBIC)
    n_ch = img.shape[2]
    step = _max_resize_channels()
    if n_ch <= step:
        out = cv2.resize(np.ascontiguousarray(img), dsize, interpolation=cv2.INTER_CUBIC)
        return out.reshape(h * sf, w * sf, n_ch)  # OpenCV drops a trailing single channel
    out = np.empty((h * sf, w * sf, n_ch), dtype=img.dtype)
    for start in range(0, n_ch, step):
        stop = min(start + step, n_ch)
        chunk = cv2.resize(np.ascontiguousarray(img[..., start:stop]), dsize, interpolation=cv2.INTER_CUBIC)
        out[..., start:stop] = chunk.reshape(h * sf, w * sf, stop - start)
    return out


def degrade(img: np.ndarray, sf: int) -> np.ndarray:
    """Simulate an LR observation at HR size: :func:`blur`, :func:`decimate`, then :func:`bicubic_upsample` by ``sf``.

    This is torchlight's ``SRDegrade(sf)``. The output has size (H // sf * sf, W // sf * sf) x C, i.e. the input size
    when H and W are multiples of ``sf``. It is used for the synthetic HSI input and for the reference copy that
    serves as the histogram-matching target.
    """
    sf = check_scale(sf)
    return bicubic_upsample(blur_decimate(img, sf), sf)


def minmax_normalize(cube: np.ndarray) -> np.ndarray:
    """Map a cube to [0, 1] with one global min and max over all pixels and bands, computed in float64.

    A global (not per-band) normalisation keeps the relative band intensities, i.e. the spectrum shape, that the
    network was trained on.
    """
    return _minmax(cube, "cube")


def _minmax(cube: np.ndarray, name: str) -> np.ndarray:
    cube = check_array(cube, name, (1, 2, 3, 4), "array")
    _check_finite(cube, name)
    x = cube.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise InputValidationError(
            f"{name} is constant (min == max == {lo!r}): min-max normalisation is impossible; expected a cube with "
            "at least two distinct values"
        )
    return (x - lo) / (hi - lo)


def pseudo_rgb(cube: np.ndarray, bands: Sequence[int] = DEFAULT_BANDS) -> np.ndarray:
    """Select three bands of an H x W x C cube as (R, G, B): the official "pseudo-RGB" (no spectral response function).

    The default (15, 8, 3) is the official choice for 31-band 400-700 nm cubes; cubes with other band layouts (remote
    sensing) need their own triple.
    """
    cube = check_array(cube, "cube", (3,), "H x W x C")
    b = check_rgb_bands(bands, cube.shape[2], cube.shape)
    return cube[..., list(b)]


def match_histograms_per_channel(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Histogram-match each channel of ``src`` (H x W x C) to the same channel of ``ref`` with scikit-image.

    This makes the pseudo-RGB of the HSI look like the reference camera's colours, which the correspondence matcher
    relies on. scikit-image keeps a float ``src`` dtype (float32 in the official pipeline). The matching is rank based,
    so even 1-ulp changes of the inputs can move individual output values.
    """
    src = check_array(src, "src", (3,), "H x W x C")
    ref = check_array(ref, "ref", (3,), "H x W x C")
    if src.shape[2] != ref.shape[2]:
        raise InputValidationError(
            f"src and ref must have the same number of channels; got {src.shape[2]} and {ref.shape[2]}"
        )
    return match_histograms(src, ref, channel_axis=-1)


#: Entries a :class:`ValueSketch` keeps exactly before it merges neighbouring values into intervals: a scene with
#: at most this many distinct values per channel (every scene up to 512 x 512 HR) is histogram-matched exactly.
SKETCH_CAPACITY: int = 2**18


class ValueSketch:
    """The distribution of a stream of values (e.g. one channel of an image read in row bands), in bounded memory.

    Sorted, disjoint entries ``[lo_i, hi_i]`` with counts. While the stream has at most ``capacity`` distinct values
    every entry is one value with its exact count, which is what :func:`skimage.exposure.match_histograms` computes
    (``np.unique`` with counts): matching through :func:`histogram_matching_map` is then bit-identical to it. Beyond,
    neighbouring light entries are merged into intervals (memory stays O(capacity)); a value holding at least
    ``2 / capacity`` of the stream (a flat or saturated region) stays a single exact entry unless it first appeared
    inside an interval formed earlier. Within an interval the CDF is interpolated linearly; an interval holds at most
    about ``2 pi / capacity`` of the values (less towards the tails) and spans at most ``4 / capacity`` of the value
    range, which bounds the error.
    """

    def __init__(self, capacity: int = SKETCH_CAPACITY) -> None:
        if capacity < 16:
            raise ValueError(f"capacity must be at least 16; got {capacity}")
        self.capacity = int(capacity)
        self.lo = np.empty(0, np.float64)
        self.hi = np.empty(0, np.float64)
        self.count = np.empty(0, np.int64)
        self.total = 0

    @property
    def exact(self) -> bool:
        """True while every entry is a single value (nothing merged yet)."""
        return bool(np.array_equal(self.lo, self.hi))

    def add(self, values: np.ndarray) -> None:
        """Add the values of an array (any shape, finite real)."""
        v, c = np.unique(np.asarray(values).reshape(-1), return_counts=True)
        v = v.astype(np.float64)
        c = c.astype(np.int64)
        self.total += int(c.sum())
        n = self.lo.size
        if n:
            j = np.searchsorted(self.hi, v, side="left")  # first entry with hi >= v
            inside = (j < n) & (self.lo[np.minimum(j, n - 1)] <= v)
            np.add.at(self.count, j[inside], c[inside])
            v, c = v[~inside], c[~inside]
        if v.size:  # a merge of two sorted lists: v's values fall between entries (the others were added above)
            at = np.searchsorted(self.lo, v)
            self.lo = np.insert(self.lo, at, v)
            self.hi = np.insert(self.hi, at, v)
            self.count = np.insert(self.count, at, c)
        if self.lo.size > self.capacity:
            self._compact()

    def _compact(self) -> None:
        """Merge runs of neighbouring entries that share a mass block and a value cell; heavy entries stay alone.

        Mass blocks are equal steps of ``asin(2q - 1)`` (q: the share of values below an entry; t-digest's k1 scale):
        ``capacity / 4`` of them, about ``2 pi / capacity`` of the values each in the middle of the distribution and
        ever smaller towards its tails, so the extremes stay nearly exact. Value cells cut the range into
        ``capacity / 4`` equal parts, so sparse stretches (where a quantile function is steep) are not merged across.
        """
        m = self.capacity // 4
        c = self.count
        q = (np.cumsum(c) - c) / self.total
        block = np.floor(m * (np.arcsin(2.0 * q - 1.0) / np.pi + 0.5)).astype(np.int64)
        span = self.hi[-1] - self.lo[0]
        cell = np.floor((self.lo - self.lo[0]) * (m / span)).astype(np.int64) if span > 0 else np.zeros_like(block)
        heavy = c >= 2 * self.total / self.capacity
        new = np.ones(c.size, dtype=bool)
        new[1:] = (block[1:] != block[:-1]) | (cell[1:] != cell[:-1]) | heavy[1:] | heavy[:-1]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], c.size] - 1
        self.lo, self.hi = self.lo[starts], self.hi[ends]
        self.count = np.add.reduceat(c, starts)

    def cdf_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Support points ``(value, number of values <= value)`` of the CDF, strictly increasing in both.

        A single-value entry gives one point; an interval gives its two ends (``lo`` with one more than the entries
        below it — ``lo`` is a value of the stream — and ``hi`` with all of it).
        """
        cum = np.cumsum(self.count)
        interval = self.hi > self.lo
        xs = np.stack([self.lo, self.hi], axis=1)
        ns = np.stack([cum - self.count + 1, cum], axis=1)
        keep = np.stack([interval, np.ones_like(interval)], axis=1)
        return xs[keep], ns[keep]


def histogram_matching_map(src: ValueSketch, template: ValueSketch) -> tuple[np.ndarray, np.ndarray]:
    """The histogram-matching map of one channel as points ``(source value, matched value)``, for ``np.interp``.

    scikit-image's matching sends a source value ``v`` to the template quantile function at ``F_src(v)`` (the share of
    source values <= ``v``), interpolated linearly between the template's distinct values at their cumulative shares.
    With exact sketches the points are exactly scikit-image's ``interp_a_values`` at the distinct source values, and
    ``np.interp`` returns a support point's value unchanged: the same result, bit for bit. With merged sketches the
    CDFs are piecewise linear within intervals (see :class:`ValueSketch`).
    """
    sx, sn = src.cdf_points()
    tx, tn = template.cdf_points()
    return sx, np.interp(sn / src.total, tn / template.total, tx)


def check_reference_array(ref: object) -> np.ndarray:
    """An H x W x 3 real-valued, non-empty array, or a clear error."""
    ref = check_array(ref, "reference", (3,), "H x W x 3 RGB")
    if ref.shape[2] != 3:
        raise InputValidationError(
            f"reference must have 3 channels (H x W x 3 RGB, channels last); got {ref.shape[2]} channels, "
            f"shape {ref.shape}"
        )
    return ref


def reference_to_unit(ref: np.ndarray) -> np.ndarray:
    """Return an H x W x 3 RGB reference as float64 in [0, 1].

    uint8 is divided by 255 (the official ``png / 255``), uint16 by 65535; float input must already be in [0, 1].
    Other dtypes are refused rather than guessed.
    """
    ref = check_reference_array(ref)
    if ref.dtype == np.uint8:
        return ref / 255.0
    if ref.dtype == np.uint16:
        return ref / 65535.0
    if np.issubdtype(ref.dtype, np.floating):
        _check_finite(ref, "reference")
        lo, hi = float(ref.min()), float(ref.max())
        if lo < 0.0 or hi > 1.0:
            raise InputValidationError(
                f"float reference must be in [0, 1]; got values in [{lo:g}, {hi:g}] (pass uint8 0..255 / uint16 "
                "0..65535, or scale the float image to [0, 1])"
            )
        return ref.astype(np.float64)
    raise InputValidationError(
        f"reference dtype {ref.dtype} is not supported; expected uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
    )


# ---------------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """The five SSC-HSR ``forward`` arguments, float32 numpy arrays of shape 1 x C x H x W (HR size).

    ``hsi_sr`` (C bands) and ``hsi_rgb_sr``/``ref_hr`` (3 channels) are in [0, 1]; the two ``*_flow`` images feed RAFT
    and are on the 0..255 scale.
    """

    hsi_sr: np.ndarray
    hsi_rgb_sr: np.ndarray
    ref_hr: np.ndarray
    hsi_rgb_sr_flow: np.ndarray
    ref_hr_flow: np.ndarray

    def __post_init__(self) -> None:
        size = None
        for name, arr in zip(self._fields(), self.as_tuple(), strict=True):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 4 or arr.shape[0] != 1:
                desc = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputValidationError(f"ModelInputs.{name} must be a float32 1 x C x H x W array; got {desc}")
            if name != "hsi_sr" and arr.shape[1] != 3:
                raise InputValidationError(f"ModelInputs.{name} must have 3 channels; got shape {arr.shape}")
            if size is None:
                size = arr.shape[2:]
            elif arr.shape[2:] != size:
                raise InputValidationError(
                    f"ModelInputs.{name} has spatial size {arr.shape[2:]}, but hsi_sr has {size}; all five inputs "
                    "must share the HR size"
                )

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return ("hsi_sr", "hsi_rgb_sr", "ref_hr", "hsi_rgb_sr_flow", "ref_hr_flow")

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return the arrays in ``forward`` order: hsi_sr, hsi_rgb_sr, ref_hr, hsi_rgb_sr_flow, ref_hr_flow."""
        return (self.hsi_sr, self.hsi_rgb_sr, self.ref_hr, self.hsi_rgb_sr_flow, self.ref_hr_flow)

    def to_torch(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """Return the five inputs as float32 torch tensors in ``forward`` order, on ``device`` if given.

        On the CPU the tensors share memory with these arrays (no copy).
        """
        import torch

        tensors = tuple(torch.from_numpy(a) for a in self.as_tuple())
        if device is not None:
            tensors = tuple(t.to(device) for t in tensors)
        return tensors


@dataclass(frozen=True, eq=False)
class OfficialSample:
    """Output of :func:`official_inputs_from_hr`: the model inputs plus the pipeline's ground truth and intermediates.

    Attributes:
        inputs: the five model inputs.
        hsi_hr: the min-max-normalised HR cube, C x H x W float64: the training/evaluation target.
        lr_hsi: the blurred and decimated normalised cube, C x H/sf x W/sf float64 (the fixtures' ``data.lr_hsi``).
        rgb_lr: the degraded reference before clipping, 3 x H x W float64, the histogram-matching target
            (the fixtures' ``data.rgb_lr``).
    """

    inputs: ModelInputs
    hsi_hr: np.ndarray
    lr_hsi: np.ndarray
    rgb_lr: np.ndarray


# ---------------------------------------------------------------------------------------------------------------------
# entry points


def _check_cube(cube: Any, name: str) -> np.ndarray:
    cube = check_array(cube, name, (3,), "H x W x C, channels last")
    _check_finite(cube, name)
    return cube


def official_inputs_from_hr(
    raw_hr_cube_hwc: np.ndarray,
    ref_png_uint8_hwc: np.ndarray,
    sf: int,
    bands: Sequence[int] = DEFAULT_BANDS,
) -> OfficialSample:
    """Build the model inputs from an HR cube by synthetic degradation, exactly as the official ``FusionDataset``.

    Use it for parity checks and for evaluating on HR data (the official test protocol). Steps: hsi_hr = global
    min-max of the raw cube in float64; hsi_lr = degrade(hsi_hr); the RAFT copy = bands of degrade(raw) in the raw
    cube's own float dtype (not normalised, matched or clipped); the pseudo-RGB of hsi_lr (cast to float32) is
    histogram-matched to degrade(png / 255) taken before clipping; then hsi_lr and the pseudo-RGB are clipped to
    [0, 1]; ref_hr = png / 255 and the RAFT reference = the PNG values 0..255.

    Args:
        raw_hr_cube_hwc: H x W x C cube as stored in the dataset (any scale; float32 0..255 in the fixtures).
        ref_png_uint8_hwc: H x W x 3 reference, uint8 like the official PNGs (uint16 and float in [0, 1] are
            accepted and scaled as in :func:`reference_to_unit`).
        sf: scale factor; H and W must be multiples of it.
        bands: pseudo-RGB band indices (R, G, B).
    """
    raw = _check_cube(raw_hr_cube_hwc, "HR cube")
    sf = check_scale(sf)
    ref_unit = reference_to_unit(ref_png_uint8_hwc)
    b = list(check_rgb_bands(bands, raw.shape[2], raw.shape))
    h, w = raw.shape[:2]
    if ref_unit.shape[:2] != (h, w):
        raise InputValidationError(
            f"reference size {ref_unit.shape[0]}x{ref_unit.shape[1]} does not match the HR cube size {h}x{w}; "
            "both must be H x W"
        )
    if h % sf or w % sf:
        raise InputValidationError(
            f"HR size {h}x{w} is not the LR size {h // sf}x{w // sf} x sf {sf} = {h // sf * sf}x{w // sf * sf}; "
            f"H and W must be multiples of sf"
        )

    hsi_hr = _minmax(raw, "HR cube")
    lr = blur_decimate(hsi_hr, sf)
    hsi_lr_up = bicubic_upsample(lr, sf)
    flow_up = degrade(_as_float(raw), sf)  # float32 raw -> float32 arithmetic, as the official code
    rgb_lr = degrade(ref_unit, sf)  # float64, NOT clipped: it is the matching target

    hsi_rgb_lr = match_histograms_per_channel(hsi_lr_up[..., b].astype(np.float32), rgb_lr)
    inputs = ModelInputs(
        hsi_sr=_to_nchw_f32(np.clip(hsi_lr_up, 0.0, 1.0)),
        hsi_rgb_sr=_to_nchw_f32(np.clip(hsi_rgb_lr, 0.0, 1.0)),
        ref_hr=_to_nchw_f32(ref_unit),
        hsi_rgb_sr_flow=_to_nchw_f32(flow_up[..., b]),
        ref_hr_flow=_to_nchw_f32(ref_unit * 255.0),  # == the PNG values exactly for uint8
    )
    return OfficialSample(
        inputs=inputs,
        hsi_hr=np.ascontiguousarray(hsi_hr.transpose(2, 0, 1)),
        lr_hsi=np.ascontiguousarray(lr.transpose(2, 0, 1)),
        rgb_lr=np.ascontiguousarray(rgb_lr.transpose(2, 0, 1)),
    )
