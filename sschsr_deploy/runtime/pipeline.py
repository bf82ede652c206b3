"""The tiled inference pipeline: whole-image preprocessing once, then windows → backend → blender → writer.

Data flow (one direction): :class:`PreparedScene` runs the global part of
:func:`sschsr_deploy.preprocess.prepare_inputs` once and hands out the five model inputs for any window;
:func:`~sschsr_deploy.runtime.planner.plan_tiles` cuts the image; :class:`~sschsr_deploy.runtime.streams.TileExecutor`
runs batches of windows on the backend (overlapping copies and compute on a GPU);
:class:`~sschsr_deploy.runtime.blender.StreamingBlender` blends them and emits finished rows to the output (an array, or
a file through :class:`~sschsr_deploy.io.hsi.HSIWriter`).

Array layouts: numpy cubes are H x W x C (channels last) by default and torch tensors C x H x W (or 1 x C x H x W);
``layout="hwc"|"chw"`` overrides. The RGB reference is H x W x 3 for numpy and 3 x H x W (or 1 x 3 x H x W) for torch,
uint8 (0..255), uint16 (0..65535) or float in [0, 1]. The output has the input's kind and layout, float32.

What needs the whole image, and what streams (memory for an H x W HR scene with C bands):

- streamed per window: the C-band bicubic upsampling of the LR cube (an LR crop with a 4-pixel border is upsampled
  per window: identical to the whole-image result for integer scales whose inverse is exact in binary, e.g. 2, 4, 8;
  within ~3e-6 otherwise), the LR read itself (lazy formats) and the output (written as rows finish);
- two streaming passes over the LR cube: its global min / max (normalisation) and the finiteness check;
- whole image, three channels only: the pseudo-RGB bands upsampled, the degraded reference and the rank-based
  histogram matching (each output value depends on the ranks over the whole image, so it cannot be tiled), plus the
  reference itself; kept as four float32 H x W x 3 arrays (48 bytes per HR pixel), with float64 temporaries of a few
  times that size during the matching.

Everything else — the network — runs per window, so peak memory is the tile batch plus the above.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sschsr_deploy import preprocess
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.hsi import HSICube, HSIWriter, as_cube, format_from_path, read_hsi
from sschsr_deploy.io.rgb import read_rgb
from sschsr_deploy.runtime.backends import Backend, create_backend
from sschsr_deploy.runtime.blender import StreamingBlender
from sschsr_deploy.runtime.planner import (
    DEFAULT_MARGIN,
    DEFAULT_OVERLAP,
    TileLimits,
    TilePlan,
    Window,
    available_memory,
    negotiate_plan,
    resolve_tile,
)
from sschsr_deploy.runtime.streams import HostBatch, TileExecutor

__all__ = ["REF_SIZE_TOLERANCE", "Pipeline", "PreparedScene", "match_reference_size"]

log = logging.getLogger(__name__)

#: Largest relative size difference between the RGB reference and LR size x scale that is fixed by resizing the
#: reference (with a warning); larger differences are refused.
REF_SIZE_TOLERANCE = 0.02
#: LR pixels read beyond a window on each side for the per-window bicubic upsampling (the cubic kernel needs 2).
LR_BORDER = 4
#: LR rows per chunk in the streaming min / max pass.
STATS_CHUNK_ROWS = 256


# ---------------------------------------------------------------------------------------------------------------------
# inputs


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
        self.scale = _check_scale(scale)
        self.lr = lr
        h, w, c = lr.shape
        self.lr_height, self.lr_width, self.bands = h, w, c
        self.height, self.width = h * self.scale, w * self.scale
        self.rgb_bands = _check_rgb_bands(rgb_bands, c)
        self.normalize = normalize
        ref = match_reference_size(_check_ref(ref_rgb), self.height, self.width)
        self.lo, self.hi = self._stats()
        # whole image, three channels: the reference, pseudo-RGB upsampling, histogram matching. The order and the
        # per-channel matching keep the float64 temporaries few (same operations as prepare_inputs, same results).
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


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or int(scale) < 1:
        raise InputValidationError(f"scale must be a positive integer (e.g. 4 or 8); got {scale!r}")
    return int(scale)


def _check_rgb_bands(bands: Sequence[int], n_bands: int) -> list[int]:
    items = list(bands)
    if len(items) != 3 or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) for b in items):
        raise InputValidationError(f"rgb_bands must be 3 integer band indices (R, G, B); got {bands!r}")
    if not all(0 <= int(b) < n_bands for b in items):
        raise InputValidationError(
            f"rgb_bands {tuple(items)} are out of range for a cube with {n_bands} bands (valid: 0..{n_bands - 1}); "
            "choose the pseudo-RGB bands with --rgb-bands"
        )
    return [int(b) for b in items]


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
    if ref.ndim != 3 or ref.shape[2] != 3:
        raise InputValidationError(f"the RGB reference must be H x W x 3; got shape {ref.shape}")
    return np.ascontiguousarray(ref)


# ---------------------------------------------------------------------------------------------------------------------
# the pipeline


class Pipeline:
    """Super-resolve LR cubes with an RGB reference, tile by tile.

    Args:
        model_or_engine: an ``SSCHSR`` module (``backend="torch"``), a path to an ``.onnx`` file exported by
            :func:`sschsr_deploy.engine.onnx.export_onnx` (``"onnxruntime"``) or to a TensorRT engine with its
            sidecar (``"tensorrt"``), or a ready :class:`Backend`.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"`` (see :func:`~sschsr_deploy.runtime.backends.
            create_backend`).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        tile: window side in HR px (≥ 128, multiple of 8) or ``(h, w)``, ``None`` for whole-image mode, ``"auto"``
            (whole image when the estimated forward memory fits ``memory_budget``, else the largest tile that fits),
            or ``"default"``: 256 px, or the traced tile of an exported model. An exported model with a fixed tile
            size runs only that size: ``"default"`` and ``"auto"`` select it, any other tile is refused. A
            dynamic-tile export accepts tiles within its bounds (smaller images are padded up to its minimum).
        overlap: raised-cosine blending ramp in px (multiple of 8).
        margin: zero-weight context per interior window side in px (multiple of 8).
        batch: windows per forward pass (forced to 1 with batch-statistics batch norm; capped at an export's
            maximum batch).
        quiet: no progress bar.
        compile: ``torch.compile`` the model (torch backend only).
        half: autocast float16 (``True`` / ``"fp16"``) or bfloat16 (``"bf16"``), torch backend only; for GPUs.
        rgb_bands: pseudo-RGB band triple (default: the model config's, (15, 8, 3) for 31 bands).
        normalize: min-max normalise the LR cube (see :func:`sschsr_deploy.preprocess.prepare_inputs`).
        output_scale: ``"input"`` maps the output back to the LR cube's value range (undoing the normalisation);
            ``"unit"`` returns the network's output as is.
        memory_budget: bytes for ``tile="auto"`` (default: half the available RAM on CPU, 80 % of free GPU memory).
        depth: batches in flight on a GPU.
        model_info: what to record about the model in output sidecars (from
            :func:`~sschsr_deploy.weights.load_model`); derived from the model (or the exported file's
            metadata) when omitted.
        backend_options: extra keyword arguments for the backend (``threads`` for onnxruntime, ``cuda_graph`` /
            ``expect`` for tensorrt, ``check_inputs`` for torch).
    """

    def __init__(
        self,
        model_or_engine: nn.Module | Backend | str | os.PathLike,
        backend: str = "torch",
        device: str | torch.device = "cpu",
        tile: int | tuple[int, int] | str | None = "default",
        overlap: int = DEFAULT_OVERLAP,
        margin: int = DEFAULT_MARGIN,
        batch: int = 1,
        quiet: bool = False,
        *,
        compile: bool = False,
        half: bool | str = False,
        rgb_bands: Sequence[int] | None = None,
        normalize: bool = True,
        output_scale: str = "input",
        memory_budget: int | None = None,
        depth: int = 2,
        model_info: dict[str, Any] | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        options = dict(backend_options or {})
        if not isinstance(model_or_engine, Backend):
            if str(backend).lower() == "torch":
                options.setdefault("compile", compile)
                options.setdefault("half", half)
            elif compile or half:
                raise InputValidationError(
                    f"{'compile' if compile else 'half'}=True applies to the torch backend only (backend={backend!r}; "
                    "an exported model's precision is chosen at export)"
                )
        self.backend = create_backend(backend, model_or_engine, device, **options)
        if isinstance(tile, str) and tile not in ("auto", "default"):
            try:
                tile = int(tile)
            except ValueError:
                raise InputValidationError(
                    f"tile must be an integer, 'auto', 'default' or None; got {tile!r}"
                ) from None
        self.limits = TileLimits(self.backend.tile_bounds, self.backend.preferred_tile, self.backend.name)
        self.tile = resolve_tile(tile, self.limits, overlap, margin)  # checked once, here
        self.overlap = overlap
        self.margin = margin
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputValidationError(f"batch must be a positive integer; got {batch!r}")
        self.batch = batch
        self.quiet = quiet
        config = self.backend.config
        self.config = config
        self.rgb_bands = tuple(rgb_bands) if rgb_bands is not None else (
            tuple(config.rgb_bands) if config is not None else preprocess.DEFAULT_BANDS
        )
        self.normalize = normalize
        if output_scale not in ("input", "unit"):
            raise InputValidationError(f"output_scale must be 'input' or 'unit'; got {output_scale!r}")
        self.output_scale = output_scale
        self.memory_budget = memory_budget
        self.executor = TileExecutor(self.backend, depth=depth)
        self._model_info = model_info
        self.last_plan: TilePlan | None = None
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        tile: int | tuple[int, int] | str | None = "default",
        backend: str | None = None,
        scale: int | None = None,
        bands: int | None = None,
        rgb_bands: Sequence[int] | None = None,
        batchnorm_mode: str | None = None,
        **options: Any,
    ) -> Pipeline:
        """A pipeline in one line from a shipped name (``"tiny-x4"``), a weights file (``.safetensors`` / official
        ``.pth``; torch backend, see :func:`sschsr_deploy.weights.load_model` for how ``scale`` / ``bands`` /
        ``rgb_bands`` / ``batchnorm_mode`` are checked or set) or an exported model (``.onnx`` → onnxruntime,
        ``.engine`` / ``.plan`` → tensorrt). ``options``: the other constructor arguments (``batch``, ``half``...).
        """
        from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES
        from sschsr_deploy.weights import load_model

        suffix = Path(os.fspath(source)).suffix.lower()
        if suffix in ENGINE_SUFFIXES:
            given = {k: v for k, v in dict(scale=scale, bands=bands, rgb_bands=rgb_bands,
                                           batchnorm_mode=batchnorm_mode).items() if v is not None}
            if given:
                raise InputValidationError(
                    f"{', '.join(given)} cannot be set for an exported model ({Path(source).name} records its own)"
                )
            return cls(source, backend=backend or ENGINE_SUFFIXES[suffix], device=device, tile=tile, **options)
        if backend not in (None, "torch"):
            raise InputValidationError(f"backend {backend!r} runs an exported model (.onnx / .engine); weights "
                                       f"{Path(os.fspath(source)).name} run on the torch backend")
        model, info = load_model(source, scale=scale, bands=bands, rgb_bands=rgb_bands, batchnorm_mode=batchnorm_mode)
        return cls(model, backend="torch", device=device, tile=tile, model_info=info, **options)

    # ------------------------------------------------------------------ planning
    def plan(self, height: int, width: int) -> TilePlan:
        """The tile plan for an HR image of ``height`` x ``width`` (:func:`~.planner.negotiate_plan`)."""
        budget = None
        if self.tile == "auto":
            budget = self.memory_budget
            if budget is None:
                dev = str(self.backend.device)
                budget = int(available_memory(dev) * (0.8 if dev.startswith("cuda") else 0.5))
        return negotiate_plan(height, width, self.tile, self.limits, self.overlap, self.margin, config=self.config,
                              budget=budget, batch=self._effective_batch())

    def _effective_batch(self) -> int:
        if not self.backend.batch_independent and self.batch > 1:
            return 1
        cap = self.backend.max_batch
        if cap is not None and self.batch > cap:
            return cap
        return self.batch

    # ------------------------------------------------------------------ core loop
    def _check_bands(self, cube: HSICube) -> None:
        if cube.bands != self.backend.bands:
            raise InputValidationError(
                f"the cube has {cube.bands} bands but the model expects {self.backend.bands} (wrong file or variable, "
                "or build the model with a matching band count: --bands / SSCHSR.from_preset(..., bands=N))"
            )

    def resolve_scale(self, scale: int | None) -> int:
        """The scale to run: the model's own (recorded in its weights / export) when ``scale`` is ``None``; a
        requested scale must equal it (a x4 model run on x8 data gives wrong results, not an error)."""
        model_scale = self.backend.scale
        if scale is None:
            if model_scale is None:
                raise InputValidationError(
                    f"the {self.backend.name} model does not record the scale it was trained for: pass scale "
                    "(--scale)"
                )
            return model_scale
        scale = _check_scale(scale)
        if model_scale is not None and scale != model_scale:
            info = self.model_info()
            what = info.get("weights") or info.get("model_file") or f"the {self.backend.name} model"
            raise InputValidationError(
                f"scale {scale} was requested but {what} was trained for x{model_scale}: use weights made for "
                f"x{scale} (e.g. tiny-x{scale}) or omit the scale to run x{model_scale}"
            )
        return scale

    def prepare(self, lr: HSICube, ref_rgb: Any, scale: int | None = None) -> PreparedScene:
        """Validate the inputs and run the whole-image preprocessing (``scale``: see :meth:`resolve_scale`)."""
        self._check_bands(lr)
        return PreparedScene(lr, ref_rgb, self.resolve_scale(scale), self.rgb_bands, self.normalize)

    def _host_batches(self, scene: PreparedScene, windows: list[Window], batch: int) -> Iterator[HostBatch]:
        for i in range(0, len(windows), batch):
            group = windows[i:i + batch]
            crops = [scene.window(w.y0, w.y1, w.x0, w.x1) for w in group]
            inputs = tuple(np.stack([c[k] for c in crops]) for k in range(5))
            yield HostBatch(inputs, group)

    def execute(self, scene: PreparedScene, sink: Callable[[int, np.ndarray], None]) -> TilePlan:
        """Run every window of ``scene`` and send finished output rows (C x n x W float32) to ``sink(y0, block)``."""
        plan = self.plan(scene.height, scene.width)
        self.last_plan = plan
        batch = self._effective_batch()
        if batch != self.batch:
            log.info("running %d window(s) per batch instead of %d (%s)", batch, self.batch,
                     "batch-statistics batch norm" if not self.backend.batch_independent
                     else f"the {self.backend.name} model's maximum batch")
        log.info(
            "%dx%d HR, %d window(s) of %dx%d (overlap %d, margin %d), batch %d, %s on %s",
            scene.height, scene.width, len(plan), plan.tile_h, plan.tile_w, plan.overlap, plan.margin, batch,
            self.backend.name, self.backend.device,
        )
        denorm = self.output_scale == "input"

        def emit(y0: int, block: np.ndarray) -> None:
            if denorm:
                block = scene.denormalize(block)
            sink(y0, block)

        blender = StreamingBlender(plan, self.backend.bands, emit)
        warned = False
        with tqdm(total=len(plan), unit="tile", desc="SSC-HSR", disable=self.quiet, dynamic_ncols=True) as bar:
            for group, out in self.executor.map(self._host_batches(scene, plan.windows, batch)):
                if not warned and not np.isfinite(out).all():
                    log.warning("the network produced NaN / inf values (window %d); check the weights", group[0].index)
                    warned = True
                for j, w in enumerate(group):
                    blender.add(w, out[j])
                bar.update(len(group))
        blender.finish()
        return plan

    # ------------------------------------------------------------------ in-memory API
    def run(
        self,
        lr_hsi: Any,
        ref_rgb: Any,
        scale: int | None = None,
        *,
        layout: str | None = None,
        out: Any = None,
    ) -> Any:
        """Super-resolve ``lr_hsi`` (h x w x C) with ``ref_rgb`` (h·scale x w·scale x 3) and return the HR cube.

        ``scale`` defaults to the model's (recorded in its weights or export); another one is refused.

        ``layout`` is the cube layout (default: ``"hwc"`` for numpy, ``"chw"`` for torch; see the module docstring);
        the output uses the same kind and layout. ``out`` (optional) is a preallocated array-like of the output
        shape (numpy array, ``np.memmap``, HDF5 dataset) that receives the rows as they finish; it is returned.
        """
        t0 = time.perf_counter()
        is_torch = isinstance(lr_hsi, torch.Tensor)
        torch_device = lr_hsi.device if is_torch else None
        if is_torch:
            arr = lr_hsi.detach().cpu()
            if arr.dim() == 4 and arr.shape[0] == 1:
                arr = arr[0]
            lr_hsi = arr.numpy()
            layout = layout or "chw"
        layout = (layout or "hwc").lower()
        cube = as_cube(lr_hsi, layout, self.backend.bands, "LR cube") if not isinstance(lr_hsi, HSICube) else lr_hsi
        scene = self.prepare(cube, ref_rgb, scale)
        t1 = time.perf_counter()
        c, h, w = self.backend.bands, scene.height, scene.width
        shape = (h, w, c) if layout == "hwc" else (c, h, w)
        target = np.empty(shape, dtype=np.float32) if out is None else out
        if tuple(target.shape) != shape:
            raise InputValidationError(f"out has shape {tuple(target.shape)}; expected {shape} ({layout})")

        def sink(y0: int, block: np.ndarray) -> None:
            if layout == "hwc":
                target[y0:y0 + block.shape[1]] = block.transpose(1, 2, 0)
            else:
                target[:, y0:y0 + block.shape[1]] = block

        self.execute(scene, sink)
        t2 = time.perf_counter()
        self.last_timings = self._timings(t0, t1, t2, t2, h, w)
        if is_torch and out is None:
            return torch.from_numpy(target).to(torch_device)
        return target

    def _timings(self, t0: float, t1: float, t2: float, t3: float, h: int, w: int) -> dict[str, float]:
        n = len(self.last_plan) if self.last_plan is not None else 0
        infer = max(t2 - t1, 1e-9)
        return {
            "preprocess_s": round(t1 - t0, 4),
            "inference_s": round(t2 - t1, 4),
            "write_s": round(t3 - t2, 4),
            "total_s": round(t3 - t0, 4),
            "windows": n,
            "windows_per_s": round(n / infer, 4),
            "hr_megapixels_per_s": round(h * w / 1e6 / max(t3 - t0, 1e-9), 5),
        }

    # ------------------------------------------------------------------ file API
    def run_files(
        self,
        hsi_path: str | Path,
        ref_path: str | Path,
        scale: int | None,
        out_path: str | Path,
        *,
        format: str | None = None,
        out_layout: str = "hwc",
        variable: str | None = None,
        hsi_layout: str | None = None,
        out_variable: str = "hsi",
        sidecar: bool = True,
        extra_info: dict[str, Any] | None = None,
    ) -> Path:
        """Read the LR cube (lazily where possible) and the reference, write the HR cube atomically (+ JSON sidecar).

        ``scale``: ``None`` for the model's own; another one is refused (see :meth:`resolve_scale`).

        The output file appears only when complete; on any error, nothing is left under ``out_path``.
        """
        from sschsr_deploy.io.atomic import check_writable, write_sidecar

        t0 = time.perf_counter()
        out_path = check_writable(out_path)
        out_format = format_from_path(out_path, format)
        with read_hsi(hsi_path, variable=variable, layout=hsi_layout, bands=self.backend.bands) as cube:
            ref = read_rgb(ref_path)
            scene = self.prepare(cube, ref, scale)
            t1 = time.perf_counter()
            shape = (scene.height, scene.width, self.backend.bands)
            with HSIWriter(out_path, shape, np.float32, format=out_format, layout=out_layout,
                           variable=out_variable) as writer:
                self.execute(scene, lambda y0, block: writer.write_rows(y0, block.transpose(1, 2, 0)))
                t2 = time.perf_counter()
            t3 = time.perf_counter()
        self.last_timings = self._timings(t0, t1, t2, t3, scene.height, scene.width)
        if sidecar:
            info = {
                "inputs": {
                    "hsi": str(hsi_path), "hsi_format": cube.format, "hsi_variable": cube.variable,
                    "hsi_layout": cube.layout, "lr_shape_hwc": list(cube.shape), "reference": str(ref_path),
                    "scale": scene.scale, "rgb_bands": list(scene.rgb_bands),
                },
                "output_format": out_format,
                "output_layout": out_layout,
                "output_shape_hwc": list(shape),
                "output_dtype": "float32",
                "output_scale": self.output_scale,
                "normalization": {"enabled": scene.normalize, "lr_min": scene.lo, "lr_max": scene.hi},
                **self.describe(),
                "timings": self.last_timings,
            }
            info.update(extra_info or {})
            write_sidecar(out_path, info)
        return out_path

    def model_info(self) -> dict[str, Any]:
        """Preset, weights and weights hash, for sidecars (computed once)."""
        if self._model_info is None:
            self._model_info = self.backend.model_info()  # what the module or the exported file says
        return dict(self._model_info)

    def describe(self) -> dict[str, Any]:
        """Model, backend and tiling settings (the sidecar's core)."""
        plan = self.last_plan.describe() if self.last_plan is not None else None
        return {
            "model": self.model_info(),
            "backend": self.backend.describe(),
            "tiling": {
                "tile": self.tile, "overlap": self.overlap, "margin": self.margin,
                "batch": self._effective_batch(), "plan": plan,
            },
        }
