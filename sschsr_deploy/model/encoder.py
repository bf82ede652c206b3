"""HSI encoder: HSI features at full, 1/2 and 1/4 resolution (official ``HSIEncoder``, spec §3.7)."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvBlock


class HSIEncoder(nn.Module):
    """E1 = pool1(CB1(E0)), E2 = pool2(CB2(E1)), E3 = pool3(CB3(E2)); the "pools" are 5×5 convs (pool1 stride 1)."""

    def __init__(self, bands: int = 31, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.ConvBlock1 = ConvBlock(bands, w1)
        self.pool1 = nn.Conv2d(w1, w1, 5, stride=1, padding=2)
        self.ConvBlock2 = ConvBlock(w1, w2)
        self.pool2 = nn.Conv2d(w2, w2, 5, stride=2, padding=2)
        self.ConvBlock3 = ConvBlock(w2, w3)
        self.pool3 = nn.Conv2d(w3, w3, 5, stride=2, padding=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Returns [E0, E1, E2, E3]."""
        e1 = self.pool1(self.ConvBlock1(x))
        e2 = self.pool2(self.ConvBlock2(e1))
        e3 = self.pool3(self.ConvBlock3(e2))
        return [x, e1, e2, e3]
