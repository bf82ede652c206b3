"""Warp refinement: a 2-level U-Net that adds a residual correction to the flow-warped reference (spec §3.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import ConvBlock


class WarpRefineUNet(nn.Module):
    """The official ``UNet(dim)``; layer names (ConvBlock1…5, pool1/2, upv4/5, conv6) are the checkpoint's."""

    def __init__(self, dim: int = 16, in_ch: int = 9, out_ch: int = 3) -> None:
        super().__init__()
        self.ConvBlock1 = ConvBlock(in_ch, dim)
        self.pool1 = nn.Conv2d(dim, dim, 4, stride=2, padding=1)
        self.ConvBlock2 = ConvBlock(dim, 2 * dim)
        self.pool2 = nn.Conv2d(2 * dim, 2 * dim, 4, stride=2, padding=1)
        self.ConvBlock3 = ConvBlock(2 * dim, 4 * dim)
        self.upv4 = nn.ConvTranspose2d(4 * dim, 2 * dim, 2, stride=2)
        self.ConvBlock4 = ConvBlock(4 * dim, 2 * dim)
        self.upv5 = nn.ConvTranspose2d(2 * dim, dim, 2, stride=2)
        self.ConvBlock5 = ConvBlock(2 * dim, dim)
        self.conv6 = nn.Conv2d(dim, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.ConvBlock1(x)
        e2 = self.ConvBlock2(self.pool1(e1))
        e3 = self.ConvBlock3(self.pool2(e2))
        d2 = self.ConvBlock4(torch.cat([self.upv4(e3), e2], dim=1))
        d1 = self.ConvBlock5(torch.cat([self.upv5(d2), e1], dim=1))
        return self.conv6(d1)


class WarpNet(nn.Module):
    """ref_warpnet = UNet(concat(hsi_rgb_sr, ref_hr, ref_warp)) + ref_warp. Not clamped."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.block = WarpRefineUNet(dim)

    def forward(self, hsi_rgb: Tensor, ref: Tensor, ref_warp: Tensor) -> Tensor:
        return self.block(torch.cat([hsi_rgb, ref, ref_warp], dim=1)) + ref_warp
