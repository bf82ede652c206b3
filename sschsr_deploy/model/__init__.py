"""The SSC-HSR network, one module per stage of the paper (see ``ssc_hsr.py`` for the top level)."""

from .presets import PRESETS, ModelConfig, get_preset
from .ssc_hsr import INPUT_NAMES, SSCHSR

__all__ = ["INPUT_NAMES", "PRESETS", "SSCHSR", "ModelConfig", "get_preset"]
