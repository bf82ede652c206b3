"""Flow-supervised pairs for pretraining RAFT: the cube's pseudo-RGB and a photo displaced by a known field.

The official RAFT is pretrained on optical-flow data sets; the ``tiny`` preset's RAFT starts from random weights. To
learn the cross-modal flow it must produce in the network (the HSI pseudo-RGB to the photo, the inputs the deployment
preprocessing gives it) it needs many labelled pairs, far more than generating a scene per pair allows on a CPU. So a
pool of generated scenes with *aligned* photos is built once, and every pair displaces a photo by a fresh random field
(a translation plus a smooth non-rigid part) with ``grid_sample``: unlimited pairs at the cost of one resampling, with
the flow known exactly by construction.

Convention (that of :func:`sschsr_deploy.data.ground_truth_flow`): the displaced photo at ``q`` shows the aligned photo
at ``q - D(q)``, so what the cube shows at ``p`` the displaced photo shows at ``p + D(p)`` (to first order in the
field's gradient, as for the generator's own fields): ``D`` is the flow RAFT must output, (x, y) in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputValidationError
from ..scene import prepare_inputs
from .spectra import Split
from .synthetic import Misalignment, make_scene

__all__ = ["FlowPairPool"]


@dataclass(frozen=True)
class _Entry:
    hsi_flow: Tensor  # 3 x S x S, 0..255 (the network's hsi_rgb_sr_flow input)
    photo_flow: Tensor  # 3 x S x S, 0..255 (ref_hr_flow of the aligned photo)


class FlowPairPool:
    """``scenes`` aligned scenes of ``scene_size``; :meth:`batch` draws crops of ``crop`` with random displacements.

    ``max_displacement`` bounds the peak |D| per axis (pixels): 70 % of it goes to the translation, 30 % to the smooth
    field, and each pair draws a strength in [0, 1] so that small displacements are as common as large ones.
    Deterministic for a given ``seed`` and call sequence.
    """

    def __init__(self, scenes: int = 48, scene_size: int = 192, crop: int = 128, scale: int = 4,
                 max_displacement: float = 10.0, split: Split = "train", seed: int = 0) -> None:
        if crop > scene_size or crop % 8 or scenes < 1 or max_displacement < 0:
            raise InputValidationError(
                f"need scenes >= 1, crop a multiple of 8 no larger than scene_size and max_displacement >= 0; got "
                f"scenes={scenes}, crop={crop}, scene_size={scene_size}, max_displacement={max_displacement}")
        self.crop, self.size, self.max_displacement = crop, scene_size, float(max_displacement)
        self.generator = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(torch.arange(scene_size, dtype=torch.float32),
                                torch.arange(scene_size, dtype=torch.float32), indexing="ij")
        self._grid_yx = (ys, xs)  # pixel coordinates of a scene, for displacing photos
        self.entries = []
        for i in range(scenes):
            scene_seed = seed * 1_000_003 + 7_000_000 + i
            rng = np.random.default_rng(scene_seed)
            scene = make_scene(seed=scene_seed, size=(scene_size, scene_size), scale=scale, split=split,
                               materials=int(rng.integers(4, 9)), misalignment=Misalignment.none())
            inputs = prepare_inputs(scene.lr_hsi, scene.ref_rgb, scale).to_torch()
            self.entries.append(_Entry(inputs[3][0], inputs[4][0]))

    def _uniform(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)

    def displacement(self, batch: int) -> Tensor:
        """B x 2 x S x S random fields (x, y): translation + smooth part, each within its share of the bound."""
        s, m = self.size, self.max_displacement
        strength = self._uniform(batch, 1, 1, 1)
        translation = (self._uniform(batch, 2, 1, 1) * 2 - 1) * 0.7 * m
        coarse = torch.randn(batch, 2, s // 16 + 2, s // 16 + 2, generator=self.generator)
        smooth = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=True)
        smooth = smooth / smooth.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return strength * (translation + 0.3 * m * self._uniform(batch, 1, 1, 1) * smooth)

    def batch(self, batch: int, same_modality: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """(hsi_rgb_sr_flow, displaced ref_hr_flow, flow): B x 3 x crop², B x 3 x crop², B x 2 x crop² (x, y).

        With probability ``same_modality`` a pair's first image is the aligned photo instead of the cube's pseudo-RGB:
        the easy task (same sensor) from which the flow machinery learns before it must bridge the modalities.
        """
        s, c = self.size, self.crop
        pick = torch.randint(len(self.entries), (batch,), generator=self.generator).tolist()
        corners = torch.randint(0, s - c + 1, (batch, 2), generator=self.generator).tolist()
        disp = self.displacement(batch)
        photo_first = (self._uniform(batch) < same_modality).tolist()
        photos = torch.stack([self.entries[i].photo_flow for i in pick])
        yy, xx = self._grid_yx
        # displace the whole photo, then crop: the crop's borders show real content, not padding
        grid = torch.stack([2 * (xx - disp[:, 0]) / (s - 1) - 1, 2 * (yy - disp[:, 1]) / (s - 1) - 1], dim=-1)
        moved = F.grid_sample(photos, grid, mode="bilinear", padding_mode="border", align_corners=True)
        hsi, ref, flow = [], [], []
        for k, (i, (y0, x0)) in enumerate(zip(pick, corners, strict=True)):
            first = self.entries[i].photo_flow if photo_first[k] else self.entries[i].hsi_flow
            hsi.append(first[:, y0:y0 + c, x0:x0 + c])
            ref.append(moved[k, :, y0:y0 + c, x0:x0 + c])
            flow.append(disp[k, :, y0:y0 + c, x0:x0 + c])
        return torch.stack(hsi), torch.stack(ref), torch.stack(flow)
