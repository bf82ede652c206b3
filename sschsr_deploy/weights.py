"""One way to get a model: a shipped name, a ``.safetensors`` file or an official ``.pth``, with its metadata.

What a set of weights is for — preset, scale, band count, pseudo-RGB bands, batch-norm mode — lives in
:class:`ModelMeta`, the one schema that is written into safetensors files and exported models (ONNX
``metadata_props``, engine sidecars) and parsed back from them. The loader takes those fields from the file; what the
caller passes is checked against it and a mismatch is an error, never silently one or the other:

- ``load_model("tiny-x4")`` / ``"tiny-x8"``: the weights shipped in the package (:mod:`.pretrained`);
- ``load_model("weights.safetensors")`` (or ``load_model("tiny", "weights.safetensors")``): the file's metadata;
- ``load_model("official", "model-best.pth", scale=4)``: official checkpoints carry no metadata, so the fields come
  from the arguments (preset defaults), and the band count is checked against the tensors' shapes;
- ``load_model("tiny", random_weights=True)``: an untrained network, only when asked for, with a warning. Naming a
  preset alone is refused: it used to return an untrained network without a word.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, InputValidationError
from .limits import MAX_BANDS, MAX_SCALE, check_scale
from .pretrained import SHIPPED

__all__ = [
    "SHIPPED_NAMES", "ModelMeta", "load_model", "resolve_shipped", "shipped_name",
]

log = logging.getLogger(__name__)

def shipped_name(preset: str = "tiny", scale: int | None = None) -> str:
    """The name of ``preset``'s shipped weights at ``scale`` (default: the preset's own scale), e.g. ``"tiny-x4"``;
    whether such weights ship is checked where the name is loaded (:func:`resolve_shipped`)."""
    if scale is None:
        from .model.presets import get_preset

        scale = get_preset(preset).scale
    return f"{preset}-x{check_scale(scale)}"


#: Shipped model names -> (preset, scale), from the files listed in :data:`sschsr_deploy.pretrained.SHIPPED`.
SHIPPED_NAMES: dict[str, tuple[str, int]] = {shipped_name(p, s): (p, s) for p, s in SHIPPED}
BATCHNORM_MODES = ("running", "batch")


@dataclass(frozen=True)
class ModelMeta:
    """What weights are for. Written as strings (``to_metadata``) and parsed with checks (``from_metadata``)."""

    preset: str
    scale: int
    bands: int
    rgb_bands: tuple[int, int, int]
    batchnorm_mode: str = "running"

    KEYS = ("preset", "scale", "bands", "rgb_bands", "batchnorm_mode")

    @classmethod
    def of(cls, model: nn.Module, preset: str) -> ModelMeta:
        """The fields of a built model (its ``config`` and batch-norm mode)."""
        cfg = model.config
        return cls(preset, int(cfg.scale), int(cfg.bands), tuple(int(b) for b in cfg.rgb_bands),
                   str(getattr(model, "batchnorm_mode", "running")))

    def to_metadata(self) -> dict[str, str]:
        return {"preset": self.preset, "scale": str(self.scale), "bands": str(self.bands),
                "rgb_bands": ",".join(str(b) for b in self.rgb_bands), "batchnorm_mode": self.batchnorm_mode}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str, defaults: ModelMeta | None = None) -> ModelMeta:
        """Parse the schema's keys from ``meta``; a key that is missing comes from ``defaults`` (refused without)."""
        values: dict[str, Any] = {}
        for key in cls.KEYS:
            value = cls.read(meta, key, source)
            if value is None:
                if defaults is None:
                    raise InputValidationError(f"{source} has no {key!r} in its metadata")
                value = getattr(defaults, key)
            values[key] = value
        meta = cls(**values)
        _check_rgb_bands(meta, source)
        return meta

    @classmethod
    def read(cls, meta: Mapping[str, str], key: str, source: str) -> Any:
        """One field of the schema from ``meta``, parsed and checked; ``None`` when absent (an older file)."""
        if key not in cls.KEYS:
            raise KeyError(key)
        raw = meta.get(key)
        if raw is None:
            return None
        try:
            return _parse(key, str(raw))
        except ValueError:
            raise InputValidationError(f"{source}: metadata {key}={raw!r} is not valid") from None

    def check(self, source: str, **requested: Any) -> None:
        """Refuse any requested field (not ``None``) that differs from this metadata, naming every difference."""
        wrong = []
        for key, want in requested.items():
            if want is None:
                continue
            have = getattr(self, key)
            if (tuple(int(b) for b in want) if key == "rgb_bands" else want) != have:
                wrong.append(f"{key} {want!r} was requested but it is {have!r}")
        if wrong:
            raise InputValidationError(f"{source}: " + "; ".join(wrong) + " (omit the argument to use the file's "
                                       "value, or pick weights made for what you asked)")


