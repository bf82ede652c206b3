"""Decoder: coarse-to-fine deformable aggregation of the reference features fused by spectral attention (§3.8).

At each scale (1/4, 1/2, 1/1): warp the VGG reference feature by the patch-match flow, predict offset features from
[HSI fusion state, warped ref, unwarped ref], aggregate the reference with a modulated deformable conv whose offsets
start at the patch-match offsets, then fuse with the HSI stream through a spectral-attention stage. The finer level's
offset branch sees the coarser level's fusion result (the paper's "iterative" aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops import modulated_deform_conv2d
from ..ops._backend import reference_forced
from ..precision import float32_module, reduced_precision_module
from .attention import SpectralAttentionStage
from .correspondence import Correspondence
from .warp import flow_warp_features

DECODER_SLOPE = 0.1
RESIDUAL_OFFSET_BOUND = 10.0


@reduced_precision_module
class OffsetMaskConv(nn.Conv2d):
    """The deformable aggregation's offset / mask predictor (a 3×3 convolution): it runs in the reduced precision
    inside the float32 island. Its output only enters through ``10·tanh`` (a residual bounded to ±10 px, added in
    float32 to the patch-match offsets, which keep their full precision) and a sigmoid, and at full resolution it was
    the largest single convolution of a bf16 forward in float32 (official preset, 256²: 78-87 ms of ~2.1 s)."""


@float32_module  # offsets of tens of pixels keep their sub-pixel precision
class DeformableAggregation(nn.Module):
    """Official ``DCN_sep_pre_multi_offset_flow_similarity``: 3×3 modulated deformable conv with 8 offset groups.

    offsets = patch-match tap offsets (interleaved (dy, dx), tiled over the groups) + 10·tanh(predicted residual);
    mask = sigmoid(predicted logit × similarity). Keys: ``weight``, ``bias``, ``conv_offset_mask.*``.
    """

    def __init__(self, channels: int, offset_groups: int = 8, kernel_size: int = 3) -> None:
        super().__init__()
        self.offset_groups = offset_groups
        self.kernel_size = kernel_size
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset_mask = OffsetMaskConv(channels, 3 * offset_groups * taps, 3, padding=1)
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        # The official constructor zero-initialises the offset/mask predictor.
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_from_logits(self, t: Tensor, pre_offset: Tensor, similarity: Tensor) -> tuple[Tensor, Tensor]:
        """(offset (B, 2·G·9, h, w) in (dy, dx) pairs, mask (B, G·9, h, w)) from the predictor's output ``t``;
        differentiable."""
        n = self.offset_groups * self.kernel_size**2
        b, taps, h, w, _ = pre_offset.shape
        base = pre_offset.flip(-1).permute(0, 1, 4, 2, 3).reshape(b, 2 * taps, h, w)  # (y, x) per tap
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling() \
                or torch.compiler.is_exporting() or reference_forced("modulated_deform_conv2d"):
            offset = base.repeat(1, self.offset_groups, 1, 1) + RESIDUAL_OFFSET_BOUND * torch.tanh(t[:, : 2 * n])
        else:  # inference: the same sums without a copy of the base offsets per group (NCHW, as the DCN reads)
            t = t.contiguous()
            offset = torch.tanh(t[:, : 2 * n]).view(b, self.offset_groups, 2 * taps, h, w)
            offset = offset.mul_(RESIDUAL_OFFSET_BOUND).add_(base.unsqueeze(1)).view(b, 2 * n, h, w)
        return offset, torch.sigmoid(t[:, 2 * n :] * similarity)

    def forward(self, feat: Tensor, offset_feat: Tensor, pre_offset: Tensor, similarity: Tensor,
                trace: dict | None = None, tag: str = "") -> Tensor:
        """``trace`` (keyword; a dict, which the float32 island's casts leave alone) receives the predictor's
        output ``decoder.T<tag>`` and the offsets the convolution used ``decoder.offset<tag>`` (the training's offset
        loss reads them there)."""
        t = self.conv_offset_mask(offset_feat)
        offset, mask = self.offsets_from_logits(t, pre_offset, similarity)
        if trace is not None:
            trace[f"decoder.T{tag}"] = t
            trace[f"decoder.offset{tag}"] = offset
        pad = self.kernel_size // 2
        return modulated_deform_conv2d(
            feat, offset, mask, self.weight, self.bias, 1, pad, 1, 1, self.offset_groups
        )


@dataclass(frozen=True)
class DecoderConfig:
    """Widths per level (full, 1/2, 1/4), attention blocks and heads per stage (res1 at 1/4 … res3 at full)."""

    widths: tuple[int, int, int] = (64, 128, 256)
    bands: int = 31
    blocks: tuple[int, int, int] = (4, 3, 2)
    heads: tuple[int, int, int] = (8, 4, 1)
    offset_groups: int = 8


class HSIDecoder(nn.Module):
    """Official ``HSIDecoder``; attribute names follow the checkpoint."""

    def __init__(self, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DecoderConfig()
        w1, w2, w3 = cfg.widths
        g = cfg.offset_groups
        self.up_small_offset_conv1 = nn.Conv2d(3 * w3, w3, 3, padding=1)
        self.up_small_offset_conv2 = nn.Conv2d(w3, w3, 3, padding=1)
        self.up_small_dyn_agg = DeformableAggregation(w3, g)
        self.res1 = SpectralAttentionStage(w3, w3, w2, cfg.blocks[0], cfg.heads[0], upsample=True)
        self.medium_fusion = nn.Conv2d(2 * w2, w2, 1)
        self.up_medium_offset_conv1 = nn.Conv2d(3 * w2, w2, 3, padding=1)
        self.up_medium_offset_conv2 = nn.Conv2d(w2, w2, 3, padding=1)
        self.up_medium_dyn_agg = DeformableAggregation(w2, g)
        self.res2 = SpectralAttentionStage(2 * w2, w2, w1, cfg.blocks[1], cfg.heads[1], upsample=True)
        self.large_fusion = nn.Conv2d(2 * w1, w1, 1)
        self.up_large_offset_conv1 = nn.Conv2d(3 * w1, w1, 3, padding=1)
        self.up_large_offset_conv2 = nn.Conv2d(w1, w1, 3, padding=1)
        self.up_large_dyn_agg = DeformableAggregation(w1, g)
        self.res3 = SpectralAttentionStage(2 * w1, w1, cfg.bands, cfg.blocks[2], cfg.heads[2], upsample=False)
        self.lrelu = nn.LeakyReLU(DECODER_SLOPE)

    def _level(
        self, state: Tensor, ref: Tensor, corr: Correspondence, level: str,
        conv1: nn.Conv2d, conv2: nn.Conv2d, dcn: DeformableAggregation, trace: dict | None, tag: str,
    ) -> Tensor:
        warped = flow_warp_features(ref, corr.flows[level])
        o = self.lrelu(conv2(self.lrelu(conv1(torch.cat([state, warped, ref], dim=1)))))
        a = self.lrelu(dcn(ref, o, corr.offsets[level], corr.similarity[level], trace=trace, tag=tag))
        if trace is not None:
            trace[f"decoder.O{tag}"] = o
            trace[f"decoder.A{tag}"] = a
        return a

    def forward(self, enc: list[Tensor], corr: Correspondence, trace: dict | None = None) -> Tensor:
        """enc = [E0, E1, E2, E3]; returns X1 (bands × H × W), the residual added to E0 by the caller."""
        e0, e1, e2, e3 = enc
        r = corr.ref_features
        a3 = self._level(e3, r["relu3_1"], corr, "relu3_1", self.up_small_offset_conv1, self.up_small_offset_conv2,
                         self.up_small_dyn_agg, trace, "3")
        x3 = self.res1(e3, a3)
        m2 = self.medium_fusion(torch.cat([e2, x3], dim=1))
        a2 = self._level(m2, r["relu2_1"], corr, "relu2_1", self.up_medium_offset_conv1, self.up_medium_offset_conv2,
                         self.up_medium_dyn_agg, trace, "2")
        x2 = self.res2(e2, a2, x3)
        m1 = self.large_fusion(torch.cat([e1, x2], dim=1))
        a1 = self._level(m1, r["relu1_1"], corr, "relu1_1", self.up_large_offset_conv1, self.up_large_offset_conv2,
                         self.up_large_dyn_agg, trace, "1")
        x1 = self.res3(e1, a1, x2)
        if trace is not None:
            trace.update({"decoder.X3": x3, "decoder.M2": m2, "decoder.X2": x2, "decoder.M1": m1, "decoder.X1": x1})
        return x1


__all__ = ["DecoderConfig", "DeformableAggregation", "HSIDecoder", "OffsetMaskConv"]
