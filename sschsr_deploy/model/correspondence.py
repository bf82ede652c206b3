"""Patch-matching correspondence: integer flows, per-tap initial DCN offsets and similarity maps at 3 scales (§3.6).

The arg-max search itself is the ``patch_match`` op; this module turns its result into the official outputs:
flow top-left anchored and zero-padded 2 rows bottom / 2 columns right, similarity centre-anchored and zero-padded by 1
all round, nearest ×2 / ×4 expansion (flow values scaled by 2 / 4), and 9 per-tap offsets = the flow map shifted down by
σ·i and right by σ·j with zero fill (σ = 1, 2, 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import patch_match
from .extractor import VGG19Features

LEVELS = ("relu3_1", "relu2_1", "relu1_1")  # 1/4, 1/2, full resolution
SCALES = (1, 2, 4)


@dataclass
class Correspondence:
    """Per level (keys of LEVELS): offsets (B,9,h,w,2), flows (B,h,w,2) in (x, y) order, similarity (B,1,h,w)."""

    offsets: dict[str, Tensor]
    flows: dict[str, Tensor]
    similarity: dict[str, Tensor]
    index: Tensor  # (B, h4−2, w4−2) arg-max reference patch index
    ref_features: dict[str, Tensor]  # VGG19 features of the refined reference


def index_to_flow(index: Tensor, h: int, w: int, patch_size: int = 3) -> Tensor:
    """Arg-max patch index → integer flow (B, h, w, 2) (x, y), top-left anchored, zero-padded bottom/right."""
    wp = w - patch_size + 1
    b, hp, _ = index.shape
    ys = torch.arange(hp, device=index.device).view(1, hp, 1)
    xs = torch.arange(wp, device=index.device).view(1, 1, wp)
    fx = torch.remainder(index, wp) - xs
    fy = torch.div(index, wp, rounding_mode="floor") - ys
    flow = torch.stack([fx, fy], dim=-1).to(torch.float32)
    return F.pad(flow, (0, 0, 0, patch_size - 1, 0, patch_size - 1))


def tap_offsets(flow: Tensor, sigma: int) -> Tensor:
    """(B, h, w, 2) flow → (B, 9, h, w, 2): tap k = 3i + j reads the flow at (y − σi, x − σj), zero outside."""
    b, h, w, _ = flow.shape
    taps = []
    for i in range(3):
        for j in range(3):
            shifted = F.pad(flow, (0, 0, sigma * j, 0, sigma * i, 0))[:, :h, :w, :]
            taps.append(shifted)
    return torch.stack(taps, dim=1)


class PatchMatchCorrespondence(nn.Module):
    """Official ``FlowSimCorrespondenceGenerationArch`` (patch size 3, stride 1, VGG19 relu1_1/2_1/3_1)."""

    def __init__(self, vgg_widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        self.vgg = VGG19Features(vgg_widths)

    def forward(self, feat_input: Tensor, feat_ref: Tensor, ref_img: Tensor) -> Correspondence:
        _, _, h, w = feat_input.shape
        index, sim = patch_match(feat_input, feat_ref, 3)
        flow3 = index_to_flow(index, h, w).to(feat_input.dtype)
        sim3 = F.pad(sim.unsqueeze(1), (1, 1, 1, 1))
        flows, sims, offsets = {}, {}, {}
        for level, s in zip(LEVELS, SCALES, strict=True):
            flows[level] = flow3 if s == 1 else s * expand_flow(flow3, s)
            sims[level] = sim3 if s == 1 else sim3.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
            offsets[level] = tap_offsets(flows[level], s)
        return Correspondence(offsets, flows, sims, index, self.vgg(ref_img))


def expand_flow(flow: Tensor, factor: int) -> Tensor:
    """Nearest ×factor of a (B, h, w, 2) flow map (values unchanged)."""
    return flow.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
