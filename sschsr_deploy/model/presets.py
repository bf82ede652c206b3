"""Named model configurations: ``official`` (the paper's network, 27,450,743 parameters) and ``tiny`` (tests, demo)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .decoder import DecoderConfig
from .raft import RAFTConfig

MIN_SIZE = 128  # RAFT's coarsest correlation level needs ≥ 2 rows/cols at 1/64 resolution (spec §7.2)
SIZE_MULTIPLE = 8  # RAFT runs at 1/8 without padding


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network. ``bands`` and ``scale`` are parameters (31 / 4 by default)."""

    bands: int = 31
    scale: int = 4  # the dataset scale the weights were trained for; the network itself runs at HR size
    raft: RAFTConfig = field(default_factory=RAFTConfig)
    warpnet_dim: int = 16
    extractor_widths: tuple[int, int, int] = (64, 128, 256)  # the two contrastive correspondence extractors
    feature_widths: tuple[int, int, int] = (64, 128, 256)  # VGG19 ref features = HSI encoder = decoder widths
    decoder_blocks: tuple[int, int, int] = (4, 3, 2)
    decoder_heads: tuple[int, int, int] = (8, 4, 1)
    offset_groups: int = 8
    rgb_bands: tuple[int, int, int] = (15, 8, 3)  # pseudo-RGB band indices used by the preprocessing
    official_warp_quirk: bool = True  # reference warp normalised by W−1 with align_corners=False (spec §3.2)

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(self.feature_widths, self.bands, self.decoder_blocks, self.decoder_heads,
                             self.offset_groups)


PRESETS: dict[str, ModelConfig] = {
    "official": ModelConfig(),
    "tiny": ModelConfig(
        raft=RAFTConfig(
            encoder_dims=(16, 24, 32), feature_dim=64, hidden_dim=32, context_dim=32, corr_levels=4,
            corr_radius=3, corr_dims=(64, 48), flow_dims=(32, 16), head_dim=64, mask_dim=64, iters=4,
        ),
        warpnet_dim=8,
        extractor_widths=(16, 32, 64),
        feature_widths=(16, 32, 48),
        decoder_blocks=(1, 1, 1),
        decoder_heads=(2, 1, 1),
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """Config of a named preset, with top-level fields overridden (e.g. ``bands=128``)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None
    return replace(cfg, **overrides) if overrides else cfg