def _parse(key: str, raw: str) -> Any:
    if key in ("scale", "bands"):
        value = int(raw)
        if value < 1 or value > (MAX_SCALE if key == "scale" else MAX_BANDS):
            raise ValueError(raw)
        return value
    if key == "rgb_bands":
        bands = tuple(int(b) for b in raw.split(","))
        if len(bands) != 3:
            raise ValueError(raw)
        return bands
    if key == "batchnorm_mode" and raw not in BATCHNORM_MODES:
        raise ValueError(raw)
    if key == "preset" and not raw:
        raise ValueError(raw)
    return raw


def _check_rgb_bands(meta: ModelMeta, source: str) -> None:
    if not all(0 <= b < meta.bands for b in meta.rgb_bands):
        raise InputValidationError(f"{source}: pseudo-RGB bands {meta.rgb_bands} do not exist in a {meta.bands}-band "
                                   "cube")


def resolve_shipped(name: str) -> Path:
    """The file of a shipped model name (``"tiny-x4"``); refuses other names with the list of shipped ones."""
    from .pretrained import shipped_weights

    if name not in SHIPPED_NAMES:
        raise InputValidationError(f"no shipped weights named {name!r} (shipped: {', '.join(SHIPPED_NAMES)})")
    preset, scale = SHIPPED_NAMES[name]
    return shipped_weights(preset, scale)


def _preset_meta(preset: str, batchnorm_mode: str | None) -> ModelMeta:
    from .model.presets import get_preset

    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise InputValidationError(str(exc)) from None
    return ModelMeta(preset, cfg.scale, cfg.bands, tuple(cfg.rgb_bands), batchnorm_mode or "running")


def _build(meta: ModelMeta, seed: int | None) -> nn.Module:
    from .model import SSCHSR
    from .model.presets import get_preset

    try:
        cfg = get_preset(meta.preset, scale=meta.scale, bands=meta.bands, rgb_bands=meta.rgb_bands)
    except ValueError as exc:
        raise InputValidationError(str(exc)) from None
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return SSCHSR(cfg, batchnorm_mode=meta.batchnorm_mode)  # type: ignore[arg-type]


_BAND_KEY = "hsi_encoder.ConvBlock1.conv11.weight"  # the HSI encoder's first 1x1 conv takes one channel a band


def _checkpoint_bands(sd: Mapping[str, torch.Tensor]) -> int | None:
    """The band count a checkpoint's tensors were made for (``None`` for a partial file without the encoder)."""
    t = sd.get(_BAND_KEY)
    return int(t.shape[1]) if t is not None and t.dim() == 4 else None


