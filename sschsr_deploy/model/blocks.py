"""Small building blocks shared by several stages (the HSI-RefSR ``ConvBlock``)."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBlock(nn.Module):
    """Two 3×3 convs with LeakyReLU(0.01) plus a parallel 1×1 shortcut, summed with no activation after (spec §3.3).

    Attribute names (``block.0``, ``block.2``, ``conv11``) are the official checkpoint's.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.LeakyReLU(0.01),
        )
        self.conv11 = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + self.conv11(x)
