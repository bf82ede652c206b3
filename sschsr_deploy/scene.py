"""One scene's preprocessing: the global part once, streamed, then the five model inputs of any window.

This is the one implementation of the deployment preprocessing (spec sections 2.4, 2.5). :class:`PreparedScene` does
the global part in row bands — the LR cube's min / max (normalisation), finiteness and float32 range, the reference's
size check, the distributions of the upsampled pseudo-RGB bands and of a degraded copy of the reference (the
histogram-matching maps) — and computes any window's inputs on demand from an LR crop and a reference crop, so memory
does not grow with the scene. :func:`prepare_inputs` is its one-window case (the whole image), so the tiled runtime
and whole-image callers (training samples, tests) go through the same code and the same checks.

One rule for a reference that is slightly off size: a photo within :data:`REF_SIZE_TOLERANCE` (2 %) of LR size x
scale is resized to fit with a warning (sensor crops and odd sizes are common); anything further apart is refused.
The building blocks (normalisation, degradation, histogram matching, validators) live in :mod:`.preprocess`.

No-data pixels (a fill value such as -9999, or NaN) are masked out of the statistics and the matching, filled for the
network and written back as nodata by the pipeline (:class:`PreparedScene`, :func:`fill_nodata`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sschsr_deploy import preprocess
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, as_cube, nodata_mask

__all__ = [
    "REF_SIZE_TOLERANCE", "PreparedScene", "check_nodata", "fill_nodata", "match_reference_size", "prepare_inputs",
]

log = logging.getLogger(__name__)

#: Largest relative size difference between the RGB reference and LR size x scale that is fixed by resizing the
#: reference (with a warning); larger differences are refused.
REF_SIZE_TOLERANCE = 0.02
#: LR pixels read beyond a window on each side for the per-window bicubic upsampling (the cubic kernel needs 2).
LR_BORDER = 4
#: Bytes of LR cube per chunk in the streaming min / max pass.
STATS_CHUNK_BYTES = 16 * 2**20
#: HR pixels per row band in the streaming passes over the pseudo-RGB bands and the reference (their float64
#: temporaries: ~100 bytes per pixel of a band); a scene of at most this size — every scene whose matching is exact
#: by size (:data:`~sschsr_deploy.preprocess.SKETCH_CAPACITY`) — is one band, the whole image.
BAND_PIXELS = 2**18
#: Largest |value| and max - min of an LR cube: float32's largest finite value / 4 (headroom for the network's
#: overshoot when its output is scaled back by max - min).
FLOAT32_LIMIT = float(np.finfo(np.float32).max) / 4


def match_reference_size(ref: np.ndarray, height: int, width: int, tolerance: float = REF_SIZE_TOLERANCE) -> np.ndarray:
    """Return ``ref`` (H' x W' x 3) resized to ``height`` x ``width`` when within ``tolerance``, else raise.

    Photos are often a few pixels off the LR size x scale (sensor crops, odd sizes); within the tolerance the reference
    is resized (OpenCV area interpolation when shrinking, bicubic when enlarging; dtype kept) and a warning is logged.
    """
    rh, rw = ref.shape[:2]
    if (rh, rw) == (height, width):
        return ref
    rel = max(abs(rh - height) / height, abs(rw - width) / width)
    if rel > tolerance:
        raise InputValidationError(
            f"the RGB reference is {rh}x{rw} but the LR cube x scale is {height}x{width} ({rel:.1%} apart, more than "
            f"the {tolerance:.0%} tolerance): check --scale, or crop the reference to the cube's field of view"
        )
    import cv2

    interp = cv2.INTER_AREA if rh * rw > height * width else cv2.INTER_CUBIC
    src = ref if ref.dtype in (np.uint8, np.uint16, np.float32) else ref.astype(np.float32)
    out = cv2.resize(np.ascontiguousarray(src), (width, height), interpolation=interp)
    if np.issubdtype(out.dtype, np.floating):
        out = np.clip(out, 0.0, 1.0)
    log.warning(
        "RGB reference is %dx%d, expected %dx%d (LR size x scale, %.2f%% apart): resized to fit", rh, rw, height, width,
        100 * rel,
    )
    return out.reshape(height, width, 3)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into 0 .. n-1 without repeating the edge (numpy ``reflect`` padding), any distance."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


class PreparedScene:
    """The global preprocessing of one scene, streamed; :meth:`window` returns the five inputs of any window.

    Nothing of HR size is kept. Construction makes two streaming passes: the LR cube's min / max (over LR row
    chunks), then, in row bands of about :data:`BAND_PIXELS` HR pixels, the degraded reference (blurred and decimated
    from the reference rows the band needs, bicubic-upsampled with an LR border) and the upsampled pseudo-RGB bands,
    whose per-channel distributions go into :class:`~sschsr_deploy.preprocess.ValueSketch` es. They give the
    histogram-matching maps (:func:`~sschsr_deploy.preprocess.histogram_matching_map`); a window then upsamples an
    LR crop (all bands and the pseudo-RGB bands) and maps its pseudo-RGB values, and takes its reference crop.

    Exactness: a scene of at most :data:`BAND_PIXELS` HR pixels is one band (the whole image: the same calls as
    the whole-image formula), and with at most :data:`~sschsr_deploy.preprocess.SKETCH_CAPACITY` distinct values per
    channel (every scene up to 512² HR) the matching is scikit-image's, bit for bit. Larger scenes use merged
    sketches: measured against the exact matching on 1024² and 2048² synthetic scenes, ``hsi_rgb_sr`` moves by at
    most 2e-5 (rel. L2 ~1e-6) and the ``tiny-x4`` output by ~1e-6; next to a flat no-data region, where the template's
    quantile function jumps, by up to 1.5e-2 at a few pixels (rel. L2 2.3e-5; output max 1.1e-3, rel. L2 1.6e-5) —
    ``benchmarks/bench_memory.py --deviation``, docs/runtime.md "Memory and streaming". Per-window upsampling equals
    the whole-image one bit for bit for scales 2, 4, 8 (within ~3e-6 for scales like 3).

    Memory kept: the reference as given (H x W x 3 in its own dtype: 3 bytes per HR pixel for uint8 — it is
    decoded whole by the reader) and the three matching maps (at most ~2 x capacity points of 8 bytes each).

    Windows are given in padded coordinates: rows / columns beyond the image are reflected back into it (the
    pipeline's padding to a multiple of 8 and to at least 128 px).

    No data (``nodata``: a value, or NaN): pixels holding it in any band (:meth:`lr_mask`) are left out of the min /
    max and of both histogram-matching distributions, and filled in every LR crop before upsampling
    (:func:`fill_nodata`: the nearest valid pixel); :meth:`hr_mask` gives the HR pixels they cover, which the
    pipeline writes back as nodata. A scene without masked pixels takes exactly the path without nodata.
    """

    def __init__(
        self,
        lr: HSICube,
        ref_rgb: np.ndarray,
        scale: int,
        rgb_bands: Sequence[int] = preprocess.DEFAULT_BANDS,
        normalize: bool = True,
        *,
        nodata: float | None = None,
        sketch_capacity: int = preprocess.SKETCH_CAPACITY,
    ) -> None:
        self.scale = preprocess.check_scale(scale)
        self.nodata = check_nodata(nodata)
        self.lr = lr
        h, w, c = lr.shape
        self.lr_height, self.lr_width, self.bands = h, w, c
        self.height, self.width = h * self.scale, w * self.scale
        self.rgb_bands = list(preprocess.check_rgb_bands(rgb_bands, c, lr.shape))
        self.normalize = normalize
        self.ref = match_reference_size(_check_ref(ref_rgb), self.height, self.width)
        self.lo, self.hi = self._stats()
        self.release_pages()
        source = [preprocess.ValueSketch(sketch_capacity) for _ in range(3)]
        template = [preprocess.ValueSketch(sketch_capacity) for _ in range(3)]
        for r0, r1 in self._bands():
            tmpl = self._template_rows(r0, r1)
            src = self._rgb_rows(r0, r1).astype(np.float32)
            masked = self.hr_mask(r0 * self.scale, r1 * self.scale) if self.masked_pixels else None
            valid = None if masked is None else ~masked
            for ch in range(3):  # no-data pixels stay out of both distributions
                template[ch].add(tmpl[:, :, ch] if valid is None else tmpl[:, :, ch][valid])
                source[ch].add(src[:, :, ch] if valid is None else src[:, :, ch][valid])
            del tmpl, src
            self.release_pages()
        #: per channel, the points (upsampled pseudo-RGB value, matched value) of the histogram-matching map, float32:
        #: the source values are float32 and the matched ones end as float32, so at the points nothing changes
        self.matching = [
            tuple(a.astype(np.float32) for a in preprocess.histogram_matching_map(source[ch], template[ch]))
            for ch in range(3)
        ]
        self.matching_exact = all(sk.exact for sk in source + template)

    def release_pages(self) -> None:
        """Unmap the pages of a memory-mapped LR cube that reads have touched (``madvise(MADV_DONTNEED)``).

        They are clean page cache the kernel could reclaim anyway, but while mapped they count in this process's
        resident memory, which would then grow with the cube; a later read maps them again from the page cache.
        Called after the streaming passes and by the pipeline as windows go by. A no-op for other sources.
        """
        src = self.lr.source
        mm = getattr(src, "_mmap", None) if isinstance(src, np.memmap) else None
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                mm.madvise(mmap.MADV_DONTNEED)

    # ------------------------------------------------------------------ the streaming passes
    def _stats(self) -> tuple[float, float]:
        """Global min and max of the LR cube's valid pixels (float64), read in row chunks; rejects NaN / inf and values
        whose range float32 cannot hold (the network runs in float32 and the output is scaled back by max - min).
        With a nodata value, masked pixels (:meth:`lr_mask`) are left out and counted (``masked_pixels``), and the
        valid pixels' band means are kept (the fill of a crop without any valid pixel)."""
        lo, hi, bad = math.inf, -math.inf, 0
        self.masked_pixels = 0
        sums = np.zeros(self.bands, dtype=np.float64)
        count = 0
        row_bytes = max(1, self.lr_width * self.bands * self.lr.dtype.itemsize)
        step = max(1, STATS_CHUNK_BYTES // row_bytes)
        for r0 in range(0, self.lr_height, step):
            block = self.lr.read(rows=slice(r0, min(self.lr_height, r0 + step)))
            mask = self.lr_mask(block)
            if mask is not None:
                self.masked_pixels += int(np.count_nonzero(mask))
                block = block[~mask]  # n x C: the valid pixels
                if not block.size:
                    continue
            if np.issubdtype(block.dtype, np.floating):
                finite = np.isfinite(block)
                n_bad = block.size - int(np.count_nonzero(finite))
                del finite
                if n_bad:
                    bad += n_bad
                    continue
            lo = min(lo, float(block.min()))
            hi = max(hi, float(block.max()))
            if self.nodata is not None:
                flat = block.reshape(-1, self.bands)
                sums += flat.sum(axis=0, dtype=np.float64)
                count += flat.shape[0]
            del block
            self.release_pages()  # the pass touches the whole cube: do not let its mapped pages add up
        if bad:
            hint = " (or give their marker as the nodata value: --nodata nan)" if self.nodata is None else ""
            raise InputValidationError(
                f"LR cube contains {bad} non-finite value(s) (NaN or inf); all values must be finite (fill or mask "
                f"dead pixels first{hint})"
            )
        if self.masked_pixels == self.lr_height * self.lr_width:
            raise InputValidationError(
                f"every pixel of the LR cube is nodata (value {self.nodata!r} in at least one band): nothing to "
                "super-resolve; check the nodata value"
            )
        self.band_means = sums / max(count, 1)
        if self.masked_pixels:
            log.info("%d of %d LR pixels are nodata (%r): left out of the statistics, filled for the network",
                     self.masked_pixels, self.lr_height * self.lr_width, self.nodata)
        if max(abs(lo), abs(hi), hi - lo) > FLOAT32_LIMIT:
            raise InputValidationError(
                f"LR cube values span [{lo!r}, {hi!r}]: beyond what float32 can hold (values and max - min must stay "
                f"within {FLOAT32_LIMIT:.3g}, float32's largest value / 4, headroom for the network's overshoot); the "
                "network runs in float32 and the output would be inf. Rescale the cube (e.g. to reflectance)"
            )
        if self.normalize and not hi > lo:
            raise InputValidationError(
                f"LR cube is constant (min == max == {lo!r}): min-max normalisation is impossible"
            )
        return lo, hi

    # ------------------------------------------------------------------ nodata
    def lr_mask(self, block: np.ndarray) -> np.ndarray | None:
        """The no-data pixels of an LR block (h x w x C → h x w bool; a pixel is no-data when any of its bands holds
        the nodata value, or is NaN for ``nodata=nan``: its spectrum is incomplete), ``None`` when there are none."""
        return nodata_mask(block, self.nodata)

    def hr_mask(self, y0: int, y1: int) -> np.ndarray | None:
        """The no-data pixels of HR rows ``y0 .. y1`` (n x W bool: an LR pixel's mask covers its scale x scale HR
        pixels), ``None`` when the rows have none (always, for a scene without nodata)."""
        if not self.masked_pixels:
            return None
        s = self.scale
        r0, r1 = y0 // s, -(-y1 // s)
        mask = self.lr_mask(self.lr.read(rows=slice(r0, r1)))
        if mask is None:
            return None
        return np.repeat(np.repeat(mask, s, axis=0), s, axis=1)[y0 - r0 * s:y1 - r0 * s]

    def _lr_block(self, rows: slice, cols: slice | None = None, bands: Sequence[int] | None = None) -> np.ndarray:
        """An LR crop as normalised float64, its no-data pixels filled first (:func:`fill_nodata`)."""
        if not self.masked_pixels:
            return self._normalized(self.lr.read(rows=rows, cols=cols, bands=bands))
        block = self.lr.read(rows=rows, cols=cols)
        mask = self.lr_mask(block)
        x = block.astype(np.float64)
        if mask is not None:
            x = fill_nodata(x, mask, self.band_means)
        if bands is not None:
            x = x[:, :, list(bands)]
        return self._normalized(x)

    def _bands(self) -> Iterator[tuple[int, int]]:
        """LR row bands of about :data:`BAND_PIXELS` HR pixels (the whole image when it is not larger)."""
        if self.height * self.width <= BAND_PIXELS:
            yield 0, self.lr_height
            return
        step = max(1, BAND_PIXELS // (self.scale * self.width))
        for r0 in range(0, self.lr_height, step):
            yield r0, min(self.lr_height, r0 + step)

    def _bordered(self, r0: int, r1: int) -> tuple[int, int]:
        return max(0, r0 - LR_BORDER), min(self.lr_height, r1 + LR_BORDER)

    def _template_rows(self, r0: int, r1: int) -> np.ndarray:
        """HR rows ``r0 * s .. r1 * s`` of the degraded reference (the matching template; float64, H x W x 3):
        blur + decimate from the reference rows the LR rows need, then bicubic with an LR border."""
        s = self.scale
        b0, b1 = self._bordered(r0, r1)
        lr = preprocess.blur_decimate_rows(
            lambda a, b: preprocess.reference_to_unit(self.ref[a:b]), self.height, s, b0, b1
        )
        return preprocess.bicubic_upsample(lr, s)[(r0 - b0) * s:(r1 - b0) * s]

    def _rgb_rows(self, r0: int, r1: int) -> np.ndarray:
        """HR rows ``r0 * s .. r1 * s`` of the upsampled, normalised pseudo-RGB bands (float64, unclipped)."""
        s = self.scale
        b0, b1 = self._bordered(r0, r1)
        block = self._lr_block(slice(b0, b1), bands=self.rgb_bands)
        return preprocess.bicubic_upsample(block, s)[(r0 - b0) * s:(r1 - b0) * s]

    def _normalized(self, block: np.ndarray) -> np.ndarray:
        x = block.astype(np.float64, copy=False)
        if self.normalize:
            return (x - self.lo) / (self.hi - self.lo)  # the formula of preprocess.minmax_normalize
        return x

    # ------------------------------------------------------------------ windows
    def _upsampled(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The upsampled normalised cube and its pseudo-RGB bands (float64 h x w x C and h x w x 3, unclipped) at HR
        ``rows`` x ``cols``, from an LR crop with a border; the bands are upsampled apart, as in the sketch pass."""
        s = self.scale
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        c_lo, c_hi = int(cols.min()), int(cols.max()) + 1
        lr_r0, lr_r1 = max(0, r_lo // s - LR_BORDER), min(self.lr_height, -(-r_hi // s) + LR_BORDER)
        lr_c0, lr_c1 = max(0, c_lo // s - LR_BORDER), min(self.lr_width, -(-c_hi // s) + LR_BORDER)
        block = self._lr_block(slice(lr_r0, lr_r1), slice(lr_c0, lr_c1))
        at = np.ix_(rows - lr_r0 * s, cols - lr_c0 * s)
        cube = preprocess.bicubic_upsample(block, s)[at]
        rgb = preprocess.bicubic_upsample(np.ascontiguousarray(block[:, :, self.rgb_bands]), s)[at]
        return cube, rgb

    def window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, ...]:
        """The five model inputs (float32, C x h x w) for padded rows ``y0 .. y1`` and columns ``x0 .. x1``."""
        rows = _reflect(np.arange(y0, y1), self.height)
        cols = _reflect(np.arange(x0, x1), self.width)
        inside = y1 <= self.height and x1 <= self.width and y0 >= 0 and x0 >= 0
        cube, rgb = self._upsampled(rows, cols)
        src = rgb.astype(np.float32)
        matched = np.empty((3, len(rows), len(cols)), dtype=np.float32)
        for ch, (xs, mapped) in enumerate(self.matching):
            matched[ch] = np.clip(np.interp(src[:, :, ch], xs, mapped).astype(np.float32), 0.0, 1.0)
        ref = self.ref[y0:y1, x0:x1] if inside else self.ref[rows][:, cols]
        ref_unit = preprocess.reference_to_unit(ref)
        return (
            _chw_f32(np.clip(cube, 0.0, 1.0)),
            matched,
            _chw_f32(ref_unit),
            _chw_f32(255.0 * rgb),
            _chw_f32(ref_unit * 255.0),
        )

    def denormalize(self, block: np.ndarray) -> np.ndarray:
        """Map network output (normalised scale) back to the LR cube's value range, in place when float32."""
        if not self.normalize:
            return block
        block *= np.float32(self.hi - self.lo)
        block += np.float32(self.lo)
        return block


def check_nodata(nodata: Any) -> float | None:
    """``None``, a finite number or NaN (``"nan"`` accepted): the LR cube's no-data marker."""
    if nodata is None:
        return None
    try:
        value = float(nodata)
    except (TypeError, ValueError):
        raise InputValidationError(f"nodata must be a number or 'nan'; got {nodata!r}") from None
    if math.isinf(value):
        raise InputValidationError(f"nodata must be a finite number or nan; got {nodata!r}")
    return value


def fill_nodata(block: np.ndarray, mask: np.ndarray, band_means: np.ndarray) -> np.ndarray:
    """``block`` (h x w x C float) with its masked pixels (h x w) replaced for the network: each by the nearest valid
    pixel of the block (Euclidean distance transform), or by the valid pixels' band means when the block has none.

    Why nearest-valid: the bicubic upsampling and the network's receptive field reach a few pixels into a no-data
    region, so the values there shape the valid pixels next to it. A copy of the nearest spectrum continues the
    image smoothly (a fill row between two valid rows takes its neighbours' values), where a constant (0, the band
    mean, the nodata value itself) would put an edge there. The fill is computed per crop (the window plus its LR
    border), so memory stays bounded; masked pixels themselves are written back as nodata.
    """
    if mask.all():
        out = np.empty_like(block)
        out[...] = band_means.astype(block.dtype)
        return out
    from scipy import ndimage

    iy, ix = ndimage.distance_transform_edt(mask, return_distances=False, return_indices=True)
    return block[iy, ix]


def _chw_f32(img_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img_hwc.transpose(2, 0, 1), dtype=np.float32)


def _check_ref(ref: Any) -> np.ndarray:
    """The reference as a numpy H x W x 3 array (torch C x H x W / 1 x 3 x H x W and numpy 3 x H x W accepted)."""
    is_torch = isinstance(ref, torch.Tensor)
    if is_torch:
        ref = ref.detach().cpu()
        if ref.dim() == 4 and ref.shape[0] == 1:
            ref = ref[0]
        ref = ref.numpy()
        if ref.ndim == 3 and ref.shape[0] == 3:
            ref = ref.transpose(1, 2, 0)
    if not isinstance(ref, np.ndarray):
        raise InputValidationError(f"the RGB reference must be a numpy array or torch tensor; got {type(ref).__name__}")
    if ref.ndim == 3 and ref.shape[2] != 3 and ref.shape[0] == 3:
        ref = ref.transpose(1, 2, 0)
    return np.ascontiguousarray(preprocess.check_reference_array(ref))


def prepare_inputs(
    lr_cube_hwc: np.ndarray,
    ref_rgb_hwc: np.ndarray,
    sf: int,
    bands: Sequence[int] = preprocess.DEFAULT_BANDS,
    *,
    normalize: bool = True,
) -> preprocess.ModelInputs:
    """The model inputs of a whole image: :class:`PreparedScene`'s one-window case.

    There is no synthetic degradation of the HSI: the LR cube is min-max normalised and upsampled with OpenCV bicubic
    by ``sf`` (clipped to [0, 1] -> ``hsi_sr``). Its pseudo-RGB bands, taken before clipping, are histogram-matched per
    channel to a degraded copy of the reference (blur, decimate, bicubic, like the official target) and clipped
    (``hsi_rgb_sr``). ``ref_hr`` = reference in [0, 1]. RAFT gets 0..255 images: 255 x the unclipped upsampled bands
    and 255 x ``ref_hr`` (the spec's recommendation for the flow-scale open issue).

    Args:
        lr_cube_hwc: h x w x C LR cube, any real dtype and scale (must not be constant).
        ref_rgb_hwc: (h * sf) x (w * sf) x 3 reference (within 2 %, see the module docstring): uint8 0..255, uint16
            0..65535 or float in [0, 1].
        sf: integer scale factor between the reference and the LR cube.
        bands: pseudo-RGB band indices (R, G, B).
        normalize: min-max normalise the LR cube (default). Pass False only for a cube that is already on the
            [0, 1] scale of its HR counterpart (e.g. the official pipeline's LR cube): normalising an LR cube with its
            own min and max is not the identity, because blurring shrinks the range, so it rescales the values.
    """
    lr = preprocess.check_array(lr_cube_hwc, "LR cube", (3,), "H x W x C, channels last")
    scene = PreparedScene(as_cube(lr, "hwc", name="LR cube"), ref_rgb_hwc, sf, bands, normalize)
    return preprocess.ModelInputs(*(a[None] for a in scene.window(0, scene.height, 0, scene.width)))
