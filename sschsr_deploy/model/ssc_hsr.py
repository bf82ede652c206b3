"""SSC-HSR top level: align the HR RGB to the upsampled HSI, then fuse them into the HR cube (official
``FusionWarpNetHSI``, spec §1).

State-dict keys equal the official checkpoint's (``flownet``, ``warpnet``, ``hsi_encoder``, ``decoder``,
``rgb_extractor``, ``similar``), so official files load directly through :mod:`sschsr_deploy.checkpoint`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import InputValidationError
from .correspondence import PatchMatchCorrespondence
from .decoder import HSIDecoder
from .encoder import HSIEncoder
from .extractor import ContrastiveExtractorPair
from .presets import MIN_SIZE, SIZE_MULTIPLE, ModelConfig, get_preset
from .raft import RAFT, ContextBatchNorm
from .warp import warp_reference_exact, warp_reference_official
from .warpnet import WarpNet

BatchNormMode = Literal["running", "batch"]
INPUT_NAMES = ("hsi_sr", "hsi_rgb_sr", "ref_hr", "hsi_rgb_sr_flow", "ref_hr_flow")


class SSCHSR(nn.Module):
    """The SSC-HSR network. ``forward`` takes the five official inputs at HR size and returns B×bands×H×W.

    Batch-norm switch: the official test never calls ``eval()``, so RAFT's context-encoder BatchNorm normalises with
    the statistics of the current batch. ``batchnorm_mode="batch"`` reproduces that (paper numbers, golden ``train``
    fixtures) without updating running statistics; ``"running"`` (default) is ordinary ``eval()`` behaviour.
    """

    def __init__(self, config: ModelConfig | None = None, batchnorm_mode: BatchNormMode = "running") -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        self.flownet = RAFT(cfg.raft)
        self.warpnet = WarpNet(cfg.warpnet_dim)
        self.hsi_encoder = HSIEncoder(cfg.bands, cfg.feature_widths)
        self.decoder = HSIDecoder(cfg.decoder())
        self.rgb_extractor = ContrastiveExtractorPair(cfg.extractor_widths)
        self.similar = PatchMatchCorrespondence(cfg.feature_widths)
        self.validate_inputs = True
        self.batchnorm_mode = batchnorm_mode

    # ------------------------------------------------------------------ construction and weights
    @classmethod
    def from_preset(cls, name: str = "official", batchnorm_mode: BatchNormMode = "running", **overrides) -> SSCHSR:
        """Build a named preset (``official`` or ``tiny``) with random weights; override fields like ``bands=128``."""
        return cls(get_preset(name, **overrides), batchnorm_mode=batchnorm_mode)

    def load_official_state_dict(self, state_dict, strict: bool = True):
        """Load weights keyed as the official checkpoint (alias keys and ``module.`` prefixes accepted).

        Returns a report of missing / unexpected / mismatched keys; raises ``CheckpointError`` when ``strict``.
        """
        from ..checkpoint import load_into

        return load_into(self, state_dict, strict=strict)

    def num_parameters(self) -> int:
        """Unique parameters (the aliased RAFT norms counted once), as the manifest counts them."""
        return sum(p.numel() for p in self.parameters())

    @property
    def batchnorm_mode(self) -> BatchNormMode:
        return self._batchnorm_mode

    @batchnorm_mode.setter
    def batchnorm_mode(self, mode: BatchNormMode) -> None:
        if mode not in ("running", "batch"):
            raise ValueError(f"batchnorm_mode must be 'running' or 'batch', got {mode!r}")
        self._batchnorm_mode = mode
        for m in self.modules():
            if isinstance(m, ContextBatchNorm):
                m.use_batch_statistics = mode == "batch"

    # ------------------------------------------------------------------ forward
    def check_inputs(self, *inputs: Tensor) -> None:
        """Raise ``InputValidationError`` unless the five inputs satisfy the model's documented requirements."""
        if len(inputs) != 5:
            raise InputValidationError(f"SSC-HSR takes 5 inputs ({', '.join(INPUT_NAMES)}), got {len(inputs)}")
        expected_ch = (self.config.bands, 3, 3, 3, 3)
        first = inputs[0]
        for name, t, ch in zip(INPUT_NAMES, inputs, expected_ch, strict=True):
            if not isinstance(t, Tensor) or t.dim() != 4:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise InputValidationError(f"{name} must be a B×C×H×W tensor, got {shape}")
            if t.shape[1] != ch:
                what = "bands" if name == "hsi_sr" else "channels"
                raise InputValidationError(
                    f"{name} has {t.shape[1]} {what}, the model expects {ch}"
                    + (" (build the model with bands=… for other cubes)" if name == "hsi_sr" else "")
                )
            if t.shape[0] != first.shape[0] or t.shape[2:] != first.shape[2:]:
                raise InputValidationError(
                    f"{name} is {tuple(t.shape)} but hsi_sr is {tuple(first.shape)}: every input must have the same "
                    "batch size and HR height × width (upsample the LR cube by the scale factor first)"
                )
        h, w = first.shape[2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise InputValidationError(
                f"input is {h}×{w}; the model needs at least {MIN_SIZE}×{MIN_SIZE} HR pixels (RAFT's coarsest "
                "correlation level would be degenerate and the official code silently returns NaN flow)"
            )
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise InputValidationError(
                f"input is {h}×{w}; height and width must be multiples of {SIZE_MULTIPLE} (RAFT runs at 1/8 "
                "resolution without padding): pad or crop the HR inputs"
            )
        # one device sync for all five (a sync per input stalls a GPU stream five times per forward)
        finite = torch.stack([torch.isfinite(t).all().to(first.device) for t in inputs])
        if not bool(finite.all()):
            name = INPUT_NAMES[int((~finite).nonzero()[0, 0])]
            raise InputValidationError(f"{name} contains NaN or infinite values")

    def forward(
        self,
        hsi_sr: Tensor,
        hsi_rgb_sr: Tensor,
        ref_hr: Tensor,
        hsi_rgb_sr_flow: Tensor,
        ref_hr_flow: Tensor,
        return_all: bool = False,
        trace: dict | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """Super-resolve. Returns ``out`` (B×bands×H×W), or with ``return_all`` a dict with ``out``, ``ref_warpnet``,
        ``ref_warp``, ``flow`` and the patch-match results. ``trace`` (a dict) receives named intermediates."""
        if self.validate_inputs:
            self.check_inputs(hsi_sr, hsi_rgb_sr, ref_hr, hsi_rgb_sr_flow, ref_hr_flow)
        flow = self.flownet(hsi_rgb_sr_flow, ref_hr_flow, trace=trace)
        warp = warp_reference_official if self.config.official_warp_quirk else warp_reference_exact
        ref_warp = warp(ref_hr, flow)
        ref_warpnet = self.warpnet(hsi_rgb_sr, ref_hr, ref_warp)
        d1, d2 = self.rgb_extractor(hsi_rgb_sr, ref_warpnet)
        corr = self.similar(d1, d2, ref_warpnet)
        enc = self.hsi_encoder(hsi_sr)
        out = self.decoder(enc, corr, trace=trace) + enc[0]
        if trace is not None:
            trace.update({"extractor.D1": d1, "extractor.D2": d2, "match.index": corr.index})
            for lvl in ("relu3_1", "relu2_1", "relu1_1"):
                suffix = lvl.split("_")[0]
                trace[f"match.flow_{suffix}"] = corr.flows[lvl]
                trace[f"match.offset_{suffix}"] = corr.offsets[lvl]
                trace[f"match.sim_{suffix}"] = corr.similarity[lvl]
                trace[f"vgg.{lvl}"] = corr.ref_features[lvl]
            for i, e in enumerate(enc[1:], start=1):
                trace[f"encoder.E{i}"] = e
        if not return_all:
            return out
        return {
            "out": out, "ref_warpnet": ref_warpnet, "ref_warp": ref_warp, "flow": flow,
            "match_index": corr.index, "match_similarity": corr.similarity["relu3_1"],
        }
