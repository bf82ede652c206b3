"""Bands by wavelength: map a cube measured at its own band centres onto the bands a model was trained on.

A model knows its band count and, from its metadata, its band centres (the official / shipped models: 31 bands at
400, 410, ..., 700 nm, the CAVE / ICVL convention the training data use). A cube whose centres are known and differ
(a 224-band AVIRIS-like cube at 400–2500 nm, a 30-band camera) is mapped by :func:`plan_band_mapping`:

- ``"identity"``: the centres agree to within a tenth of the model's band spacing — nothing to do;
- ``"nearest"``: each model band takes the nearest input band. Used when the input is sampled about as finely as
  the model (fewer than 1.5 input bands per model band): integrating would only blur;
- ``"gaussian"``: each model band is the input bands integrated under a Gaussian spectral response of the model band
  (FWHM = the model's band spacing, or the model's own FWHM list) — how a 10-nm camera band would have seen a finer
  spectrum; used when the input is at least 1.5 times finer. Weights are normalised per model band.

The model's range must be covered: every model centre within half an input spacing of the input's range, otherwise
the mapping is refused (extrapolating bands would invent a spectrum). The mapping is recorded in the output metadata
(:meth:`BandMapping.describe`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import CubeView, nodata_mask

__all__ = ["METHODS", "BandMapping", "BandMappedCube", "default_model_wavelengths", "plan_band_mapping"]

METHODS = ("auto", "identity", "nearest", "gaussian")


def default_model_wavelengths(bands: int = 31, start: float = 400.0, stop: float = 700.0) -> tuple[float, ...]:
    """Band centres (nm) of a model without its own list: ``bands`` equally spaced from ``start`` to ``stop``."""
    if bands < 2:
        return (start,)
    step = (stop - start) / (bands - 1)
    return tuple(start + i * step for i in range(bands))


def _spacing(centres: np.ndarray) -> float:
    return float(np.median(np.diff(np.sort(centres)))) if centres.size > 1 else 1.0


@dataclass(frozen=True)
class BandMapping:
    """``weights`` (target x source): model band i = Σ_j weights[i, j] · input band j (rows sum to 1)."""

    method: str
    source_nm: tuple[float, ...]
    target_nm: tuple[float, ...]
    weights: np.ndarray

    @property
    def is_identity(self) -> bool:
        return self.method == "identity"

    @property
    def source_indices(self) -> tuple[int, ...] | None:
        """For ``identity`` / ``nearest``: the input band each model band takes; ``None`` for integration."""
        if self.method == "gaussian":
            return None
        return tuple(int(i) for i in self.weights.argmax(axis=1))

    def apply(self, block_hwc: np.ndarray) -> np.ndarray:
        """An H x W x C_in block → H x W x C_model (float32; band selection keeps the input's dtype)."""
        if block_hwc.shape[-1] != len(self.source_nm):
            raise InputValidationError(
                f"band mapping expects {len(self.source_nm)} input bands; the block has {block_hwc.shape[-1]}")
        idx = self.source_indices
        if idx is not None:
            return block_hwc[..., list(idx)]
        used = np.flatnonzero(self.weights.any(axis=0))  # read only the bands that contribute
        w = self.weights[:, used].astype(np.float32)
        return np.tensordot(block_hwc[..., used].astype(np.float32), w.T, axes=([-1], [0]))

    def describe(self) -> dict:
        """For sidecars and output metadata: method, the model's centres and, per model band, what it was made of."""
        out: dict = {"method": self.method, "target_nm": list(self.target_nm)}
        idx = self.source_indices
        if idx is not None:
            out["source_bands"] = list(idx)
            out["source_nm"] = [self.source_nm[i] for i in idx]
        else:
            out["source_band_ranges"] = [
                [int(np.flatnonzero(row)[0]), int(np.flatnonzero(row)[-1])] for row in self.weights]
        return out


def plan_band_mapping(
    source_nm: Sequence[float],
    target_nm: Sequence[float],
    *,
    target_fwhm_nm: Sequence[float] | None = None,
    method: str = "auto",
) -> BandMapping:
    """How to make the model's bands (``target_nm``) from a cube's (``source_nm``); see the module docstring."""
    if method not in METHODS:
        raise InputValidationError(f"band mapping method must be one of {', '.join(METHODS)}; got {method!r}")
    src = np.asarray(source_nm, dtype=np.float64)
    tgt = np.asarray(target_nm, dtype=np.float64)
    if src.ndim != 1 or src.size == 0 or not np.isfinite(src).all():
        raise InputValidationError("the cube's band centres must be a non-empty list of finite numbers")
    if np.unique(src).size != src.size:
        raise InputValidationError("the cube's band centres repeat a value; cannot tell the bands apart")
    src_step, tgt_step = _spacing(src), _spacing(tgt)
    n_src, n_tgt = src.size, tgt.size
    if n_src == n_tgt and np.max(np.abs(src - tgt)) <= 0.1 * tgt_step and method in ("auto", "identity"):
        return BandMapping("identity", tuple(src), tuple(tgt), np.eye(n_tgt))
    if method == "identity":
        raise InputValidationError(
            f"the cube's {n_src} bands ({src.min():g}–{src.max():g} nm) are not the model's {n_tgt} "
            f"({tgt.min():g}–{tgt.max():g} nm); use band mapping 'nearest' or 'gaussian'")
    margin = 0.5 * src_step
    if tgt.min() < src.min() - margin or tgt.max() > src.max() + margin:
        raise InputValidationError(
            f"the cube's bands cover {src.min():g}–{src.max():g} nm but the model needs {tgt.min():g}–{tgt.max():g} "
            "nm; the missing part of the spectrum cannot be made up")
    if method == "auto":
        method = "gaussian" if tgt_step / src_step >= 1.5 else "nearest"
    weights = np.zeros((n_tgt, n_src))
    if method == "nearest":
        weights[np.arange(n_tgt), np.abs(tgt[:, None] - src[None, :]).argmin(axis=1)] = 1.0
    else:
        fwhm = np.full(n_tgt, tgt_step) if target_fwhm_nm is None else np.asarray(target_fwhm_nm, dtype=np.float64)
        if fwhm.shape != (n_tgt,) or not (fwhm > 0).all():
            raise InputValidationError("the model's band widths (FWHM) must be positive, one per band")
        sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        z = (src[None, :] - tgt[:, None]) / sigma[:, None]
        response = np.where(np.abs(z) <= 3.0, np.exp(-0.5 * z * z), 0.0)  # ±3σ support
        widths = np.gradient(src) if n_src > 1 else np.ones(1)  # each input band's share of the spectrum
        weights = response * np.abs(widths)[None, :]
        empty = weights.sum(axis=1) == 0
        if empty.any():  # a model band between two coarse input bands: take the nearest
            near = np.abs(tgt[empty, None] - src[None, :]).argmin(axis=1)
            weights[np.flatnonzero(empty), near] = 1.0
        weights /= weights.sum(axis=1, keepdims=True)
    return BandMapping(method, tuple(float(v) for v in src), tuple(float(v) for v in tgt), weights)


class BandMappedCube(CubeView):
    """A cube seen through a :class:`BandMapping`: regions are read from the source cube (only the bands that
    contribute) and returned with the model's bands (float32), so the rest of the pipeline sees a cube of the model's
    band count. With ``nodata``, a pixel holding it (or NaN, for ``nodata=nan``) in any contributing source band is
    nodata in every mapped band (integrating it would smear the fill value into the spectrum). Band selection
    (``identity`` / ``nearest``) keeps the source's values and dtype; integration gives float32.

    Duck-types :class:`~sschsr_deploy.io.cube.HSICube` for the readers of a scene (``shape``, ``dtype``, ``read``,
    ``source``); ``path``, ``format``, ``layout``, ``metadata`` … are the source's."""

    def __init__(self, cube: Any, mapping: BandMapping, nodata: float | None = None) -> None:
        if cube.bands != len(mapping.source_nm):
            raise InputValidationError(
                f"band mapping expects {len(mapping.source_nm)} input bands; the cube has {cube.bands}")
        self.cube = cube
        self.mapping = mapping
        self.nodata = nodata
        self._used = [int(i) for i in np.flatnonzero(mapping.weights.any(axis=0))]
        self._weights = mapping.weights[:, self._used].astype(np.float32)
        idx = mapping.source_indices  # band selection: exact values, the source's dtype
        self._pick = None if idx is None else [self._used.index(i) for i in idx]
        self.shape = (cube.shape[0], cube.shape[1], len(mapping.target_nm))
        self.dtype = np.dtype(cube.dtype) if self._pick is not None else np.dtype(np.float32)

    def read(self, rows: slice | None = None, cols: slice | None = None,
             bands: Sequence[int] | slice | None = None) -> np.ndarray:
        """A region (H x W x model bands), mapped from the source's contributing bands."""
        block = self.cube.read(rows, cols, self._used)
        if self._pick is not None:
            out = np.ascontiguousarray(block[:, :, self._pick])
        else:
            out = np.tensordot(block.astype(np.float32, copy=False), self._weights.T, axes=([-1], [0]))
        mask = nodata_mask(block, self.nodata)
        if mask is not None:
            out[mask] = self.nodata
        if bands is None:
            return out
        return out[:, :, bands] if isinstance(bands, slice) else out[:, :, [int(b) for b in bands]]

    def __getattr__(self, name: str) -> Any:  # path, format, layout, variable, lazy, source, metadata, close …
        if name == "cube":
            raise AttributeError(name)
        return getattr(self.cube, name)

    def __repr__(self) -> str:
        return f"BandMappedCube({self.mapping.method}, {self.cube!r} -> {self.bands} bands)"
