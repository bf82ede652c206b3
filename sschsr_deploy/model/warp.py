"""Backward warps by a dense flow: the reference warp (with its official quirk) and the feature warp of the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import float32_island


def _pixel_grid(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Absolute sample positions x + u, y + v for a (B, 2, H, W) flow in (x, y) order."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    return xs + flow[:, 0], ys + flow[:, 1]


@float32_island  # sampling grids and bilinear weights in float32 (autocast, fp16 export)
def warp_reference_official(img: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``img`` by ``flow`` (B, 2, H, W, (x, y), HR pixels) exactly as the official code does.

    Quirk reproduced on purpose (spec §3.2): the grid is normalised by (W−1), (H−1) but sampled with
    align_corners=False and border padding, so the pixel read is (x+u)·W/(W−1) − 0.5. Even zero flow stretches the
    image slightly; the trained warpnet and decoder expect exactly this.
    """
    _, _, h, w = img.shape
    gx, gy = _pixel_grid(flow)
    grid = torch.stack((2.0 * gx / (w - 1) - 1.0, 2.0 * gy / (h - 1) - 1.0), dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


@float32_island  # sampling grids and bilinear weights in float32 (autocast, fp16 export)
def warp_reference_exact(img: Tensor, flow: Tensor) -> Tensor:
    """Backward warp without the official quirk: reads pixel (x+u, y+v), border padding. For non-official models."""
    _, _, h, w = img.shape
    gx, gy = _pixel_grid(flow)
    grid = torch.stack((2.0 * gx / (w - 1) - 1.0, 2.0 * gy / (h - 1) - 1.0), dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


@float32_island  # sampling grids and bilinear weights in float32 (autocast, fp16 export)
def flow_warp_features(feat: Tensor, flow_bhw2: Tensor) -> Tensor:
    """Decoder feature warp (spec §3.8.1): bilinear, zero padding, align_corners=True, flow (B, h, w, 2) in (x, y)."""
    _, _, h, w = feat.shape
    flow = flow_bhw2.permute(0, 3, 1, 2)
    gx, gy = _pixel_grid(flow)
    grid = torch.stack((2.0 * gx / max(w - 1, 1) - 1.0, 2.0 * gy / max(h - 1, 1) - 1.0), dim=-1)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
