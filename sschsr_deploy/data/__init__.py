"""Data for demos, tests and training: seeded synthetic scenes (:mod:`.synthetic`) from measured spectra
(:mod:`.spectra`)."""

from .spectra import SpectralLibrary, spectral_library
from .synthetic import (
    Misalignment,
    SyntheticScene,
    ground_truth_flow,
    make_scene,
    render_rgb,
    spectral_response,
    wavelengths,
)

__all__ = [
    "Misalignment", "SpectralLibrary", "SyntheticScene", "ground_truth_flow", "make_scene", "render_rgb",
    "spectral_library", "spectral_response", "wavelengths",
]
