"""Measured spectra for the scene generator: reflectances, illuminants and camera sensitivities from colour-science.

Everything comes from the datasets that ship inside the ``colour-science`` wheel (no download):

- reflectances: the 24 ColorChecker patches twice (BabelColor average and N. Ohta measurements) and the 190 training
  patches of AMPAS rawtoaces (``read_training_data_rawtoaces_v1``): 238 measured surface spectra;
- illuminants: CIE daylight (D50/D55/D65/D75), A (tungsten) and fluorescent FL2/FL7/FL11;
- cameras: Nikon D5100 and Sigma SD Merrill (NPL measurements) and Canon EOS 5D Mark II (rawtoaces).

The library is split so that a held-out evaluation never sees what training saw: every fifth reflectance, a separate
illuminant set and a separate camera (Sigma) are ``"test"``; the rest is ``"train"``; ``"all"`` is the union.
Spectra are resampled to the requested band centres by linear interpolation (all sources are sampled at 5 or 10 nm
over at least 380-730 nm, so 400-700 nm needs no extrapolation; the Sigma curves stop at 680 nm and are taken as zero
beyond, which is what the camera's IR-cut filter does).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sschsr_deploy.errors import InputValidationError

__all__ = ["CAMERAS", "ILLUMINANTS", "SpectralLibrary", "Split", "spectral_library"]

Split = Literal["train", "test", "all"]

CAMERAS: dict[str, tuple[str, ...]] = {
    "train": ("Nikon D5100", "Canon EOS 5D Mark II"),
    "test": ("Sigma SD Merrill",),
}
ILLUMINANTS: dict[str, tuple[str, ...]] = {
    "train": ("D50", "D65", "A", "FL2", "FL11"),
    "test": ("D55", "D75", "FL7"),
}
_TEST_EVERY = 5  # reflectance i is held out when i % 5 == 4


@dataclass(frozen=True, eq=False)
class SpectralLibrary:
    """Measured spectra at ``wavelengths`` (nm). Reflectances in [0, 1]; illuminants scaled to a maximum of 1;
    camera sensitivities 3 x bands (R, G, B rows) scaled to a maximum of 1."""

    wavelengths: np.ndarray
    reflectances: np.ndarray  # N x bands
    reflectance_names: tuple[str, ...]
    illuminants: dict[str, np.ndarray]
    cameras: dict[str, np.ndarray]


def _members(table: dict[str, tuple[str, ...]], split: Split) -> tuple[str, ...]:
    if split == "all":
        return table["train"] + table["test"]
    return table[split]


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict, dict]:
    """(name, wavelengths, values) of every source spectrum at its native sampling."""
    try:
        import colour
        from colour.characterisation import (
            MSDS_CAMERA_SENSITIVITIES,
            SDS_COLOURCHECKERS,
            read_training_data_rawtoaces_v1,
        )
        from colour.io import read_sds_from_csv_file
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputValidationError(
            "the scene generator needs colour-science (pip install colour-science); it provides the measured spectra"
        ) from exc

    refl: list[tuple[str, np.ndarray, np.ndarray]] = []
    for checker in ("BabelColor Average", "ColorChecker N Ohta"):
        for name, sd in SDS_COLOURCHECKERS[checker].items():
            refl.append((f"{checker}/{name}", np.asarray(sd.wavelengths), np.asarray(sd.values)))
    patches = read_training_data_rawtoaces_v1()
    for i, name in enumerate(patches.labels):
        refl.append((f"rawtoaces/{name}", np.asarray(patches.wavelengths), np.asarray(patches.values[:, i])))

    illum = {}
    for name in _members(ILLUMINANTS, "all"):
        sd = colour.SDS_ILLUMINANTS[name]
        illum[name] = (np.asarray(sd.wavelengths), np.asarray(sd.values))

    cams = {}
    for label, key in (("Nikon D5100", "Nikon 5100 (NPL)"), ("Sigma SD Merrill", "Sigma SDMerill (NPL)")):
        msds = MSDS_CAMERA_SENSITIVITIES[key]
        cams[label] = (np.asarray(msds.wavelengths), np.asarray(msds.values).T)
    root = os.path.join(os.path.dirname(colour.__file__), "characterisation", "datasets", "rawtoaces")
    canon = read_sds_from_csv_file(os.path.join(root, "CANON_EOS_5DMark_II_RGB_Sensitivities.csv"))
    cams["Canon EOS 5D Mark II"] = (
        np.asarray(canon["R"].wavelengths),
        np.stack([np.asarray(canon[c].values) for c in ("R", "G", "B")]),
    )
    return refl, illum, cams


def _resample(wl_src: np.ndarray, values: np.ndarray, wl: np.ndarray, what: str, zero_outside: bool = False
              ) -> np.ndarray:
    if zero_outside:  # camera sensitivities: an IR-cut filter makes them ~0 past their measured range
        return np.interp(wl, wl_src, values, left=0.0, right=0.0)
    if wl[0] < wl_src[0] - 1e-9 or wl[-1] > wl_src[-1] + 1e-9:
        raise InputValidationError(
            f"{what} is measured over {wl_src[0]:g}-{wl_src[-1]:g} nm; cannot cover {wl[0]:g}-{wl[-1]:g} nm"
        )
    return np.interp(wl, wl_src, values)


def spectral_library(wavelengths: np.ndarray, split: Split = "all") -> SpectralLibrary:
    """The measured spectra of ``split`` resampled to ``wavelengths`` (nm, increasing)."""
    if split not in ("train", "test", "all"):
        raise InputValidationError(f"split must be 'train', 'test' or 'all'; got {split!r}")
    wl = np.asarray(wavelengths, dtype=np.float64)
    return _library(tuple(wl.tolist()), split)


@functools.lru_cache(maxsize=16)
def _library(wl_key: tuple[float, ...], split: Split) -> SpectralLibrary:
    wl = np.asarray(wl_key)
    refl_src, illum_src, cam_src = _raw()
    held_out = [i % _TEST_EVERY == _TEST_EVERY - 1 for i in range(len(refl_src))]
    keep = [i for i, h in enumerate(held_out) if split == "all" or h == (split == "test")]
    refl = np.stack([_resample(refl_src[i][1], refl_src[i][2], wl, refl_src[i][0]) for i in keep])
    names = tuple(refl_src[i][0] for i in keep)
    illum = {}
    for name in _members(ILLUMINANTS, split):
        v = _resample(*illum_src[name], wl, f"illuminant {name}")
        illum[name] = v / v.max()
    cams = {}
    for name in _members(CAMERAS, split):
        wl_src, rgb = cam_src[name]
        v = np.stack([_resample(wl_src, rgb[c], wl, f"camera {name}", True) for c in range(3)])
        cams[name] = np.clip(v, 0.0, None) / v.max()
    for arr in (refl, *illum.values(), *cams.values()):
        arr.setflags(write=False)
    return SpectralLibrary(wl, np.clip(refl, 0.0, 1.0), names, illum, cams)
