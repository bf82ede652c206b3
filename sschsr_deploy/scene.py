"""One scene's preprocessing: the whole-image part once, then the five model inputs of any window.

This is the one implementation of the deployment preprocessing (spec sections 2.4, 2.5). :class:`PreparedScene` does
the global part — the LR cube's min / max (normalisation) and finiteness, the reference's size check, the pseudo-RGB
bands upsampled and histogram-matched to a degraded copy of the reference — and hands out windows; the C-band bicubic
upsampling is done per window from an LR crop. :func:`prepare_inputs` is its one-window case (the whole image), so
the tiled runtime and whole-image callers (training samples, tests) go through the same code and the same checks.

One rule for a reference that is slightly off size: a photo within :data:`REF_SIZE_TOLERANCE` (2 %) of LR size x
scale is resized to fit with a warning (sensor crops and odd sizes are common); anything further apart is refused.
The building blocks (normalisation, degradation, histogram matching, validators) live in :mod:`.preprocess`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sschsr_deploy import preprocess
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, as_cube

__all__ = ["REF_SIZE_TOLERANCE", "PreparedScene", "match_reference_size", "prepare_inputs"]

log = logging.getLogger(__name__)

#: Largest relative size difference between the RGB reference and LR size x scale that is fixed by resizing the
#: reference (with a warning); larger differences are refused.
REF_SIZE_TOLERANCE = 0.02
#: LR pixels read beyond a window on each side for the per-window bicubic upsampling (the cubic kernel needs 2).
LR_BORDER = 4
#: LR rows per chunk in the streaming min / max pass.
STATS_CHUNK_ROWS = 256


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
    """The whole-image preprocessing of one scene, done once; :meth:`window` returns the five inputs of any window.

    Windows are given in padded coordinates: rows / columns beyond the image are reflected back into it (the
    pipeline's padding to a multiple of 8 and to at least 128 px).
    """

    def __init__(
        self,
        lr: HSICube,
        ref_rgb: np.ndarray,
        scale: int,
        rgb_bands: Sequence[int] = preprocess.DEFAULT_BANDS,
        normalize: bool = True,
    ) -> None:
        self.scale = preprocess.check_scale(scale)
        self.lr = lr
        h, w, c = lr.shape
        self.lr_height, self.lr_width, self.bands = h, w, c
        self.height, self.width = h * self.scale, w * self.scale
        self.rgb_bands = list(preprocess.check_rgb_bands(rgb_bands, c, lr.shape))
        self.normalize = normalize
        ref = match_reference_size(_check_ref(ref_rgb), self.height, self.width)
        self.lo, self.hi = self._stats()
        # whole image, three channels: the reference, pseudo-RGB upsampling, histogram matching. The order and the
        # per-channel matching keep the float64 temporaries few.
        ref_unit = preprocess.reference_to_unit(ref)
        self.ref_hr = _chw_f32(ref_unit)
        self.ref_hr_flow = _chw_f32(ref_unit * 255.0)
        rgb_lr = preprocess.degrade(ref_unit, self.scale)
        del ref_unit
        up_b = preprocess.bicubic_upsample(self._normalized(lr.read(bands=self.rgb_bands)), self.scale)
        self.hsi_rgb_sr_flow = _chw_f32(255.0 * up_b)
        src = up_b.astype(np.float32)
        del up_b
        self.hsi_rgb_sr = np.empty_like(self.ref_hr)
        for c in range(3):  # channels are matched independently, so one at a time gives the same result
            matched = preprocess.match_histograms_per_channel(src[:, :, c:c + 1], rgb_lr[:, :, c:c + 1])
            self.hsi_rgb_sr[c] = np.clip(matched[:, :, 0], 0.0, 1.0)
        del src, rgb_lr, matched

    def _stats(self) -> tuple[float, float]:
        """Global min and max of the LR cube (float64), read in row chunks; also rejects NaN / inf."""
        lo, hi, bad = math.inf, -math.inf, 0
        for r0 in range(0, self.lr_height, STATS_CHUNK_ROWS):
            block = self.lr.read(rows=slice(r0, min(self.lr_height, r0 + STATS_CHUNK_ROWS)))
            if np.issubdtype(block.dtype, np.floating):
                finite = np.isfinite(block)
                n_bad = block.size - int(np.count_nonzero(finite))
                if n_bad:
                    bad += n_bad
                    continue
            lo = min(lo, float(block.min()))
            hi = max(hi, float(block.max()))
        if bad:
            raise InputValidationError(
                f"LR cube contains {bad} non-finite value(s) (NaN or inf); all values must be finite (fill or mask "
                "dead pixels first)"
            )
        if self.normalize and not hi > lo:
            raise InputValidationError(
                f"LR cube is constant (min == max == {lo!r}): min-max normalisation is impossible"
            )
        return lo, hi

    def _normalized(self, block: np.ndarray) -> np.ndarray:
        x = block.astype(np.float64)
        if self.normalize:
            return (x - self.lo) / (self.hi - self.lo)  # the formula of preprocess.minmax_normalize
        return x

    def _hsi_window(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Upsampled, clipped C-band cube at HR rows x cols (C x h x w float32) from an LR crop."""
        s = self.scale
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        c_lo, c_hi = int(cols.min()), int(cols.max()) + 1
        lr_r0, lr_r1 = max(0, r_lo // s - LR_BORDER), min(self.lr_height, -(-r_hi // s) + LR_BORDER)
        lr_c0, lr_c1 = max(0, c_lo // s - LR_BORDER), min(self.lr_width, -(-c_hi // s) + LR_BORDER)
        block = self._normalized(self.lr.read(rows=slice(lr_r0, lr_r1), cols=slice(lr_c0, lr_c1)))
        up = preprocess.bicubic_upsample(block, s)
        up = up[np.ix_(rows - lr_r0 * s, cols - lr_c0 * s)]
        return _chw_f32(np.clip(up, 0.0, 1.0))

    def window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, ...]:
        """The five model inputs (float32, C x h x w) for padded rows ``y0 .. y1`` and columns ``x0 .. x1``."""
        rows = _reflect(np.arange(y0, y1), self.height)
        cols = _reflect(np.arange(x0, x1), self.width)
        inside = y1 <= self.height and x1 <= self.width and y0 >= 0 and x0 >= 0

        def take(a: np.ndarray) -> np.ndarray:
            return a[:, y0:y1, x0:x1] if inside else a[:, rows][:, :, cols]

        return (
            self._hsi_window(rows, cols),
            take(self.hsi_rgb_sr),
            take(self.ref_hr),
            take(self.hsi_rgb_sr_flow),
            take(self.ref_hr_flow),
        )

    def denormalize(self, block: np.ndarray) -> np.ndarray:
        """Map network output (normalised scale) back to the LR cube's value range, in place when float32."""
        if not self.normalize:
            return block
        block *= np.float32(self.hi - self.lo)
        block += np.float32(self.lo)
        return block


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
