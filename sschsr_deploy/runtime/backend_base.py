"""The backend interface and what every backend shares: device resolution, and the limits an exported model fixes.

A :class:`Backend` takes the five model inputs as B x C x h x w float32 tensors already on its device and returns the
B x bands x h x w output there. The pipeline never asks which backend it has, nor looks inside one; it reads
``device``, ``bands``, ``scale``, ``batch_independent``, the shape limits (``tile_bounds``, ``preferred_tile``,
``max_batch``) and ``config``, calls :meth:`Backend.run`, and asks :meth:`Backend.model_info` what to record.

This module imports no backend: the implementations (:mod:`.torch_backend`, :mod:`.ort_backend`,
:mod:`.trt_backend`) import it, and the factory (:mod:`.backends`) imports them, so the imports form no cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.model import INPUT_NAMES
from sschsr_deploy.weights import ModelMeta

__all__ = ["Backend", "ExportSpec", "ExportedModelBackend", "resolve_device", "run_batch_within"]


class Backend(ABC):
    """Runs the network on batches of windows. Subclasses set ``name``, ``device`` and ``bands``."""

    name: str = "?"
    device: torch.device
    bands: int
    #: False when a window's output depends on the other windows in its batch (batch-statistics batch norm): the
    #: pipeline then runs one window per batch.
    batch_independent: bool = True
    #: ((min_h, min_w), (max_h, max_w)): the window sizes an exported model accepts; ``None`` = any valid size.
    #: A fixed-shape export has min == max, and the pipeline then runs exactly that window size.
    tile_bounds: tuple[tuple[int, int], tuple[int, int]] | None = None
    #: The window size (h, w) to use when the caller does not choose one (an export's traced tile); ``None`` = the
    #: pipeline's default.
    preferred_tile: tuple[int, int] | None = None
    #: Largest batch the backend accepts in one call (an export's batch bound); ``None`` = any.
    max_batch: int | None = None
    #: The HR / LR scale the model was trained for (the pipeline refuses another); ``None`` = not recorded.
    scale: int | None = None
    #: What the network computes in: fp32 | bf16 | fp16 (autocast, or an fp16 export) | int8 (a QDQ export).
    precision: str = "fp32"

    @property
    def config(self) -> Any:
        """The model's ``ModelConfig`` when known (rgb bands, memory estimates for ``tile="auto"``), else ``None``."""
        return None

    @abstractmethod
    def run(self, *inputs: Tensor) -> Tensor:
        """Forward the five inputs (B x C x h x w float32 on ``device``); return B x bands x h x w float32."""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for the output sidecar."""
        return {"backend": self.name, "device": str(self.device)}

    def model_info(self) -> dict[str, Any]:
        """What the output sidecar records about the model (preset, weights hash); empty when unknown."""
        return {}

    def warmup(self, height: int, width: int, batch: int = 1) -> None:
        """Run once on zeros of the given window size (compilation, cuDNN autotuning, allocator warm-up). The inputs
        are ordinary tensors, made outside inference mode, as the pipeline's are: a compiled model guards on that
        (an inference tensor in the warm-up made the first real window compile again, measured)."""
        shapes = [(batch, self.bands, height, width)] + [(batch, 3, height, width)] * 4
        inputs = [torch.zeros(s, device=self.device) for s in shapes]
        inputs[1] += 0.5  # constant images are fine for the network; avoid exact zeros in the normalisations
        with torch.inference_mode():
            self.run(*inputs)


class ExportedModelBackend(Backend):
    """Shared by the backends of exported models (ONNX Runtime, TensorRT): their graphs accept a bounded batch and
    window size (``spec``), so :meth:`run` checks the window, splits batches above the export's maximum and pads
    batches below its minimum (repeating the last window, whose outputs are dropped). Subclasses set ``spec``,
    ``_source`` (the file, for messages) and ``_config`` and implement :meth:`_run_batch`."""

    spec: ExportSpec
    _source: str
    _config: Any = None

    @property
    def config(self) -> Any:
        return self._config

    @property
    def precision(self) -> str:  # type: ignore[override]
        """The precision the graph was exported in (its metadata; graphs from before the key: fp32)."""
        meta = getattr(self, "metadata", None) or (getattr(self, "sidecar", None) or {}).get("onnx") or {}
        return str(meta.get("precision") or "fp32")

    @abstractmethod
    def _run_batch(self, inputs: tuple[Tensor, ...]) -> Tensor:
        """Forward one batch the export accepts; return B x bands x h x w float32 on ``device``."""

    def run(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(INPUT_NAMES):
            raise InputValidationError(f"the tile network takes {len(INPUT_NAMES)} inputs, got {len(inputs)}")
        self.spec.check_window(inputs[0].shape, self._source)
        return run_batch_within(self._run_batch, inputs, self.spec.batch_min, self.spec.batch_max)


def run_batch_within(run: Callable[[tuple[Tensor, ...]], Tensor], inputs: Sequence[Tensor], low: int,
                     high: int | None) -> Tensor:
    """``run`` on batches of ``low`` .. ``high`` windows (an export's batch bounds, a compiled model's one batch):
    a larger batch in chunks of ``high``, a smaller one padded with copies of its last window, whose outputs are
    dropped."""
    b = int(inputs[0].shape[0])
    if high is not None and b > high:
        return torch.cat([run_batch_within(run, [t[i:i + high] for t in inputs], low, high) for i in range(0, b, high)])
    pad = max(0, low - b)
    if pad:
        inputs = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in inputs]
    out = run(tuple(inputs))
    return out[:b] if pad else out


_DEVICES = "'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available, else the CPU)"


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a ``--device`` / ``device=`` value; anything unknown or unavailable is an
    :class:`InputValidationError` naming what is accepted (``torch.device`` raises a bare RuntimeError)."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise InputValidationError(f"device must be a string ({_DEVICES}); got {type(device).__name__}")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise InputValidationError(f"unknown device {str(device)[:80]!r}; use {_DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputValidationError(f"unsupported device {str(device)[:80]!r}; use {_DEVICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputValidationError(
                f"device {str(device)!r} requested but CUDA is not available here (use --device cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputValidationError(
                f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
                "(cuda:0 .. cuda:N-1)"
            )
    return dev


@dataclass(frozen=True)
class ExportSpec:
    """Input limits of an exported tile network, from its graph's input shape and the export metadata.

    The graph is authoritative (it is what runs); the metadata (:func:`sschsr_deploy.engine.onnx.export_onnx`'s
    ``metadata_props``, also kept in engine sidecars) fills in what the graph leaves symbolic (the bounds of a
    dynamic tile or batch) and must agree with it, so a file whose metadata was edited or mixed up is refused.
    """

    bands: int
    #: (h, w) bounds of the window size; ``None`` when the graph's spatial axes are dynamic with no recorded bounds.
    tile_min: tuple[int, int] | None
    tile_max: tuple[int, int] | None
    #: the traced (TensorRT-optimal) tile, when known
    tile: tuple[int, int] | None
    batch_min: int
    batch_max: int | None
    batch_independent: bool
    metadata: Mapping[str, str]
    #: the scale the exported weights were trained for (``None`` when the file does not record it)
    scale: int | None = None

    @property
    def fixed_tile(self) -> bool:
        return self.tile_min is not None and self.tile_min == self.tile_max

    @property
    def tile_bounds(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        if self.tile_min is None or self.tile_max is None:
            return None
        return self.tile_min, self.tile_max

    @classmethod
    def from_export(
        cls,
        metadata: Mapping[str, str],
        hsi_shape: Sequence[Any],
        out_channels: Any = None,
        source: str = "the model",
    ) -> ExportSpec:
        """Build the spec; ``hsi_shape``: the 4 dims of the ``hsi_sr`` input (ints, or str / None / -1 for dynamic).

        Raises :class:`InputValidationError` when the model is not a tile network or its graph and metadata disagree.
        """
        meta = {str(k): str(v) for k, v in metadata.items()}
        part = meta.get("part", "tile")
        if part != "tile":
            raise InputValidationError(
                f"{source} is the {part!r} part of the network (export_onnx part={part!r}); the pipeline runs the "
                "whole per-tile network: export it with part='tile' (export/export_onnx.py --part tile)"
            )
        if len(hsi_shape) != 4:
            raise InputValidationError(f"{source}: input hsi_sr has {len(hsi_shape)} dims, expected 4 (B x C x H x W)")
        dims = [_static_dim(d) for d in hsi_shape]
        meta_bands = _meta_int(meta, "bands", source)
        bands = dims[1] if dims[1] is not None else meta_bands
        if bands is None:
            raise InputValidationError(f"{source}: the band count is neither in the graph nor in its metadata")
        if meta_bands is not None and meta_bands != bands:
            raise InputValidationError(
                f"{source}: its graph takes {bands} bands but its metadata says {meta_bands}; the file is inconsistent "
                "(edited or mixed up): export it again"
            )
        out_c = _static_dim(out_channels)
        if out_c is not None and out_c != bands:
            raise InputValidationError(f"{source}: it takes {bands} bands but outputs {out_c}; not an SSC-HSR tile "
                                       "network")
        t_min, t_max = _meta_size(meta, "tile_min", source), _meta_size(meta, "tile_max", source)
        traced = (_meta_int(meta, "tile_height", source), _meta_int(meta, "tile_width", source))
        lo: list[int | None] = [None, None]
        hi: list[int | None] = [None, None]
        for axis in (0, 1):
            d = dims[2 + axis]
            if d is not None:  # fixed in the graph: the metadata must agree
                for what, v in (("tile_min", t_min), ("tile_max", t_max)):
                    if v is not None and v[axis] != d:
                        raise InputValidationError(
                            f"{source}: its graph has a fixed {'height' if axis == 0 else 'width'} of {d} px but its "
                            f"metadata {what} is {v[0]}x{v[1]}; the file is inconsistent: export it again"
                        )
                lo[axis] = hi[axis] = d
            elif t_min is not None and t_max is not None:
                lo[axis], hi[axis] = t_min[axis], t_max[axis]
        tile_min = (lo[0], lo[1]) if None not in lo else None
        tile_max = (hi[0], hi[1]) if None not in hi else None
        tile = (traced[0], traced[1]) if None not in traced else tile_min if tile_min == tile_max else None
        if dims[0] is not None:
            b_lo, b_hi = dims[0], dims[0]
        else:
            b_lo = _meta_int(meta, "batch_min", source) or 1
            b_hi = _meta_int(meta, "batch_max", source)
        _check_limits(source, int(bands), tile_min, tile_max, int(b_lo), b_hi)
        return cls(
            bands=int(bands), tile_min=tile_min, tile_max=tile_max, tile=tile,  # type: ignore[arg-type]
            batch_min=int(b_lo), batch_max=None if b_hi is None else int(b_hi),
            batch_independent=meta.get("batchnorm_mode", "running") != "batch", metadata=meta,
            scale=ModelMeta.read(meta, "scale", source),
        )

    def config(self) -> Any:
        """The ``ModelConfig`` of the recorded preset with these bands (for rgb bands and memory estimates), or
        ``None`` for a custom model."""
        from sschsr_deploy.model.presets import PRESETS, get_preset

        preset = self.metadata.get("preset")
        if preset not in PRESETS:
            return None
        fields: dict[str, Any] = {"bands": self.bands}
        if self.scale is not None:
            fields["scale"] = self.scale
        rgb_bands = ModelMeta.read(self.metadata, "rgb_bands", "the exported model")
        if rgb_bands is not None:
            if not all(0 <= b < self.bands for b in rgb_bands):
                raise InputValidationError(f"the exported model's metadata rgb_bands {rgb_bands} are not bands of a "
                                           f"{self.bands}-band cube; the file is damaged or was edited")
            fields["rgb_bands"] = rgb_bands
        try:
            return get_preset(preset, **fields)
        except (ValueError, TypeError) as exc:
            raise InputValidationError(f"the exported model's metadata does not describe a {preset!r} network: "
                                       f"{exc}") from None

    def describe(self) -> dict[str, Any]:
        """The window and batch limits, for backend descriptions (output sidecars)."""
        return {
            "tile": list(self.tile) if self.tile else None,
            "tile_bounds": [list(self.tile_min), list(self.tile_max)] if self.tile_bounds else None,
            "batch_range": [self.batch_min, self.batch_max],
        }

    def check_window(self, shape: Sequence[int], source: str) -> None:
        """Refuse a batch of windows (B x C x h x w) whose size the export cannot run."""
        h, w = int(shape[2]), int(shape[3])
        if self.tile_min is not None and self.tile_max is not None:
            if not (self.tile_min[0] <= h <= self.tile_max[0] and self.tile_min[1] <= w <= self.tile_max[1]):
                allowed = (f"{self.tile_min[0]}x{self.tile_min[1]}" if self.fixed_tile else
                           f"{self.tile_min[0]}x{self.tile_min[1]} .. {self.tile_max[0]}x{self.tile_max[1]}")
                raise InputValidationError(
                    f"{source} runs {allowed} windows only; got {h}x{w} (use tile={self.tile_min[0]}, or export "
                    "with tile_min/tile_max for a dynamic tile size)"
                )


def _check_limits(source: str, bands: int, tile_min: tuple[int, int] | None, tile_max: tuple[int, int] | None,
                  batch_min: int, batch_max: int | None) -> None:
    """Refuse limits no graph can have (a damaged or edited file): they would surface later as odd runtime errors."""
    problems = []
    if bands < 1:
        problems.append(f"{bands} bands")
    for what, t in (("tile_min", tile_min), ("tile_max", tile_max)):
        if t is not None and min(t) < 1:
            problems.append(f"{what} {t[0]}x{t[1]}")
    if tile_min is not None and tile_max is not None and (tile_min[0] > tile_max[0] or tile_min[1] > tile_max[1]):
        problems.append(f"tile_min {tile_min[0]}x{tile_min[1]} above tile_max {tile_max[0]}x{tile_max[1]}")
    if batch_min < 1 or (batch_max is not None and batch_max < batch_min):
        problems.append(f"batch range {batch_min}..{batch_max}")
    if problems:
        raise InputValidationError(f"{source}: its metadata gives impossible limits ({'; '.join(problems)}); the file "
                                   "is damaged or was edited: export it again")


def _static_dim(d: Any) -> int | None:
    if isinstance(d, bool):
        return None
    if isinstance(d, int) and d > 0:
        return int(d)
    return None


def _meta_int(meta: Mapping[str, str], key: str, source: str) -> int | None:
    if key not in meta or meta[key] in ("", "None"):
        return None
    try:
        return int(meta[key])
    except ValueError:
        raise InputValidationError(f"{source}: metadata {key}={meta[key]!r} is not an integer") from None


def _meta_size(meta: Mapping[str, str], key: str, source: str) -> tuple[int, int] | None:
    if key not in meta:
        return None
    try:
        h, w = (int(v) for v in meta[key].lower().split("x"))
    except ValueError:
        raise InputValidationError(f"{source}: metadata {key}={meta[key]!r} is not HxW") from None
    return h, w


