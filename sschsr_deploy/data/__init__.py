"""Data for demos and tests: seeded synthetic scenes (:mod:`.synthetic`)."""

from .synthetic import SyntheticScene, make_scene, render_rgb, spectral_response, wavelengths

__all__ = ["SyntheticScene", "make_scene", "render_rgb", "spectral_response", "wavelengths"]
