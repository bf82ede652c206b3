"""VGG-trunk feature extractors: the two contrastive correspondence extractors and the frozen VGG19 (§3.4, §3.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGTrunk(nn.Module):
    """conv1_1…conv3_1 of VGG16/19 (identical up to conv3_1), 3×3 convs with bias and two 2×2 max-pools."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1_1 = nn.Conv2d(3, w1, 3, padding=1)
        self.conv1_2 = nn.Conv2d(w1, w1, 3, padding=1)
        self.conv2_1 = nn.Conv2d(w1, w2, 3, padding=1)
        self.conv2_2 = nn.Conv2d(w2, w2, 3, padding=1)
        self.conv3_1 = nn.Conv2d(w2, w3, 3, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Returns relu1_1, relu2_1, relu3_1 and conv3_1 (pre-activation)."""
        r11 = F.relu(self.conv1_1(x))
        x = F.max_pool2d(F.relu(self.conv1_2(r11)), 2, 2)
        r21 = F.relu(self.conv2_1(x))
        x = F.max_pool2d(F.relu(self.conv2_2(r21)), 2, 2)
        c31 = self.conv3_1(x)
        return {"relu1_1": r11, "relu2_1": r21, "conv3_1": c31, "relu3_1": F.relu(c31)}


class _ImageNetNormalized(nn.Module):
    """Holds the ImageNet mean/std buffers the official trunks store (keys ``mean``, ``std``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ContrastiveExtractor(_ImageNetNormalized):
    """One correspondence extractor (official ``ContrasExtractorLayer``): conv3_1 features, before the ReLU."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        self.model = VGGTrunk(widths)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalize(x))["conv3_1"]


class ContrastiveExtractorPair(nn.Module):
    """Two extractors with separate weights (official ``ContrasExtractorSep``): 1 = HSI pseudo-RGB, 2 = reference."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        self.feature_extraction_image1 = ContrastiveExtractor(widths)
        self.feature_extraction_image2 = ContrastiveExtractor(widths)

    def forward(self, img1: Tensor, img2: Tensor) -> tuple[Tensor, Tensor]:
        return self.feature_extraction_image1(img1), self.feature_extraction_image2(img2)


class VGG19Features(_ImageNetNormalized):
    """Frozen VGG19 relu1_1 / relu2_1 / relu3_1 of the refined reference: the features the decoder aggregates."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        self.vgg_net = VGGTrunk(widths)
        for p in self.vgg_net.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.vgg_net(self.normalize(x))
        return {"relu1_1": f["relu1_1"], "relu2_1": f["relu2_1"], "relu3_1": f["relu3_1"]}