def load_model(
    source: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    scale: int | None = None,
    bands: int | None = None,
    rgb_bands: Sequence[int] | None = None,
    batchnorm_mode: str | None = None,
    random_weights: bool = False,
    seed: int | None = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode ``SSCHSR`` and what to record about it: ``(model, info)``.

    ``source``: a shipped name (``"tiny-x4"``), a weights file, or a preset name with ``weights`` (a file) or
    ``random_weights=True``. ``scale`` / ``bands`` / ``rgb_bands`` / ``batchnorm_mode``: for an official ``.pth``
    they set the fields (preset defaults otherwise); for a shipped name or a ``.safetensors`` file they are checked
    against the file's metadata. ``info`` holds the :class:`ModelMeta` fields, ``weights`` (file name or
    ``"random"``), ``weights_sha256`` (of the tensors), ``weights_file_sha256`` and ``random_weights``.
    """
    from .checkpoint import check_finite, load_into, load_official_checkpoint, load_safetensors, state_dict_sha256
    from .io.atomic import file_sha256

    if scale is not None:
        scale = check_scale(scale)
    requested = {"scale": scale, "bands": bands, "rgb_bands": rgb_bands}
    name = os.fspath(source)
    preset: str | None = None
    if name in SHIPPED_NAMES:
        path: Path | None = resolve_shipped(name)
        preset = SHIPPED_NAMES[name][0]
    elif weights is not None:
        preset, path = name, Path(weights)
    elif Path(name).suffix.lower() in (".safetensors", ".pth", ".pt", ".tar", ".ckpt"):
        path = Path(name)
    else:
        path = None
        preset = name
    if path is not None and random_weights:
        raise InputValidationError("random_weights=True contradicts loading weights from a file")

    if path is None:
        if not random_weights:
            shipped = [n for n, (p, _) in SHIPPED_NAMES.items() if p == preset]
            raise InputValidationError(
                f"{name!r} names a preset, not weights: load a shipped model ({', '.join(shipped) or 'none ships'}), "
                "a weights file, or ask for an untrained network with random_weights=True (--random-weights)"
            )
        meta = _meta_from_args(_preset_meta(preset, batchnorm_mode), requested)
        model = _build(meta, seed)
        log.warning("RANDOM WEIGHTS: preset %r is untrained (seed %s); its output is NOT a super-resolved image",
                    preset, seed)
        info = {**_info(meta), "weights": "random", "random_weights": True, "weights_seed": seed,
                "weights_sha256": state_dict_sha256(model)}
        return model.eval(), info

    if not path.is_file():
        raise InputValidationError(f"weights file not found: {path}")
    source_label = f"weights {path.name}"
    wavelengths = None
    if path.suffix.lower() == ".safetensors":
        sd, file_meta = load_safetensors(path)
        defaults = _preset_meta(preset or file_meta.get("preset", ""), batchnorm_mode) \
            if (preset or file_meta.get("preset")) else None
        meta = ModelMeta.from_metadata(file_meta, source_label, defaults)
        meta.check(source_label, preset=preset, batchnorm_mode=batchnorm_mode, **requested)
        have = _checkpoint_bands(sd)
        if have is not None and have != meta.bands:  # before building a model of the metadata's size
            raise CheckpointError(f"{source_label}: its metadata says {meta.bands} bands but its tensors are for "
                                  f"{have}; the file is damaged or was edited")
        wavelengths = _wavelengths(file_meta.get("wavelengths"), meta.bands, source_label)
    else:
        sd = load_official_checkpoint(path)
        meta = _meta_from_args(_preset_meta(preset or "official", batchnorm_mode), requested)
        have = _checkpoint_bands(sd)
        if have is not None and have != meta.bands:
            raise InputValidationError(
                f"{source_label} holds a {have}-band model, but {meta.bands} bands were requested (pass bands={have})"
            )
    check_finite(sd, source_label)  # NaN / inf weights would make every output NaN
    model = _build(meta, None)
    load_into(model, sd, strict=True)
    # weights_sha256 names the tensors (like ONNX metadata and engine sidecars), so the same weights carry the same
    # name whatever file format they came in; the file's own hash is kept beside it
    info = {**_info(meta), "weights": path.name, "random_weights": False,
            "weights_sha256": state_dict_sha256(model), "weights_file_sha256": file_sha256(path)}
    if wavelengths is not None:
        info["wavelengths"] = list(wavelengths)
    return model.eval(), info


def _wavelengths(raw: str | None, bands: int, source: str) -> tuple[float, ...] | None:
    """The model's band centres (nm) from the optional metadata key ``wavelengths`` (comma-separated): what cubes
    measured at other wavelengths are mapped onto (:mod:`sschsr_deploy.bands`); one per band, increasing."""
    if raw is None:
        return None
    try:
        values = tuple(float(v) for v in str(raw).split(","))
    except ValueError:
        raise InputValidationError(f"{source}: metadata wavelengths={raw[:60]!r} is not a list of numbers") from None
    if len(values) != bands or not all(math.isfinite(v) for v in values) or \
            any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise InputValidationError(f"{source}: metadata wavelengths must be {bands} increasing finite band centres "
                                   f"(nm); got {len(values)}")
    return values


def _meta_from_args(defaults: ModelMeta, requested: Mapping[str, Any]) -> ModelMeta:
    try:
        fields = {k: (tuple(int(b) for b in v) if k == "rgb_bands" else int(v)) for k, v in requested.items()
                  if v is not None}
    except (TypeError, ValueError, OverflowError):
        raise InputValidationError(f"bands / rgb_bands must be integers; got {dict(requested)!r}") from None
    if "rgb_bands" in fields and len(fields["rgb_bands"]) != 3:
        raise InputValidationError(f"rgb_bands must be three band indices; got {fields['rgb_bands']}")
    if "bands" in fields and not 1 <= fields["bands"] <= MAX_BANDS:
        raise InputValidationError(f"bands must be an integer from 1 to {MAX_BANDS}; got {fields['bands']}")
    meta = replace(defaults, **fields)
    if meta.bands != defaults.bands and "rgb_bands" not in fields and max(meta.rgb_bands) >= meta.bands:
        raise InputValidationError(f"pseudo-RGB bands {meta.rgb_bands} do not exist in a {meta.bands}-band cube: "
                                   "pass rgb_bands")
    _check_rgb_bands(meta, "the requested model")
    return meta


def _info(meta: ModelMeta) -> dict[str, Any]:
    return {"preset": meta.preset, "scale": meta.scale, "bands": meta.bands, "rgb_bands": list(meta.rgb_bands),
            "batchnorm_mode": meta.batchnorm_mode}
