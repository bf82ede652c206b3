"""The training data: generated scenes turned into model inputs (:class:`Sample`), and the stage-2/3 sample streams.

Every sample is a :func:`sschsr_deploy.data.make_scene` prepared by the deployment preprocessing
(:func:`sschsr_deploy.preprocess.prepare_inputs`, the call the runtime makes), with the target on the LR cube's min-max
scale. The streams are pure functions of (config, step), so a resumed run sees the same samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ..data.synthetic import Misalignment, SyntheticScene, ground_truth_flow, make_scene
from ..preprocess import bicubic_upsample
from ..scene import prepare_inputs
from .config import TrainConfig, parse_scene_sizes


@dataclass
class Sample:
    """One training/validation pair: the five model inputs (1 x C x H x W), the target cube and the flow."""

    inputs: tuple[Tensor, ...]
    target: Tensor
    flow: Tensor
    bicubic: Tensor
    ref_aligned: Tensor


def make_sample(seed: int, size: int, scale: int, split: str = "train", misalignment: float = 1.0,
                camera_jitter: float = 0.0) -> Sample:
    """A generated scene as the runtime would feed it, with the target on the LR cube's min-max scale.

    ``misalignment`` scales every bound of the generator's default :class:`Misalignment` (0 = an aligned photo);
    ``camera_jitter`` renders the photo through a random camera near the drawn one (see ``make_scene``).
    """
    return sample_from_scene(_scene_for(seed, size, scale, split, misalignment, camera_jitter))


def _scene_for(seed: int, size: int, scale: int, split: str = "train", misalignment: float = 1.0,
               camera_jitter: float = 0.0) -> SyntheticScene:
    rng = np.random.default_rng(seed)
    bounds = Misalignment(**{k: v * misalignment for k, v in asdict(Misalignment()).items()})
    return make_scene(seed=seed, size=(size, size), scale=scale, split=split, materials=int(rng.integers(4, 9)),
                      misalignment=bounds, camera_jitter=camera_jitter)


def sample_from_scene(scene: SyntheticScene, window: tuple[int, int, int] | None = None) -> Sample:
    """The sample of a ``window`` = (top, left, size) of a scene in HR pixels (multiples of the scale; whole scene when
    omitted), prepared as if the window were the user's whole image: its own inputs and its own min-max scale. The
    photo is cut at the same place, so near the window's edges the displaced content it shows lies partly outside."""
    scale = scene.scale
    hr_win = lr_win = (slice(None), slice(None))
    if window is not None:
        top, left, size = window
        if top % scale or left % scale or size % scale:
            raise ValueError(f"window {window} must be on the LR grid (multiples of {scale})")
        hr_win = (slice(top, top + size), slice(left, left + size))
        lr_win = (slice(top // scale, (top + size) // scale), slice(left // scale, (left + size) // scale))
    lr_hsi, hr_hsi = scene.lr_hsi[lr_win], scene.hr_hsi[hr_win]
    inputs = prepare_inputs(np.ascontiguousarray(lr_hsi), np.ascontiguousarray(scene.ref_rgb[hr_win]), scale)
    lo, hi = float(lr_hsi.min()), float(lr_hsi.max())
    target = (hr_hsi.astype(np.float64) - lo) / (hi - lo)
    bic = bicubic_upsample((lr_hsi.astype(np.float64) - lo) / (hi - lo), scale)

    def chw(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]

    return Sample(inputs.to_torch(), chw(target), chw(ground_truth_flow(scene)[hr_win]), chw(bic),
                  chw(scene.ref_rgb_aligned[hr_win]))


class StageTwoSamples:
    """The stage-2 data stream: a pure function of (config, step), so a resumed run sees the same samples.

    Every batch slot walks through its own sequence of scenes whose sizes cycle through ``cfg.scene_sizes``; a scene of
    size S is cut into (S/crop)² non-overlapping crop² tiles, used on consecutive steps (the scene is generated once
    and cached per slot). Why: the generator's layout scales with the scene while its fine detail does not, so tiles
    of larger scenes carry the coarser structure of the large images the runtime super-resolves (in this CPU budget
    that made large images worse, not better: docs/training.md; the default stays whole crop² scenes). The slots start
    at different points of the cycle, which spreads the cost of generating the large scenes over the steps. A scene's
    photo gets the misalignment of the curriculum at the step of its first tile. With ``scene_sizes`` equal to the
    crop every sample is a whole scene with seed ``seed*10_000_000 + step*batch + i`` (the shipped recipe).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.sizes = parse_scene_sizes(cfg)
        self.tiles = [(s // cfg.crop) ** 2 for s in self.sizes]
        self.cycle = sum(self.tiles)
        self._cache: dict[int, tuple[int, SyntheticScene]] = {}

    def plan(self, step: int, slot: int) -> tuple[int, int, int, int]:
        """(scene seed, scene size, tile index, the step of the scene's first tile) of ``slot`` at ``step``."""
        cfg = self.cfg
        offset = slot * self.cycle // cfg.batch
        cycle, pos = divmod(step + offset, self.cycle)
        j = 0
        while pos >= self.tiles[j]:
            pos -= self.tiles[j]
            j += 1
        seed = cfg.seed * 10_000_000 + (cycle * cfg.batch + slot) * len(self.sizes) + j
        return seed, self.sizes[j], pos, max(step - pos, 0)

    def sample(self, step: int, slot: int) -> Sample:
        cfg = self.cfg
        seed, size, tile, first = self.plan(step, slot)
        cached = self._cache.get(slot)
        if cached is None or cached[0] != seed:
            cached = (seed, _scene_for(seed, size, cfg.scale, misalignment=misalignment_at(first, cfg),
                                       camera_jitter=cfg.camera_jitter))
            self._cache[slot] = cached
        grid = size // cfg.crop
        top, left = (tile // grid) * cfg.crop, (tile % grid) * cfg.crop
        return sample_from_scene(cached[1], (top, left, cfg.crop))

    def batch(self, step: int) -> list[Sample]:
        return [self.sample(step, i) for i in range(self.cfg.batch)]


class NetworkSamples:
    """The data of the network stages, by step: :class:`StageTwoSamples` for steps below ``cfg.steps``, then whole
    ``final_crop``² scenes for stage 3 (the same stream with that crop; its seeds ``seed*10_000_000 + step*batch + i``
    continue after stage 2's, so with the default whole-scene stage 2 no scene is seen twice)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.stage_two = StageTwoSamples(cfg)
        self.final = (StageTwoSamples(replace(cfg, crop=cfg.final_crop, scene_sizes=str(cfg.final_crop)))
                      if cfg.final_steps else None)

    @property
    def total_steps(self) -> int:
        return self.cfg.steps + self.cfg.final_steps

    def batch(self, step: int) -> list[Sample]:
        if step < self.cfg.steps or self.final is None:
            return self.stage_two.batch(step)
        return self.final.batch(step)


def misalignment_at(step: int, cfg: TrainConfig) -> float:
    """Scale of the generator's default misalignment for the photos of stage-2 step ``step`` (the curriculum, up to
    ``cfg.misalignment``)."""
    if cfg.misalignment_ramp <= 0:
        return cfg.misalignment
    return cfg.misalignment * min(1.0, step / (cfg.misalignment_ramp * cfg.steps))


def _collate(samples: list[Sample]) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """Batch samples: (inputs, target cube, true flow, aligned photo)."""
    inputs = tuple(torch.cat(ts) for ts in zip(*(s.inputs for s in samples), strict=True))
    return (inputs, torch.cat([s.target for s in samples]), torch.cat([s.flow for s in samples]),
            torch.cat([s.ref_aligned for s in samples]))
