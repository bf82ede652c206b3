"""The tiled inference pipeline: streamed preprocessing once, then windows → backend → blender → writer.

Data flow (one direction): :class:`~sschsr_deploy.scene.PreparedScene` runs the global part of the
preprocessing once (streamed) and hands out the five model inputs for any window;
:func:`~sschsr_deploy.runtime.planner.plan_tiles` cuts the image; :class:`~sschsr_deploy.runtime.streams.TileExecutor`
runs batches of windows on the backend (overlapping copies and compute on a GPU);
:class:`~sschsr_deploy.runtime.blender.StreamingBlender` blends them and emits finished rows to the output (an array, or
a file through :class:`~sschsr_deploy.io.hsi.HSIWriter`).

Array layouts: numpy cubes are H x W x C (channels last) by default and torch tensors C x H x W (or 1 x C x H x W);
``layout="hwc"|"chw"`` overrides. The RGB reference is H x W x 3 for numpy and 3 x H x W (or 1 x 3 x H x W) for torch,
uint8 (0..255), uint16 (0..65535) or float in [0, 1]. The output has the input's kind and layout, float32.

What needs the whole image, and what streams (memory for an H x W HR scene with C bands):

- per window: the five inputs (bicubic upsampling of an LR crop with a 4-pixel border — identical to the whole-image
  result for scales 2, 4, 8, within ~3e-6 otherwise —, the histogram-matching map applied, the reference crop), the
  LR read itself (lazy formats) and the output (written as rows finish);
- streamed in row bands, once: the LR cube's min / max and checks, and the distributions of the upsampled pseudo-RGB
  bands and of the degraded reference, summarised in bounded sketches (exact for small scenes) that give the
  histogram-matching maps (:class:`~sschsr_deploy.scene.PreparedScene`);
- kept whole: only the reference as decoded (3 bytes per HR pixel for uint8).

Everything else — the network — runs per window, so peak memory is the tile batch, the blender's row band and the
above.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sschsr_deploy import preprocess
from sschsr_deploy.bands import BandMappedCube, default_model_wavelengths, plan_band_mapping
from sschsr_deploy.errors import InputValidationError, NonFiniteOutputError, SSCHSRError
from sschsr_deploy.io.hsi import HSICube, HSIWriter, as_cube, format_from_path, read_hsi
from sschsr_deploy.io.metadata import CubeMetadata
from sschsr_deploy.io.rgb import read_rgb
from sschsr_deploy.runtime.backends import Backend, check_precision, create_backend
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
from sschsr_deploy.scene import PreparedScene, check_nodata

__all__ = ["Pipeline", "SceneOutcome", "input_facts", "output_layout", "sidecar_info", "write_output"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# the pipeline

_ENVI_INTERLEAVES = {"bip": "hwc", "bsq": "chw", "bil": "hwc"}


def output_layout(input_layout: str | None, out_format: str, requested: str | None = None) -> str:
    """The output's band order: ``requested`` when given, else the input's — an ENVI interleave (bsq / bil / bip)
    kept as is for an ENVI output and as its band order (bsq → chw, bip / bil → hwc) for other formats."""
    if requested:
        return requested.lower()
    lay = (input_layout or "hwc").lower()
    if lay in _ENVI_INTERLEAVES:
        return lay if out_format == "envi" else _ENVI_INTERLEAVES[lay]
    return lay if lay in ("hwc", "chw") else "hwc"



def input_facts(hsi_path: str | Path, ref_path: str | Path, cube: HSICube) -> dict[str, Any]:
    """The sidecar's record of the inputs as read (before the run's scale and pseudo-RGB bands are added)."""
    return {"hsi": str(hsi_path), "hsi_format": cube.format, "hsi_variable": cube.variable, "hsi_layout": cube.layout,
            "lr_shape_hwc": list(cube.shape), "reference": str(ref_path)}


def sidecar_info(inputs: dict[str, Any], record: dict[str, Any], out_format: str, layout: str,
                 shape: Sequence[int], metadata: CubeMetadata, timings: dict[str, Any],
                 extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """An output's JSON sidecar (before :meth:`HSIWriter.commit` adds the output files): the inputs
    (:func:`input_facts`), the run (:meth:`Pipeline.run_record`), the output's format, layout, shape and metadata,
    the timings, then ``extra_info``."""
    record = dict(record)
    describe = record.pop("describe")
    info = {
        "inputs": {**inputs, "scale": record["scale"], "rgb_bands": list(record["rgb_bands"])},
        "output_format": out_format,
        "output_layout": layout,
        "output_shape_hwc": list(shape),
        "output_dtype": "float32",
        "output_scale": record["output_scale"],
        "normalization": record["normalization"],
        "nodata": record["nodata"],
        "band_mapping": record["band_mapping"],
        "metadata": metadata.to_json(),
        **describe,
        "timings": timings,
    }
    info.update(extra_info or {})
    return info


def write_output(out_path: str | Path, hr: np.ndarray, *, inputs: dict[str, Any], record: dict[str, Any],
                 metadata: CubeMetadata, timings: dict[str, Any] | None = None, format: str | None = None,
                 out_layout: str | None = None, out_variable: str = "hsi", sidecar: bool = True,
                 extra_info: dict[str, Any] | None = None) -> Path:
    """Write an HR cube computed elsewhere (``hr``: H x W x C float32, from :meth:`Pipeline.compute_scene`) exactly
    as :meth:`Pipeline.run_files` writes its output: same format / layout rules (:func:`output_layout` from the
    input's layout in ``inputs``), metadata, sidecar (:func:`sidecar_info`; ``timings`` is updated in place: its
    ``write_s`` / ``total_s`` then include this write) and atomic commit (:class:`HSIWriter`: stale temps removed,
    free space checked, output and sidecar renamed together; nothing changes under ``out_path`` on an error)."""
    from sschsr_deploy.io.atomic import check_writable, clean_stale_temps
    from sschsr_deploy.io.hsi import check_output_space

    t0 = time.perf_counter()
    out_path = check_writable(out_path)
    out_format = format_from_path(out_path, format)
    clean_stale_temps(out_path.parent)
    layout = output_layout(inputs.get("hsi_layout"), out_format, out_layout)
    shape = tuple(int(v) for v in hr.shape)
    check_output_space(out_path, shape, np.float32, format=out_format, layout=layout, metadata=metadata)
    with HSIWriter(out_path, shape, np.float32, format=out_format, layout=layout, variable=out_variable,
                   metadata=metadata) as writer:
        writer.write_rows(0, hr)
        writer.finish()
        times = timings if timings is not None else {}
        write_s = time.perf_counter() - t0
        times["write_s"] = round(float(times.get("write_s", 0.0)) + write_s, 4)
        times["total_s"] = round(float(times.get("total_s", 0.0)) + write_s, 4)
        if times["total_s"] > 0:
            times["hr_megapixels_per_s"] = round(shape[0] * shape[1] / 1e6 / times["total_s"], 5)
        info = sidecar_info(inputs, record, out_format, layout, shape, metadata, times, extra_info) if sidecar else None
        writer.commit(sidecar=info)
    return out_path


@dataclass(frozen=True)
class SceneOutcome:
    """What :meth:`Pipeline.execute_many` says of one scene: its tile plan, and the error that refused its output
    (``None``: the rows were all emitted and are finite)."""

    plan: TilePlan
    error: SSCHSRError | None
    windows: int


class _SceneRun:
    """One scene's part of an execution: its plan and blender, what happens to finished rows (back to the input's
    value range, no-data pixels written back, non-finite values counted) and the LR pages released row by row."""

    def __init__(self, pipeline: Pipeline, scene: PreparedScene, sink: Callable[[int, np.ndarray], None]) -> None:
        self.scene = scene
        self.sink = sink
        self.plan = pipeline.plan(scene.height, scene.width)
        self.bands = pipeline.backend.bands
        self.denorm = pipeline.output_scale == "input"
        self.blender = StreamingBlender(self.plan, self.bands, self._emit)
        self.left = len(self.plan)
        self.row: int | None = None
        self.nan = self.inf = 0
        self.first_row = -1
        self.error: SSCHSRError | None = None

    def crop(self, window: Window) -> tuple[np.ndarray, ...]:
        """The window's five inputs; at each new row of windows the LR pages the previous row read are unmapped
        (:meth:`PreparedScene.release_pages`)."""
        if window.y0 != self.row:
            self.row = window.y0
            self.scene.release_pages()
        return self.scene.window(window.y0, window.y1, window.x0, window.x1)

    def _emit(self, y0: int, block: np.ndarray) -> None:
        scene = self.scene
        if self.denorm:
            block = scene.denormalize(block)
        masked = scene.hr_mask(y0, y0 + block.shape[1])
        if masked is not None:  # no-data pixels are not the network's to answer for: checked as 0, written back
            block[:, masked] = 0.0
        finite = np.isfinite(block)
        if not finite.all():  # counted over the whole output; reported (and refused) at the end
            nan = int(np.count_nonzero(np.isnan(block)))
            self.nan += nan
            self.inf += int(block.size - np.count_nonzero(finite)) - nan
            if self.first_row < 0:
                self.first_row = y0
                log.warning("the output has NaN / inf values from row %d on; the run will fail at its end", y0)
        if masked is not None:
            block[:, masked] = scene.nodata
        self.sink(y0, block)

    def add(self, window: Window, tile: np.ndarray) -> None:
        """Blend one window's output; after the scene's last window, emit the remaining rows and check them."""
        self.blender.add(window, tile)
        self.left -= 1
        if self.left == 0:
            self.blender.finish()
            if self.nan or self.inf:
                n = self.nan + self.inf
                scene = self.scene
                total = scene.height * scene.width * self.bands
                self.error = NonFiniteOutputError(
                    f"the network produced {n} non-finite values ({self.nan} NaN, {self.inf} infinite; "
                    f"{n / total:.1%} of the {scene.height}x{scene.width}x{self.bands} output, from row "
                    f"{self.first_row}): the output is refused; check the weights for NaN / inf and the input's "
                    "value range"
                )


def _tile_hw(tile: int | Sequence[int]) -> tuple[int, int]:
    """A fixed tile as (h, w)."""
    return (int(tile), int(tile)) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))


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
        compile: ``torch.compile`` the model (torch backend only). With a fixed tile (``"default"`` or a size)
            every window is then the tile, smaller images padded up to it, so that one compilation serves every
            scene; call :meth:`warmup` to compile before the first scene (minutes on a CPU).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the torch backend (autocast with float32 islands; default
            fp32); for an exported model, the precision it must have been exported in (``"int8"`` for a QDQ graph;
            default: whatever it was exported in) — a mismatch is refused rather than silently run.
        half: the older spelling of ``precision`` for the torch backend (``True`` = fp16, ``"bf16"``).
        channels_last: torch backend: channels-last memory format (``"auto"``, the default: for bf16 / fp16 on a
            CPU, where it was measured faster; ``True`` for fp32 too).
        rgb_bands: pseudo-RGB band triple (default: the model config's, (15, 8, 3) for 31 bands).
        normalize: min-max normalise the LR cube (see :func:`sschsr_deploy.scene.prepare_inputs`).
        output_scale: ``"input"`` maps the output back to the LR cube's value range (undoing the normalisation);
            ``"unit"`` returns the network's output as is.
        memory_budget: bytes for ``tile="auto"`` (default: half the available RAM on CPU, 80 % of free GPU memory).
        depth: batches in flight on a GPU.
        model_info: what to record about the model in output sidecars (from
            :func:`~sschsr_deploy.weights.load_model`); derived from the model (or the exported file's
            metadata) when omitted.
        backend_options: extra keyword arguments for the backend (``threads`` for onnxruntime, ``cuda_graph`` /
            ``expect`` for tensorrt, ``check_inputs`` for torch).
        model_wavelengths: the model's band centres in nm (default: recorded in its metadata, else 400–700 nm for
            a 31-band model); cubes with other band centres are mapped onto them (:meth:`map_bands`).
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
        precision: str | None = None,
        channels_last: bool | str = "auto",
        rgb_bands: Sequence[int] | None = None,
        normalize: bool = True,
        output_scale: str = "input",
        memory_budget: int | None = None,
        depth: int = 2,
        model_info: dict[str, Any] | None = None,
        backend_options: dict[str, Any] | None = None,
        model_wavelengths: Sequence[float] | None = None,
    ) -> None:
        options = dict(backend_options or {})
        if not isinstance(model_or_engine, Backend):
            if str(backend).lower() == "torch":
                options.setdefault("compile", compile)
                options.setdefault("half", half)
                options.setdefault("precision", precision)
                options.setdefault("channels_last", channels_last)
            elif compile or half or channels_last is True:
                flag = "compile" if compile else "half" if half else "channels_last"
                raise InputValidationError(
                    f"{flag}=True applies to the torch backend only (backend={backend!r}; "
                    "an exported model's precision and layout are chosen at export)"
                )
        self.backend = create_backend(backend, model_or_engine, device, **options)
        if precision is not None:
            check_precision(self.backend, precision)
        if isinstance(tile, str) and tile not in ("auto", "default"):
            try:
                tile = int(tile)
            except ValueError:
                raise InputValidationError(
                    f"tile must be an integer, 'auto', 'default' or None; got {tile!r}"
                ) from None
        self.limits = TileLimits(self.backend.tile_bounds, self.backend.preferred_tile, self.backend.name)
        self.tile = resolve_tile(tile, self.limits, overlap, margin)  # checked once, here
        if getattr(self.backend, "compiled", False) and isinstance(self.tile, int | tuple):
            # a compiled model compiles once per input shape: one window size, as for a fixed-shape export
            fixed = _tile_hw(self.tile)
            self.limits = TileLimits((fixed, fixed), fixed, f"{self.backend.name} (compiled)")
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
        self._model_wavelengths = None if model_wavelengths is None else tuple(float(v) for v in model_wavelengths)
        if self._model_wavelengths is not None and len(self._model_wavelengths) != self.backend.bands:
            raise InputValidationError(f"model_wavelengths lists {len(self._model_wavelengths)} band centres for a "
                                       f"{self.backend.bands}-band model")
        self.last_band_mapping = None
        self.last_plan: TilePlan | None = None
        self.last_batches = 0
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

    def warmup(self) -> float:
        """Run the backend once on a batch of tile-sized windows, so that a compiled model compiles (and a GPU
        autotunes) before the first scene rather than during it; returns the seconds it took. Whole-image and
        ``"auto"`` tiles have no single window size: nothing to do (0.0)."""
        if not isinstance(self.tile, int | tuple):
            return 0.0
        h, w = _tile_hw(self.tile)
        t0 = time.perf_counter()
        self.backend.warmup(h, w, self._effective_batch())
        return time.perf_counter() - t0

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
            wl = getattr(getattr(cube, "metadata", None), "wavelengths", None)
            hint = ""
            if wl is not None and self.model_wavelengths is None:
                hint = "; its band centres cannot help: the model's are unknown (give them: model_wavelengths=)"
            raise InputValidationError(
                f"the cube has {cube.bands} bands but the model expects {self.backend.bands} (wrong file or variable, "
                "or build the model with a matching band count: --bands / SSCHSR.from_preset(..., bands=N); a cube "
                f"whose header lists its band centres is mapped onto the model's bands by wavelength){hint}"
            )

    @property
    def model_wavelengths(self) -> tuple[float, ...] | None:
        """The model's band centres in nm: given to the constructor, recorded in the model's metadata
        (``wavelengths``), or for a 31-band model the 400–700 nm, 10 nm grid the official data use; else ``None``
        (cubes are then matched by band count only)."""
        if self._model_wavelengths is not None:
            return self._model_wavelengths
        recorded = self.model_info().get("wavelengths")
        if recorded:
            return tuple(float(v) for v in recorded)
        return default_model_wavelengths(31) if self.backend.bands == 31 else None

    def map_bands(self, cube: Any, band_mapping: str = "auto", nodata: float | None = None) -> Any:
        """``cube`` as the model's bands: unchanged when its band centres are unknown (``metadata.wavelengths``),
        ``band_mapping="none"`` or they agree with :attr:`model_wavelengths`; else a
        :class:`~sschsr_deploy.bands.BandMappedCube` (``"auto"``, ``"nearest"`` or ``"gaussian"``: see
        :func:`~sschsr_deploy.bands.plan_band_mapping`). ``self.last_band_mapping`` records the mapping (or None)."""
        self.last_band_mapping = None
        if band_mapping not in ("auto", "nearest", "gaussian", "none"):
            raise InputValidationError(
                f"band_mapping must be auto, nearest, gaussian or none; got {band_mapping!r}")
        if isinstance(cube, BandMappedCube):  # already mapped (e.g. by _plan_run): keep its mapping on record
            self.last_band_mapping = cube.mapping
            return cube
        if band_mapping == "none":
            return cube
        meta = getattr(cube, "metadata", None)
        source_nm = meta.wavelengths_nm if meta is not None else None
        target_nm = self.model_wavelengths
        if source_nm is None or target_nm is None:
            if band_mapping != "auto":
                what = "the cube's band centres" if source_nm is None else "the model's band centres"
                raise InputValidationError(f"band_mapping={band_mapping!r} needs {what}, which are not known")
            return cube
        mapping = plan_band_mapping(source_nm, target_nm, method=band_mapping)
        self.last_band_mapping = mapping
        if mapping.is_identity:
            return cube
        log.info("mapping %d bands (%.1f-%.1f nm) onto the model's %d by %s", len(source_nm), min(source_nm),
                 max(source_nm), len(target_nm), mapping.method)
        return BandMappedCube(cube, mapping, nodata)

    def output_metadata(self, cube: Any, scale: int, nodata: float | None) -> CubeMetadata:
        """The HR output's metadata: the input's (:meth:`CubeMetadata.for_output`: georeference at 1 / ``scale`` the
        pixel size), re-indexed or replaced by the model's band centres when the bands were mapped
        (:attr:`last_band_mapping`), with the ``nodata`` value the run used."""
        meta = getattr(cube, "metadata", None) or CubeMetadata()
        mapping = self.last_band_mapping
        if mapping is None or mapping.is_identity:
            out = meta.for_output(scale)
        elif mapping.source_indices is not None:
            out = meta.for_output(scale, band_indices=mapping.source_indices)
        else:
            out = meta.for_output(scale, wavelengths_nm=mapping.target_nm)
        if mapping is not None and not mapping.is_identity:
            src = mapping.source_nm
            out.extra["band mapping"] = (f"{mapping.method}: {len(src)} input bands ({min(src):g}-{max(src):g} nm) "
                                         f"onto the model's {len(mapping.target_nm)}")
        out.nodata = nodata
        return out

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
        scale = preprocess.check_scale(scale)
        if model_scale is not None and scale != model_scale:
            info = self.model_info()
            what = info.get("weights") or info.get("model_file") or f"the {self.backend.name} model"
            raise InputValidationError(
                f"scale {scale} was requested but {what} was trained for x{model_scale}: use weights made for "
                f"x{scale} (e.g. tiny-x{scale}) or omit the scale to run x{model_scale}"
            )
        return scale

    def prepare(self, lr: HSICube, ref_rgb: Any, scale: int | None = None, *, nodata: float | str | None = None,
                band_mapping: str = "auto") -> PreparedScene:
        """Validate the inputs and run the global preprocessing, streamed (``scale``: see :meth:`resolve_scale`).

        ``nodata``: the LR cube's no-data value (a number or ``"nan"``); ``None`` takes the file's own
        (``lr.metadata.nodata``: ENVI ``data ignore value``, GeoTIFF nodata). ``band_mapping``: see
        :meth:`map_bands`. The scene's ``lr`` is the mapped cube."""
        if nodata is None:
            nodata = getattr(getattr(lr, "metadata", None), "nodata", None)
        nodata = check_nodata(nodata)
        cube = self.map_bands(lr, band_mapping, nodata)
        self._check_bands(cube)
        return PreparedScene(cube, ref_rgb, self.resolve_scale(scale), self.rgb_bands, self.normalize, nodata=nodata)

    def _host_batches(self, runs: Sequence[_SceneRun], batch: int) -> Iterator[HostBatch]:
        """The windows' inputs, computed on demand batch by batch (nothing of HR size is held). Windows of several
        scenes share a batch when their window sizes agree: all windows of one size, scene after scene in order,
        then the next size (each scene's windows stay in plan order, as its blender needs)."""
        queues: dict[tuple[int, int], list[tuple[_SceneRun, Window]]] = {}
        for run in runs:
            queues.setdefault((run.plan.tile_h, run.plan.tile_w), []).extend((run, w) for w in run.plan.windows)
        for items in queues.values():
            for i in range(0, len(items), batch):
                group = items[i:i + batch]
                crops = [run.crop(w) for run, w in group]
                inputs = tuple(np.stack([c[k] for c in crops]) for k in range(5))
                yield HostBatch(inputs, group)

    def execute(self, scene: PreparedScene, sink: Callable[[int, np.ndarray], None]) -> TilePlan:
        """Run every window of ``scene`` and send finished output rows (C x n x W float32) to ``sink(y0, block)``.

        Raises :class:`~sschsr_deploy.errors.NonFiniteOutputError` at the end when any output value is NaN or
        infinite (NaN weights, an input range that overflows), with their count: such an output is never committed
        (``run_files`` writes into a temp file that is then deleted)."""
        (outcome,) = self.execute_many([scene], [sink])
        if outcome.error is not None:
            raise outcome.error
        return outcome.plan

    def execute_many(self, scenes: Sequence[PreparedScene],
                     sinks: Sequence[Callable[[int, np.ndarray], None]]) -> list[SceneOutcome]:
        """Run several scenes together: their windows share forward passes (``batch`` windows each) where their
        window sizes agree — the serving path for requests queued together, which keeps a GPU busy with small
        scenes. Each scene's rows go to its own sink, in order; a scene is finished (its last rows emitted) as soon as
        its last window is blended.

        Returns one :class:`SceneOutcome` per scene: its plan and, instead of raising, a
        :class:`~sschsr_deploy.errors.NonFiniteOutputError` for a scene whose output had NaN / inf (the other scenes
        are unaffected). An error of the backend itself (out of memory, a broken engine) propagates: every scene
        of the call fails with it. ``self.last_plan`` is the last scene's plan; ``self.last_batches`` the number of
        forward passes."""
        if len(scenes) != len(sinks):
            raise ValueError(f"{len(scenes)} scene(s) but {len(sinks)} sink(s)")
        runs = [_SceneRun(self, scene, sink) for scene, sink in zip(scenes, sinks, strict=True)]
        if runs:
            self.last_plan = runs[-1].plan
        batch = self._effective_batch()
        if batch != self.batch:
            log.info("running %d window(s) per batch instead of %d (%s)", batch, self.batch,
                     "batch-statistics batch norm" if not self.backend.batch_independent
                     else f"the {self.backend.name} model's maximum batch")
        for run in runs:
            plan, scene = run.plan, run.scene
            log.info(
                "%dx%d HR, %d window(s) of %dx%d (overlap %d, margin %d), batch %d, %s on %s",
                scene.height, scene.width, len(plan), plan.tile_h, plan.tile_w, plan.overlap, plan.margin, batch,
                self.backend.name, self.backend.device,
            )
        total = sum(len(run.plan) for run in runs)
        forward = 0
        # leave=None: kept on screen alone, cleared under a scenes bar (a folder run)
        with tqdm(total=total, unit="tile", desc="SSC-HSR", disable=self.quiet, dynamic_ncols=True,
                  leave=None) as bar:
            for group, out in self.executor.map(self._host_batches(runs, batch)):
                forward += 1
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are counted, not warned about
                    for j, (run, w) in enumerate(group):
                        run.add(w, out[j])
                bar.update(len(group))
        self.last_batches = forward
        return [SceneOutcome(run.plan, run.error, len(run.plan)) for run in runs]

    # ------------------------------------------------------------------ in-memory API
    def run(
        self,
        lr_hsi: Any,
        ref_rgb: Any,
        scale: int | None = None,
        *,
        layout: str | None = None,
        out: Any = None,
        nodata: float | str | None = None,
        wavelengths: Sequence[float] | None = None,
        band_mapping: str = "auto",
    ) -> Any:
        """Super-resolve ``lr_hsi`` (h x w x C) with ``ref_rgb`` (h·scale x w·scale x 3) and return the HR cube.

        ``scale`` defaults to the model's (recorded in its weights or export); another one is refused.

        ``layout`` is the cube layout (default: ``"hwc"`` for numpy, ``"chw"`` for torch; see the module docstring);
        the output uses the same kind and layout. ``out`` (optional) is a preallocated array-like of the output
        shape (numpy array, ``np.memmap``, HDF5 dataset) that receives the rows as they finish; it is returned.

        ``nodata`` (a number or ``"nan"``): pixels holding it are masked (see :class:`~sschsr_deploy.scene.
        PreparedScene`) and come back as ``nodata``. ``wavelengths``: the cube's band centres in nm, to map them onto
        the model's (``band_mapping``, :meth:`map_bands`); for an :class:`HSICube` its metadata's are used.
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
        if isinstance(lr_hsi, HSICube):
            cube = lr_hsi
        else:
            meta = None if wavelengths is None else CubeMetadata(wavelengths=tuple(float(v) for v in wavelengths),
                                                                 wavelength_units="nm")
            hint = self.backend.bands if wavelengths is None else None
            cube = as_cube(lr_hsi, layout, hint, "LR cube")
            if meta is not None:
                cube.metadata = meta.validated(cube.bands, "wavelengths")
        scene = self.prepare(cube, ref_rgb, scale, nodata=nodata, band_mapping=band_mapping)
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
        out_layout: str | None = None,
        variable: str | None = None,
        hsi_layout: str | None = None,
        out_variable: str = "hsi",
        sidecar: bool = True,
        extra_info: dict[str, Any] | None = None,
        nodata: float | str | None = None,
        band_mapping: str = "auto",
    ) -> Path:
        """Read the LR cube (lazily where possible) and the reference, write the HR cube atomically (+ JSON sidecar).

        ``scale``: ``None`` for the model's own; another one is refused (see :meth:`resolve_scale`).
        ``out_layout``: the output's band order (``hwc`` / ``chw``, or for ENVI ``bip`` / ``bsq`` / ``bil``); default
        the input's (an ENVI input's interleave is kept in an ENVI output). ``nodata`` / ``band_mapping``: see
        :meth:`prepare`. The input's metadata (band centres, georeference at 1 / scale the pixel size, nodata, other
        keys) goes into the output where its format holds it (:meth:`output_metadata`) and always into the sidecar.

        The output file appears only when complete, together with its sidecar (renamed last; it records the output's
        size and SHA-256); on any error, nothing changes under ``out_path`` (a previous output and sidecar are kept).
        Before any compute, once the inputs' headers are read: stale temp files of dead runs beside ``out_path`` are
        removed and the free space is checked (:class:`~sschsr_deploy.errors.OutputSpaceError`). The protocol and
        what a crash leaves: :mod:`sschsr_deploy.io.atomic`. ``self.last_output`` is ``out_path`` once committed.
        """
        from sschsr_deploy.io.atomic import check_writable, clean_stale_temps
        from sschsr_deploy.io.hsi import check_output_space
        from sschsr_deploy.io.signals import fault_point

        t0 = time.perf_counter()
        self.last_output = None
        out_path = check_writable(out_path)
        out_format = format_from_path(out_path, format)
        clean_stale_temps(out_path.parent)
        with read_hsi(hsi_path, variable=variable, layout=hsi_layout, bands=self.backend.bands) as cube:
            layout = output_layout(cube.layout, out_format, out_layout)
            run_scale, run_nodata, mapped, out_meta = self._plan_run(cube, scale, nodata, band_mapping)
            check_output_space(out_path, (cube.shape[0] * run_scale, cube.shape[1] * run_scale, self.backend.bands),
                               np.float32, format=out_format, layout=layout, metadata=out_meta)
            ref = read_rgb(ref_path)
            scene = self.prepare(mapped, ref, run_scale, nodata=run_nodata, band_mapping=band_mapping)
            t1 = time.perf_counter()
            fault_point("before-output")
            shape = (scene.height, scene.width, self.backend.bands)
            with HSIWriter(out_path, shape, np.float32, format=out_format, layout=layout, variable=out_variable,
                           metadata=out_meta) as writer:
                self.execute(scene, lambda y0, block: writer.write_rows(y0, block.transpose(1, 2, 0)))
                t2 = time.perf_counter()
                writer.finish()
                t3 = time.perf_counter()
                self.last_timings = self._timings(t0, t1, t2, t3, scene.height, scene.width)
                info = None
                if sidecar:
                    info = sidecar_info(input_facts(hsi_path, ref_path, cube), self.run_record(scene), out_format,
                                        layout, shape, out_meta, self.last_timings, extra_info)
                try:
                    writer.commit(sidecar=info)  # a signal during its renames is acted on after them
                finally:
                    if writer.committed:
                        self.last_output = out_path
        return out_path

    def _plan_run(self, cube: HSICube, scale: int | None, nodata: float | str | None,
                  band_mapping: str) -> tuple[int, float | None, Any, CubeMetadata]:
        """What a file run decides before any heavy work, once: the scale, the nodata value (the file's own unless
        given), the cube as the model's bands (:meth:`map_bands`, band count checked) and the output's metadata."""
        run_scale = self.resolve_scale(scale)
        run_nodata = check_nodata(cube.metadata.nodata if nodata is None else nodata)
        mapped = self.map_bands(cube, band_mapping, run_nodata)
        self._check_bands(mapped)
        return run_scale, run_nodata, mapped, self.output_metadata(cube, run_scale, run_nodata)

    def run_record(self, scene: PreparedScene) -> dict[str, Any]:
        """What an output's sidecar records about the run of ``scene`` (after :meth:`execute`): scale, pseudo-RGB
        bands, output scale, normalisation range, nodata, band mapping and :meth:`describe` (model, backend, tiling).
        Plain values (picklable): :func:`sidecar_info` assembles the sidecar from it wherever the output is written."""
        mapping = self.last_band_mapping
        return {
            "scale": scene.scale,
            "rgb_bands": list(scene.rgb_bands),
            "output_scale": self.output_scale,
            "normalization": {"enabled": scene.normalize, "lr_min": scene.lo, "lr_max": scene.hi},
            "nodata": None if scene.nodata is None else {
                "value": "nan" if np.isnan(scene.nodata) else scene.nodata,
                "masked_lr_pixels": scene.masked_pixels,
                "fill": "nearest valid pixel (per LR crop); written back as nodata",
            },
            "band_mapping": None if mapping is None else mapping.describe(),
            "describe": self.describe(),
        }

    def compute_scene(self, cube: HSICube, ref_rgb: Any, scale: int | None = None, *,
                      nodata: float | str | None = None, band_mapping: str = "auto") -> dict[str, Any]:
        """``run_files``' compute part for a cube already read (no file is touched): the same checks, in the same
        order, then the HR cube in memory. Returns ``{"hr": H x W x C float32, "metadata": the output's
        CubeMetadata (:meth:`output_metadata`), "record": :meth:`run_record`, "timings": ...}`` — with
        :func:`input_facts` of the file the cube was read from, what :func:`write_output` needs to write exactly
        what ``run_files`` would have (used where the inputs are read and the output written elsewhere, e.g. a Ray
        driver)."""
        t0 = time.perf_counter()
        run_scale, run_nodata, mapped, out_meta = self._plan_run(cube, scale, nodata, band_mapping)
        scene = self.prepare(mapped, ref_rgb, run_scale, nodata=run_nodata, band_mapping=band_mapping)
        t1 = time.perf_counter()
        hr = np.empty((scene.height, scene.width, self.backend.bands), dtype=np.float32)

        def sink(y0: int, block: np.ndarray) -> None:
            hr[y0:y0 + block.shape[1]] = block.transpose(1, 2, 0)

        self.execute(scene, sink)
        t2 = time.perf_counter()
        self.last_timings = self._timings(t0, t1, t2, t2, scene.height, scene.width)
        return {"hr": hr, "metadata": out_meta, "record": self.run_record(scene), "timings": dict(self.last_timings)}

    def run_scenes(self, jobs: Any, *, resume: bool = True, keep_going: bool = False,
                   summary_path: str | Path | None = None, progress: bool | None = None) -> Any:
        """Many scenes through this pipeline (the model loaded once): :func:`sschsr_deploy.batch.run_scenes` over
        ``jobs`` (:class:`~sschsr_deploy.batch.SceneJob` s, ``(hsi, ref, out)`` tuples or dicts with per-scene
        options); returns the :class:`~sschsr_deploy.batch.BatchSummary`."""
        from sschsr_deploy.batch import as_jobs, run_scenes

        return run_scenes(self, as_jobs(list(jobs)), resume=resume, keep_going=keep_going, summary_path=summary_path,
                          progress=not self.quiet if progress is None else progress)

    def model_info(self) -> dict[str, Any]:
        """Preset, weights and weights hash, for sidecars (computed once)."""
        if self._model_info is None:
            self._model_info = self.backend.model_info()  # what the module or the exported file says
        return dict(self._model_info)

    def describe(self, plan: TilePlan | None = None) -> dict[str, Any]:
        """Model, backend and tiling settings (the sidecar's core); ``plan``: the scene's (default the last run's)."""
        plan = plan if plan is not None else self.last_plan
        plan = plan.describe() if plan is not None else None
        return {
            "model": self.model_info(),
            "precision": self.backend.precision,
            "backend": self.backend.describe(),
            "tiling": {
                "tile": self.tile, "overlap": self.overlap, "margin": self.margin,
                "batch": self._effective_batch(), "plan": plan,
            },
        }
