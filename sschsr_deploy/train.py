"""Train a preset (the shipped ``tiny`` weights) on generated scenes, on the CPU, reproducibly.

Data: every sample is a fresh :func:`sschsr_deploy.data.make_scene` of the ``train`` split (training spectra,
illuminants and cameras), turned into model inputs by the deployment preprocessing
(:func:`sschsr_deploy.preprocess.prepare_inputs`, the same call the runtime makes), so the network learns exactly the
input statistics it will see. The target is the HR cube on the LR cube's min-max scale, which is what the runtime's
``output_scale="input"`` undoes.

Up to four stages, the first three as the official model is built (its RAFT is pretrained on optical-flow data and
its correspondence extractors with a contrastive loss, then the network is trained with them fixed).

(0) Optional (off by default, see below): ``raft_steps`` steps of RAFT alone on
:class:`sschsr_deploy.data.flow_pairs.FlowPairPool` pairs: the cube's pseudo-RGB and its scene's photo displaced by a
random field whose flow is known exactly, RAFT's sequence L1 loss. A curriculum starts from photo-to-photo pairs (same
sensor) and fades them out over the first ``raft_same_modality`` of the steps. (1) ``match_steps`` steps of the two
contrastive extractors alone: InfoNCE between the HSI pseudo-RGB's features and the reference's features moved onto
the same grid by the generator's ground-truth flow, so that the arg-max patch matching finds true correspondences (it
gives them no gradient of its own). (2) ``steps`` steps of the rest of the network with RAFT and the extractors
frozen: L1 on the cube + ``warp_weight`` x SmoothL1 between the warp-refine output and the photo seen from the cube's
viewpoint (the official auxiliary loss; the generator provides that photo) [+ ``offset_weight`` x L1 between the
deformable offsets and the true flow, off by default]. All other parameters train, including the VGG trunk that the
official model freezes (ImageNet-pretrained there, random here). The decoder's last convolution starts at 0.1 x its
initial weights so that training starts near the bicubic baseline (the output is a residual on the upsampled cube).
With ``raft_steps=0`` (default, the recipe of the shipped
weights) RAFT is fixed at exactly zero flow (its update head zeroed) and the photo reaches the decoder unwarped;
stage 2 then runs :class:`ZeroFlow` in RAFT's place (the same zeros, without RAFT's 128² minimum), so its default
crop is 64² (see "Smaller crops" below);
``flow_weight > 0`` trains RAFT in stage 2 on an L1 to the true flow instead. Stage 2 follows a misalignment
curriculum (``misalignment_ramp``, default 0.5): the photos' misalignment grows linearly from none to the generator's
default over the first half of the steps, so the network first learns to use the photo, then to cope with its
displacement. (3) ``final_steps`` steps of the same on larger whole scenes (``final_crop``², default 500 x 128²), the
learning rate restarted (see "Final stage" below).

What limits the result (measured on held-out scenes, x4): a global linear map from the photo's high frequencies to
the cube's lifts bicubic by +7 to +21 dB when the photo is aligned, by +0.2 dB with the generator's misalignment (a few
pixels), so alignment decides how much the photo can give. The tiny RAFT from scratch learns the flow of one axis at a
time in this budget: in 1500 stage-0 steps (13 min) the held-out end-point error falls from 3.55 px (zero flow) to
2.54 px, the vertical component from 2.67 to 0.86 px while the horizontal one stays at the zero-flow error (2.2 px);
without the curriculum it was the horizontal one (1000 steps). The same winner-takes-one-axis pattern shows on
same-sensor pairs (300 steps, lr 1e-3 or 4e-4, with or without the official detach of the lookup coordinates), while
either axis alone is learned in about 200 steps (one scene). With ``raft_loss="mse"`` both axes are learned together:
1500 steps (12 min) bring the per-axis error on train-split generator pairs from 1.96 / 2.19 px (zero flow, x / y) to
0.60 / 0.68 px and on held-out ones (other camera and spectra) from 2.17 / 2.67 to 1.38 / 1.03 px (EPE 3.55 -> 2.36);
a whole-network run on top of it (``raft_steps=1500, raft_loss="mse"``, 800 steps, no curriculum) validated below the
zero-flow recipe at the same step and was stopped at step 300 (25.50 dB vs 25.77; 25.85 with the L1-trained RAFT).
The contrastive patch matching is not more accurate than zero flow at this budget. Without an aligned photo in
training the network learns to ignore the photo (a mismatched photo costs it 0.06 dB); trained on aligned photos it
gains +0.4 dB more after 150 steps than on misaligned ones. A full run with stage 0 (``raft_steps=1500, steps=700``;
69 min on 2 shared cores) leans on the photo more (a mismatched photo costs it 0.28 dB instead of 0.05) but gains less
over bicubic on 12 held-out scenes (+1.41 dB vs +1.69 dB for the recipe then shipped; validation 26.56 vs 26.93 dB,
bicubic 24.54), so the default stays ``raft_steps=0``.

The curriculum (measured on 12 held-out scenes, 8 x 128² + 4 x 256², as gains over bicubic with the scene's own photo
/ the photo without misalignment / another scene's photo): the previous recipe (800 steps, no curriculum) gives
+1.69 / +1.74 / +1.64 dB, i.e. it ignores the photo; the curriculum run (1200 steps, 55 min) gives +1.81 / +1.99 /
+1.57. On the way (4 of the 128² scenes) it used the photo from the start: after 150 steps (misalignment at 0.25 of
the default) +0.17 / +0.90 / -0.02, after 350 (0.58) +0.73 / +1.10 / +0.62, after 600 (full) +1.24 / +1.45 / +1.12.
Its validation PSNR on the three 128² crops is lower (26.79 vs 26.93 dB) while the quality table's three 384² scenes
gain +1.80 dB instead of +1.74 (the weights shipped until the camera jitter below).

Camera jitter (``camera_jitter``, default 1): the two training cameras are Bayer sensors with well separated curves,
the held-out one (Sigma SD Merrill, a layered sensor) has broad, overlapping ones. Trained on the measured cameras
alone, the contrastive patch matching finds the true displacement (within one cell at its 1/4 resolution, i.e. 4 HR
pixels) for 0.90 of the patches of training-split scenes but only 0.50 of held-out ones, fewer than zero flow (0.68),
with gross outliers (mean error 5.7 cells; 8 scenes, 1500 stage-1 steps; 0.44 after the 300 steps then used): it had
learned the training cameras' colours. With every training photo rendered through a random camera near a measured one
(:func:`sschsr_deploy.data.synthetic.jitter_response`: curves shifted by up to 30 nm, up to 0.6 crosstalk) the
held-out share is 0.68 after 250 steps, 0.78 after 500 and 0.79 after 750 (one 750-step run; mean error 1.55 cells);
the shipped run's 600 steps give 0.81 on its three validation scenes (zero flow 0.61; ``matching`` in the card). The
network trained on top (1150 steps, 57.5 min in all; the shipped x4 weights; after 600 steps +1.36 / +1.83 / +1.31 on
the 4 scenes above, where the curriculum run had +1.24 / +1.45 / +1.12) gains +1.93 dB over bicubic on the 12 held-out
scenes (was +1.81) and validates at 26.92 dB (was 26.79); on the quality table's first three 384² scenes +2.46 dB
(was +1.80), on its twelve +2.03 (was +1.70; whole image). On the 12 scenes the photo hardly moves the result
(another scene's photo gives +1.92, the photo without misalignment +2.09); on the twelve 384² scenes a mismatched
photo costs 0.10 dB. Better pre-offsets alone do not teach the decoder to take
the photo's detail across a few pixels of misalignment in this budget. Supervising the deformable offsets with the
true flow on top of the same stage 1 (``offset_weight=0.05``, 20% slower per step) does not either: at step 600 the
4 scenes give +1.36 / +1.68 / +1.11 dB (the shipped run's checkpoint: +1.36 / +1.83 / +1.31), i.e. a mismatched photo
costs more but the aligned one gains less, and it validates below the shipped run at every check from step 400 to
600 (26.21 vs 26.38 dB at 600), so it stays off.

Batch 2 x 2300 steps (the same 4600 stage-2 samples in the same time, 0.73 steps/s, twice the updates; stage 1
reused, 58.7 min in all) validates above the shipped batch-4 run at equal samples (+0.03 to +0.47 dB until the
misalignment reaches the default, 27.17 vs 26.92 dB at the end) and gains more on the 12 held-out scenes (+2.11 /
+2.18 / +2.09 vs +1.93 / +2.09 / +1.92; 128² scenes +1.98 vs +1.74, 256² +2.37 vs +2.33), but less on the quality
table's first three 384² scenes: +2.05 dB whole image (+1.04 / +1.76 / +3.35 per scene vs +1.29 / +1.99 / +4.10),
vs +2.46 (``benchmarks/results/quality_candidate_batch2.json``), so it was not shipped then. Those three scenes were
a poor sample: on the quality table's twelve scenes (seeds 2_000_000 + i, whole image) it gains +1.94 dB vs +2.03,
on twelve other 384² scenes (seeds 2_000_100 + i) +1.43 vs +1.36, i.e. a tie on 24 large scenes (+1.69 each) and
+0.18 dB on the 12 small ones. The shipped weights stay (a tie is no reason to change them); the quality table now
averages twelve scenes and reports the paired gain over bicubic with its standard error.

Scene sizes (``scene_sizes``, :class:`StageTwoSamples`): the generator's layout scales with the scene (smooth
material fields of sigma size/10, shapes of size/16 to size/3) while stripes, checkerboards and per-pixel detail do
not, so whole 128² training scenes have finer structure than 384² images. Training on 128² tiles of larger scenes
(``scene_sizes="128,128,256,384"``: 2/15 of the samples whole 128² scenes, 4/15 tiles of 256², 9/15 of 384²; stage 1
reused) is worse, not better, on large images: at step 600 it gains +0.53 dB on the twelve other 384² scenes where the
shipped run's step-600 checkpoint gains +1.09 (+1.19 vs +1.90 on the quality table's first three; validation 25.26
vs 26.38 dB), so it was stopped there and the default stays whole crop² scenes. A likely reason: a slot keeps a large
scene for up to nine steps, so the run sees 3.7x fewer distinct scenes (spectra, illuminants, cameras), and tiles of
large scenes hold fewer edges per sample. Rank candidates on 384² scenes (``benchmarks/quality.py --weights``), not
on the 128² validation.

What solved alignment would be worth at this budget (``misalignment=0``: stage 2 on aligned photos throughout, stage
1 reused, stopped at step 600 and compared with the shipped run's step-600 checkpoint, same schedule; the quality
table's twelve 384² scenes, whole image, gain over bicubic with the scene's own photo / the photo without
misalignment / another scene's photo): trained on aligned photos +0.92 / +2.21 / +0.47 dB, the shipped recipe
+1.64 / +1.69 / +1.43. So a network that only ever sees aligned photos does use them (+1.74 dB over a mismatched
one), but after 600 CPU steps an aligned photo adds +0.52 dB over the shipped recipe, far below what the aligned
photo holds (a linear map: +7 to +21 dB) and not enough for +3 dB; even perfect alignment would need more training
than this budget gives.

Smaller crops (the recipe since the v7 weights). The network needs 128² (``MIN_SIZE``; below it RAFT's coarsest
correlation level is degenerate and its flow NaN, which training, skipping the model's input checks, did not notice
until the crop was refused: :func:`check_model_sizes`; a 96² crop run once trained on the corrupted photo that way).
But RAFT fixed at zero flow needs no computing: stage 2 runs :class:`ZeroFlow` in its place (bit-identical output,
``tests/test_train.py``), which takes any crop, so stage-2 crops may go down to ``MIN_CROP_WITHOUT_RAFT`` (64²;
stage 1 and validation run the real RAFT and keep their own sizes, ``match_crop`` and ``val_size``, 128). A 64² step
(batch 4) costs 0.43 s against 1.63 s at 128² on this CPU (both with ZeroFlow and the data), so a run makes 3.8x the
updates on as many distinct scenes per hour; per pixel it costs the same (``benchmarks/bench_train_step.py``: the
64² step 3.9x cheaper than the 128² step with RAFT run, ZeroFlow alone 1.13x at 128²; the full-resolution decoder is
~75% of the forward, RAFT's forward ~50 ms of a 1.4 s step). Measured at equal wall time (10.6 min of stage 2, stage
1 of the shipped run reused): 1450 steps of 64² crops validate at 27.50 dB, above the whole 57-min shipped run
(26.92), and gain +2.11 dB on the quality table's twelve 384² scenes (whole image; the v6 weights: +2.02). The
v7 run (shipped until stage 3 came; 6000 steps of 64² crops, stage 1 included, 43.3 min on this CPU) validates at
28.46 dB (v6: 26.92) and gains +2.67 ± 0.44 dB on those twelve scenes (v6: +2.02), +2.74 with the photo without
misalignment, +2.43 with another scene's photo: it uses the photo more than v6 did (a mismatched photo costs 0.24 dB
instead of 0.10).
Its validation is still creeping up at the end (28.36 dB at step 3800, 28.46 at 6000). At x8 (not retrained yet: the
shipped x8 weights are v6's recipe) a 10.6-min pilot of 64² crops (1450 steps, the x8 stage 1 reused) gains +1.46 dB
on the quality table's twelve scenes at x8 where the whole 57-min x8 run gains +1.49, and leans on the photo more
(another scene's photo: +0.99 vs +1.16), so a full 64² run at x8 is the next x8 candidate. Two cautions from a
second x4 pilot (the same 1450 steps, stage 1 taken from the v7 run instead of v6's, 0.817 vs 0.811 of the
validation patches matched): it gains +1.87 dB instead of +2.11, so short pilots differ by ~0.25 dB on the stage-1
weights alone; and an exponential moving average of its weights (decay 0.995, the usual SR trick) gains +1.84, no
better, at this length (not in the recipe).

Final stage (``final_steps``, the recipe since the v8 weights): after stage 2, ``final_steps`` more steps on whole
``final_crop``² scenes (default 500 x 128², :class:`NetworkSamples`; the seeds continue stage 2's, the misalignment
is the full default), the learning rate restarted (warm-up to ``final_lr`` = 3e-4, cosine to ``min_lr``), Adam's
state kept. Why: 64² scenes give the most updates per hour, but their 1/4-resolution level is 16² cells, little
context for the patch matching and the deformable aggregation to find a photo displaced by a few pixels, and the
large images the runtime sees have coarser structure. Measured as fine-tunes of the v7 run's final checkpoint (the
quality table's twelve 384² scenes, whole image, gain over bicubic with the scene's own photo / another scene's
photo; v7: +2.67 / +2.43 dB): 1500 more 64² steps (lr restarted at 3e-4) +2.69 / +2.47, i.e. more of the same gives
nothing; 375 steps of 128² scenes (the same pixels) +3.12 / +2.61; 500 steps of 128² +3.19 / +2.63 (higher on every
one of the twelve scenes than v7, +0.09 to +1.27 dB); 125 steps of 256² (the same pixels) +3.03 / +2.60. The larger
crops make the network use the photo more (a mismatched photo costs 0.56 dB instead of 0.24). A 128² step costs
~3.4x a 64² one, so stage 3 adds ~14 min to stage 2's 41 on this CPU. At x8 (where a 128² scene's LR cube is 16²),
fine-tunes of the shipped x8 weights (v6 recipe, 128² crops; +1.49 dB on the twelve scenes at x8, fresh Adam state):
500 more steps of 128² +1.53, 125 steps of 256² +1.69 (a mismatched photo +1.12 / +1.37), so the x8 candidate is
64² stage 2 + a 256² stage 3 (not run yet).

Gradients come from the plain-PyTorch reference ops (the op dispatch picks them whenever autograd is needed; the
deformable convolution takes its ``grid_sample`` formulation there, whose backward is 5x faster at the full-resolution
decoder level than the gather reference's).
Validation runs on held-out (``test`` split) scenes. Checkpoints are resumable; the result is a safetensors file, a
JSON card and a PNG of the curves, all written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.flow_pairs import FlowPairPool
from .data.synthetic import Misalignment, SyntheticScene, ground_truth_flow, make_scene
from .io.atomic import atomic_path, atomic_write_json
from .model.correspondence import index_to_flow
from .model.presets import MIN_SIZE, SIZE_MULTIPLE
from .model.warp import warp_reference_exact
from .ops import patch_match
from .preprocess import bicubic_upsample, prepare_inputs

log = logging.getLogger(__name__)

__all__ = ["NetworkSamples", "StageTwoSamples", "TrainConfig", "make_sample", "misalignment_at", "sample_from_scene",
           "train", "validate"]

VALIDATION_SEED = 1_000_000  # validation scenes: test split, seeds from here (the quality table uses other seeds)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in the card)."""

    preset: str = "tiny"
    scale: int = 4
    raft_steps: int = 0  # stage 0 (optional): RAFT alone on displaced-photo pairs; 0: RAFT fixed at zero flow
    raft_batch: int = 8
    raft_lr: float = 1e-3
    raft_pool: int = 48  # generated scenes the stage-0 pairs are cut from
    raft_max_displacement: float = 10.0  # pixels per axis
    raft_same_modality: float = 0.4  # fraction of stage 0 over which photo-to-photo pairs fade out (curriculum)
    raft_loss: str = "l1"  # stage-0 sequence loss: "l1" (RAFT's) or "mse" (learns both axes together, see doc)
    match_steps: int = 600  # stage 1: the correspondence extractors alone, contrastive loss on the true flow
    match_batch: int = 4
    match_lr: float = 1e-3
    match_temperature: float = 0.07
    match_crop: int = 128  # stage 1 scene size (stage 2's ``crop`` may differ: stage 1 is a small part of the time)
    steps: int = 6000  # stage 2: the whole network
    batch: int = 4
    crop: int = 64  # below RAFT's 128²: stage 2 runs ZeroFlow in its place (see _bypasses_raft)
    scene_sizes: str = "64"  # stage 2: sizes of the scenes each batch slot cycles through, cut into crop² tiles
    # (comma-separated; a size S gives (S/crop)² samples, one per step; see StageTwoSamples)
    final_steps: int = 500  # stage 3: steps on whole final_crop² scenes after stage 2 (0: none), LR restarted
    final_crop: int = 128  # larger than the stage-2 crop: the context of large images (module doc, "Final stage")
    final_lr: float = 3e-4  # stage 3's peak learning rate (warm-up, then cosine to min_lr)
    final_warmup: int = 50
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 20
    flow_weight: float = 0.0  # > 0: RAFT keeps training in stage 2 on L1 to the true flow; 0: it is frozen there
    warp_weight: float = 0.2  # SmoothL1 of the warp-refine output to the aligned photo (the official auxiliary loss)
    offset_weight: float = 0.0  # L1 (pixels) between the deformable offsets and the true flow, at every decoder level
    misalignment_ramp: float = 0.5  # > 0: the photo's misalignment grows from 0 to the default over this fraction of
    # stage 2 (a curriculum: the network first learns to use an aligned photo, then to align it); 0: default throughout
    misalignment: float = 1.0  # stage-2 misalignment after the ramp, as a scale of the generator's default bounds
    # (0: aligned photos throughout, a diagnostic of what solved alignment would be worth; not for deployment)
    camera_jitter: float = 1.0  # photos of stages 1-2 through random cameras near the measured ones (make_scene)
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 200
    val_scenes: int = 3
    val_size: int = 128  # validation scene size, fixed so that runs with different crops validate alike
    checkpoint_every: int = 200
    threads: int = 2


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
    that made large images worse, not better: module doc; the default stays whole crop² scenes). The slots start at
    different points of the cycle, which spreads the cost of generating the large scenes over the steps. A scene's
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


def parse_scene_sizes(cfg: TrainConfig) -> list[int]:
    """``cfg.scene_sizes`` as a list; each size a multiple of the crop, which is a multiple of the scale (as are the
    stage-1 and validation scene sizes, checked here too so that a bad config fails before any work)."""
    try:
        sizes = [int(v) for v in cfg.scene_sizes.split(",")]
    except ValueError:
        raise ValueError(f"scene_sizes must be comma-separated integers, got {cfg.scene_sizes!r}") from None
    if cfg.crop % cfg.scale or not sizes or any(s < cfg.crop or s % cfg.crop for s in sizes):
        raise ValueError(f"scene_sizes {cfg.scene_sizes!r} must be multiples of the crop {cfg.crop} (itself a "
                         f"multiple of the scale {cfg.scale})")
    for name in ("match_crop", "val_size"):
        v = getattr(cfg, name)
        if v <= 0 or v % cfg.scale:
            raise ValueError(f"{name}={v} must be a positive multiple of the scale {cfg.scale}")
    return sizes


MIN_CROP_WITHOUT_RAFT = 64  # stage-2 crops when RAFT is bypassed (ZeroFlow): the decoder's 1/4 level stays >= 16²


def check_model_sizes(cfg: TrainConfig) -> None:
    """Refuse crops the network cannot take (and a negative misalignment scale).

    Training skips the model's input checks (``validate_inputs=False``), and below MIN_SIZE RAFT's coarsest correlation
    level is degenerate: its flow is NaN everywhere, the warped photo comes out corrupted (42% relative difference to
    the photo on a 96² scene, 1.9% at 128² where the flow is exactly 0), and a run would train on it without any error
    (a 96² crop run did exactly that; only its logged flow loss was NaN). The exception is a stage-2 crop when RAFT is
    fixed at zero flow: stage 2 then does not run RAFT at all (:func:`_bypasses_raft`), so its crop only needs
    ``MIN_CROP_WITHOUT_RAFT``. Stage 1 and validation run the real RAFT and keep MIN_SIZE.
    """
    if cfg.final_steps < 0:
        raise ValueError(f"final_steps={cfg.final_steps} must be >= 0")
    for name in ("crop", "final_crop", "match_crop", "val_size"):
        v = getattr(cfg, name)
        if name == "final_crop" and not cfg.final_steps:
            continue
        least = MIN_CROP_WITHOUT_RAFT if name in ("crop", "final_crop") and _bypasses_raft(cfg) else MIN_SIZE
        if v < least or v % SIZE_MULTIPLE:
            why = " with RAFT fixed at zero flow" if least != MIN_SIZE else ""
            raise ValueError(f"{name}={v}: the network needs scenes of at least {least}² HR pixels{why}, in "
                             f"multiples of {SIZE_MULTIPLE}")
    if not 0.0 <= cfg.misalignment < float("inf"):
        raise ValueError(f"misalignment={cfg.misalignment} must be a finite scale >= 0 of the generator's default")


def _collate(samples: list[Sample]) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """Batch samples: (inputs, target cube, true flow, aligned photo)."""
    inputs = tuple(torch.cat(ts) for ts in zip(*(s.inputs for s in samples), strict=True))
    return (inputs, torch.cat([s.target for s in samples]), torch.cat([s.flow for s in samples]),
            torch.cat([s.ref_aligned for s in samples]))


def _psnr(x: Tensor, y: Tensor) -> float:
    """Mean over bands of PSNR (data range 1), like :func:`sschsr_deploy.metrics.psnr`."""
    mse = ((x.clamp(0, 1) - y.clamp(0, 1)) ** 2).mean(dim=(0, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


@torch.no_grad()
def validate(model: nn.Module, samples: list[Sample]) -> dict[str, float]:
    """Mean PSNR of the model and of bicubic upsampling on held-out samples (eval mode, running BN statistics)."""
    was_training = model.training
    model.eval()
    ours, bic = [], []
    for s in samples:
        ours.append(_psnr(model(*s.inputs), s.target))
        bic.append(_psnr(s.bicubic, s.target))
    model.train(was_training)
    return {"psnr_model": float(np.mean(ours)), "psnr_bicubic": float(np.mean(bic))}


def _cosine(step: int, steps: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of network step ``step``: stage 2's schedule, then stage 3's restart (from ``final_lr``)."""
    if step < cfg.steps:
        return _cosine(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup)
    return _cosine(step - cfg.steps, cfg.final_steps, cfg.final_lr, cfg.min_lr, cfg.final_warmup)


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


def _optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params, clip: float) -> None:
    """Backward, clip the gradient norm of ``params`` to ``clip``, step: the update every stage makes."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def _build(cfg: TrainConfig) -> nn.Module:
    from .model import SSCHSR

    torch.manual_seed(cfg.seed)
    model = SSCHSR.from_preset(cfg.preset)
    model.validate_inputs = False
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        model.decoder.res3.output.weight.mul_(0.1)
        if _bypasses_raft(cfg):  # RAFT fixed at zero flow: its update head outputs 0
            head = model.flownet.update_block.flow_head.conv2
            head.weight.zero_()
            head.bias.zero_()
            model.flownet.requires_grad_(False)
    return model


class ZeroFlow(nn.Module):
    """Stands in for a RAFT fixed at zero flow during stage 2: the same output (exactly zero, B x 2 x H x W) without
    computing it, and without RAFT's 128² minimum, which the zeroed RAFT needs only to avoid NaN (0 x NaN = NaN)."""

    def forward(self, image1: Tensor, image2: Tensor, trace: dict | None = None) -> Tensor:
        return image1.new_zeros(image1.shape[0], 2, *image1.shape[2:])


def _bypasses_raft(cfg: TrainConfig) -> bool:
    """Stage 2 swaps RAFT for :class:`ZeroFlow` (RAFT fixed at zero flow: no stage 0, no flow loss)."""
    return cfg.raft_steps == 0 and cfg.flow_weight == 0


@contextmanager
def _raft_swapped(model: nn.Module, active: bool) -> Iterator[None]:
    """While active, ``model.flownet`` is a :class:`ZeroFlow` (the real RAFT, zeroed, is put back afterwards, so the
    checkpoints and the shipped weights keep it)."""
    if not active:
        yield
        return
    raft = model.flownet
    model.flownet = ZeroFlow()
    try:
        yield
    finally:
        model.flownet = raft


def _raft_frozen(cfg: TrainConfig) -> bool:
    """RAFT does not train in stage 2 (pretrained in stage 0, or fixed at zero flow)."""
    return cfg.flow_weight == 0


def _raft_eval_in_stage2(cfg: TrainConfig) -> bool:
    """A frozen stage-0 RAFT runs in eval mode in stage 2 (its batch-norm statistics stay those of stage 0). The
    zero-flow RAFT's output does not depend on them; it stays in train mode as when the shipped weights were trained
    (the shipped recipe is unchanged)."""
    return _raft_frozen(cfg) and cfg.raft_steps > 0


@torch.no_grad()
def flow_error(raft: nn.Module, samples: list[Sample]) -> dict[str, float]:
    """Mean end-point error (pixels) of RAFT's flow and of zero flow on samples with the generator's misalignment."""
    was_training = raft.training
    raft.eval()
    epe = [float((raft(s.inputs[3], s.inputs[4]) - s.flow).norm(dim=1).mean()) for s in samples]
    zero = [float(s.flow.norm(dim=1).mean()) for s in samples]
    raft.train(was_training)
    return {"epe_raft": float(np.mean(epe)), "epe_zero_flow": float(np.mean(zero))}


@torch.no_grad()
def matching_accuracy(model: nn.Module, samples: list[Sample]) -> dict[str, float]:
    """How well the contrastive extractors' arg-max patch matching finds the photo's true displacement.

    At the extractors' 1/4 resolution, per patch: the share whose matched flow is within one cell (4 HR pixels) of the
    true flow at the patch centre, and the mean error in cells; the same for zero flow (no matching) as the baseline.
    The photo goes in unwarped, as in stage 1.
    """
    within, err, zero_within, zero_err = [], [], [], []
    for s in samples:
        d1, d2 = model.rgb_extractor(s.inputs[1], s.inputs[2])
        h, w = d1.shape[-2:]
        index, _ = patch_match(d1, d2, 3)
        found = index_to_flow(index, h, w)[:, :-2, :-2]  # top-left anchored: the patch's centre is one cell further
        true = (F.avg_pool2d(s.flow, 4) / 4.0)[:, :, 1:-1, 1:-1].permute(0, 2, 3, 1)
        e, z = (found - true).norm(dim=-1), true.norm(dim=-1)
        within.append(float((e < 1).float().mean()))
        err.append(float(e.mean()))
        zero_within.append(float((z < 1).float().mean()))
        zero_err.append(float(z.mean()))
    return {"match_within_1_cell": float(np.mean(within)), "match_mean_error_cells": float(np.mean(err)),
            "zero_flow_within_1_cell": float(np.mean(zero_within)),
            "zero_flow_mean_error_cells": float(np.mean(zero_err))}


def _pretrain_flow(model: nn.Module, cfg: TrainConfig, val: list[Sample]) -> dict[str, list]:
    """Stage 0: RAFT alone on :class:`FlowPairPool` pairs (RAFT's sequence loss: every iteration's 1/8-resolution
    flow weighted 0.8^(n-1-i), plus the upsampled flow), cosine schedule from ``raft_lr``. Curriculum: the share of
    photo-to-photo pairs falls linearly from 1 to 0 over the first ``raft_same_modality`` of the steps. ``raft_loss``
    picks L1 (RAFT's; learns one flow axis at a time here) or MSE (both axes together, more slowly; module doc)."""
    losses = {"l1": F.l1_loss, "mse": F.mse_loss}
    if cfg.raft_loss not in losses:
        raise ValueError(f"raft_loss must be one of {sorted(losses)}, got {cfg.raft_loss!r}")
    loss_fn = losses[cfg.raft_loss]
    raft = model.flownet
    raft.train()
    crop = max(cfg.crop, MIN_SIZE)  # RAFT's own minimum (train() refuses smaller stage-2 crops when stage 0 runs)
    pool = FlowPairPool(cfg.raft_pool, max(crop + 64, 192), crop, cfg.scale, cfg.raft_max_displacement,
                        seed=cfg.seed)
    opt = torch.optim.AdamW(raft.parameters(), lr=cfg.raft_lr, weight_decay=1e-5)
    history: dict[str, list] = {"raft_step": [], "raft_loss": [], "raft_val_step": [], "raft_val_epe": []}
    for step in range(cfg.raft_steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, cfg.raft_steps, cfg.raft_lr, cfg.raft_lr / 25, max(cfg.raft_steps // 20, 1))
        fade = cfg.raft_same_modality * cfg.raft_steps
        hsi, ref, flow = pool.batch(cfg.raft_batch, same_modality=max(0.0, 1.0 - step / fade) if fade else 0.0)
        trace: dict[str, Tensor] = {}
        pred = raft(hsi, ref, trace=trace)
        lowres = trace["raft.flow_lowres_iters"]  # iters x B x 2 x h/8 x w/8, in 1/8-resolution pixels
        target8 = F.avg_pool2d(flow, 8)  # HR pixels
        n = lowres.shape[0]
        final = F.l1_loss(pred, flow)
        loss = loss_fn(pred, flow) + sum(0.8 ** (n - 1 - i) * loss_fn(8 * lowres[i], target8) for i in range(n))
        _optimizer_step(opt, loss, raft.parameters(), cfg.grad_clip)
        history["raft_step"].append(step + 1)
        history["raft_loss"].append(final.item())
        if (step + 1) % (4 * cfg.val_every) == 0 or step + 1 == cfg.raft_steps:
            e = flow_error(raft, val)
            history["raft_val_step"].append(step + 1)
            history["raft_val_epe"].append(e["epe_raft"])
            log.info("flow step %d/%d L1 %.3f (mean of the last %d) held-out EPE %.3f px (zero flow %.3f)", step + 1,
                     cfg.raft_steps, float(np.mean(history["raft_loss"][-4 * cfg.val_every:])), 4 * cfg.val_every,
                     e["epe_raft"], e["epe_zero_flow"])
    return history


def contrastive_match_loss(model: nn.Module, inputs: tuple[Tensor, ...], flow_gt: Tensor,
                           temperature: float = 0.07) -> Tensor:
    """InfoNCE at the extractors' 1/4 resolution: the HSI feature at p must be closer (cosine) to the reference feature
    at p + flow(p) than to the reference features anywhere else in the same image."""
    d1, d2 = model.rgb_extractor(inputs[1], inputs[2])
    flow4 = F.avg_pool2d(flow_gt, 4) / 4.0
    aligned = warp_reference_exact(d2, flow4)
    q = F.normalize(d1[..., 2:-2, 2:-2].flatten(2), dim=1)  # B x C x N (borders: the warp clamps there)
    k = F.normalize(aligned[..., 2:-2, 2:-2].flatten(2), dim=1)
    logits = torch.einsum("bcn,bcm->bnm", q, k) / temperature
    target = torch.arange(logits.shape[1]).repeat(logits.shape[0])
    return F.cross_entropy(logits.flatten(0, 1), target)


def _train_matching(model: nn.Module, cfg: TrainConfig) -> dict[str, list]:
    """Stage 1: the contrastive extractors alone (cosine schedule from ``match_lr``)."""
    params = list(model.rgb_extractor.parameters())
    opt = torch.optim.Adam(params, lr=cfg.match_lr)
    steps, losses = [], []
    for step in range(cfg.match_steps):
        batch = [make_sample(cfg.seed * 10_000_000 + 5_000_000 + step * cfg.match_batch + i, cfg.match_crop,
                             cfg.scale, camera_jitter=cfg.camera_jitter)
                 for i in range(cfg.match_batch)]
        inputs, _, flow_gt, _ = _collate(batch)
        for g in opt.param_groups:
            g["lr"] = _cosine(step, cfg.match_steps, cfg.match_lr, cfg.match_lr / 20, cfg.warmup)
        loss = contrastive_match_loss(model, inputs, flow_gt, cfg.match_temperature)
        _optimizer_step(opt, loss, params, cfg.grad_clip)
        steps.append(step + 1)
        losses.append(loss.item())
        if (step + 1) % cfg.val_every == 0:
            log.info("match step %d/%d InfoNCE %.3f (mean of the last %d)", step + 1, cfg.match_steps,
                     float(np.mean(losses[-cfg.val_every:])), cfg.val_every)
    return {"match_step": steps, "match_loss": losses}


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, history: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "history": json.dumps(history)}, tmp)


def _load_checkpoint(path: Path, model: nn.Module) -> tuple[int, dict, dict]:
    """Load a stage-2 checkpoint's weights into ``model``; returns its step, history and optimizer state (loaded into
    the optimizer once that exists)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return int(state["step"]), json.loads(state["history"]), state["optimizer"]


def _run_or_load_stage(path: Path, module: nn.Module, key: str, resume: bool, history: dict,
                       run: Callable[[], dict]) -> bool:
    """A pretraining stage: load ``module`` (and the stage's history) from ``path`` when resuming the same config, else
    ``run()`` it, merge its history and save the module atomically. True when the stage ran."""
    if resume and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state[key])
        history.update(json.loads(state["history"]))
        log.info("%s loaded from %s", key, path)
        return False
    history.update(run())
    with atomic_path(path) as tmp:
        torch.save({key: module.state_dict(), "history": json.dumps(history)}, tmp)
    return True


def offset_alignment_loss(model: nn.Module, trace: dict[str, Tensor], flow: Tensor) -> Tensor:
    """Mean L1 (in each level's pixels) between every deformable tap's sampling offset and the true residual flow.

    The decoder samples the reference feature at p + tap + offset; with the photo displaced by ``flow`` the right
    offset for every tap is the flow at that level's resolution. ``trace`` is the one a forward with ``trace=`` filled.
    """
    dec = model.decoder
    losses = []
    for tag, stride, dcn in (("3", 4, dec.up_small_dyn_agg), ("2", 2, dec.up_medium_dyn_agg),
                             ("1", 1, dec.up_large_dyn_agg)):
        b, taps, h, w, _ = trace[f"match.offset_relu{tag}"].shape
        offset = trace[f"decoder.offset{tag}"].reshape(b, dcn.offset_groups, taps, 2, h, w)  # (dy, dx) per tap
        target = (F.avg_pool2d(flow, stride) / stride).flip(1).reshape(b, 1, 1, 2, h, w)  # (x, y) -> (y, x)
        losses.append(F.l1_loss(offset, target.expand_as(offset)))
    return torch.stack(losses).mean()


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Train and write ``out_dir/{weights.safetensors, card.json, curves.png, checkpoint.pt}``; returns the card.

    With ``resume`` a ``checkpoint.pt`` in ``out_dir`` from an earlier (interrupted) run of the same config is
    continued; the data stream is a pure function of (seed, step), so a resumed run sees the same samples.
    """
    from .checkpoint import save_safetensors, state_dict_sha256

    check_model_sizes(cfg)
    data = NetworkSamples(cfg)  # checks the config's scene sizes before any work
    total = data.total_steps
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    model = _build(cfg).train()
    history: dict[str, list] = {"step": [], "loss": [], "loss_cube": [], "loss_flow": [], "loss_warp": [],
                                "val_step": [], "val_psnr_model": [], "val_psnr_bicubic": []}
    start = 0
    ckpt = out / "checkpoint.pt"
    cfg_path = out / "train_config.json"
    opt_state = None
    # checkpoints of a run with another config are not resumed (stage 1 either)
    same_config = resume and cfg_path.exists() and json.loads(cfg_path.read_text()) == asdict(cfg)
    if same_config and ckpt.exists():
        start, history, opt_state = _load_checkpoint(ckpt, model)
        log.info("resumed from step %d", start)
    atomic_write_json(cfg_path, asdict(cfg))
    val = [make_sample(VALIDATION_SEED + i, cfg.val_size, cfg.scale, "test") for i in range(cfg.val_scenes)]
    t_start = t0 = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    if start == 0:
        if cfg.raft_steps and _run_or_load_stage(out / "raft_checkpoint.pt", model.flownet, "flownet", same_config,
                                                 history, lambda: _pretrain_flow(model, cfg, val)):
            stage_seconds["flow"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        if _run_or_load_stage(out / "match_checkpoint.pt", model.rgb_extractor, "rgb_extractor", same_config, history,
                              lambda: _train_matching(model, cfg)):
            stage_seconds["matching"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
    matching = matching_accuracy(model, val)  # the extractors are final here: stage 2 keeps them frozen
    log.info("matching on the validation scenes: %s", matching)
    if _raft_frozen(cfg):
        model.flownet.requires_grad_(False)
    for p in model.rgb_extractor.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    raft_eval = _raft_eval_in_stage2(cfg)
    model.flownet.train(not raft_eval)
    bypass = _bypasses_raft(cfg)
    for step in range(start, total):
        batch = data.batch(step)
        inputs, target, flow_gt, ref_aligned = _collate(batch)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        trace: dict[str, Tensor] | None = {} if cfg.offset_weight else None
        with _raft_swapped(model, bypass):
            res = model(*inputs, return_all=True, trace=trace)
        loss_cube = F.l1_loss(res["out"], target)
        loss_flow = F.l1_loss(res["flow"], flow_gt)
        loss_warp = F.smooth_l1_loss(res["ref_warpnet"], ref_aligned, beta=0.01)
        loss = loss_cube + cfg.flow_weight * loss_flow + cfg.warp_weight * loss_warp
        if trace is not None:
            loss_offset = offset_alignment_loss(model, trace, flow_gt - res["flow"].detach())
            loss = loss + cfg.offset_weight * loss_offset
            history.setdefault("loss_offset", []).append(loss_offset.item())
        _optimizer_step(opt, loss, model.parameters(), cfg.grad_clip)
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        history["loss_cube"].append(loss_cube.item())
        history["loss_flow"].append(loss_flow.item())
        history["loss_warp"].append(loss_warp.item())
        done = step + 1
        if done % cfg.val_every == 0 or done == total:
            v = validate(model, val)
            model.flownet.train(not raft_eval)
            history["val_step"].append(done)
            history["val_psnr_model"].append(v["psnr_model"])
            history["val_psnr_bicubic"].append(v["psnr_bicubic"])
            rate = (done - start) / (time.perf_counter() - t0)
            log.info("step %d/%d loss %.4f (cube %.4f flow %.3f warp %.4f) val PSNR %.2f dB (bicubic %.2f) "
                     "%.2f steps/s", done, total, loss.item(), loss_cube.item(), loss_flow.item(),
                     loss_warp.item(), v["psnr_model"], v["psnr_bicubic"], rate)
        if done % cfg.checkpoint_every == 0 or done == total:
            _save_checkpoint(ckpt, model, opt, done, history)

    model.eval()
    weights = out / "weights.safetensors"
    meta = {"preset": cfg.preset, "scale": str(cfg.scale), "bands": "31", "trained_by": "sschsr_deploy.train"}
    save_safetensors(model, weights, metadata=meta)
    card = {
        "preset": cfg.preset, "scale": cfg.scale, "bands": 31, "weights_sha256": state_dict_sha256(model),
        "config": asdict(cfg),
        "data": {"generator": "sschsr_deploy.data.make_scene", "split": "train", "crop": cfg.crop,
                 "final_crop": cfg.final_crop if cfg.final_steps else None, "match_crop": cfg.match_crop,
                 "samples": total * cfg.batch + cfg.match_steps * cfg.match_batch,
                 "scene_sizes": data.stage_two.sizes,
                 "sample_seeds": f"stages 2-3: NetworkSamples (StageTwoSamples.plan: seed*10_000_000 + "
                                 f"step*batch + i with whole crop² scenes; stage 3 continues the step count), "
                                 f"stage 1: seed*10_000_000 + 5_000_000 + step*match_batch + i "
                                 f"(seed={cfg.seed})",
                 "flow_pairs": {"pairs": cfg.raft_steps * cfg.raft_batch, "pool_scenes": cfg.raft_pool,
                                "generator": "sschsr_deploy.data.flow_pairs.FlowPairPool (aligned train-split scenes "
                                             "displaced by random fields)"}},
        "validation": {"split": "test", "seeds": [VALIDATION_SEED + i for i in range(cfg.val_scenes)],
                       "psnr_model": history["val_psnr_model"][-1] if history["val_psnr_model"] else None,
                       "psnr_bicubic": history["val_psnr_bicubic"][-1] if history["val_psnr_bicubic"] else None},
        "flow": flow_error(model.flownet, val),
        "matching": matching,
        "train_seconds_this_run": round(time.perf_counter() - t_start, 1),
        "stage_seconds_this_run": {**stage_seconds, "network": round(time.perf_counter() - t0, 1)},
        "torch": torch.__version__,
    }
    atomic_write_json(out / "card.json", card)
    atomic_write_json(out / "history.json", history)
    plot_curves(history, out / "curves.png", final_from=cfg.steps if cfg.final_steps else None)
    return card


def plot_curves(history: dict, path: str | Path, final_from: int | None = None) -> Path | None:
    """Training loss and validation PSNR against step (PNG; skipped with a log line if matplotlib is missing);
    ``final_from`` marks where stage 3 starts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no curves plot")
        return None
    has_flow = bool(history.get("raft_loss"))
    fig, axes = plt.subplots(1, 4 if has_flow else 3, figsize=(20 if has_flow else 15, 3.6))
    if has_flow:
        r, axes = axes[0], axes[1:]
        rl = np.asarray(history["raft_loss"])
        kr = max(1, len(rl) // 50)
        r.plot(history["raft_step"], rl, alpha=0.3, label="flow L1 (px, training pairs)")
        r.plot(np.asarray(history["raft_step"])[kr - 1:], np.convolve(rl, np.ones(kr) / kr, mode="valid"),
               label=f"mean of {kr}")
        r.plot(history["raft_val_step"], history["raft_val_epe"], "o-", label="held-out EPE (px)")
        r.set_xlabel("stage-0 step")
        r.set_title("stage 0: RAFT")
        r.legend()
    f, a, b = axes
    if history.get("match_loss"):
        ml = np.asarray(history["match_loss"])
        km = max(1, len(ml) // 50)
        f.plot(history["match_step"], ml, alpha=0.3, label="InfoNCE")
        f.plot(np.asarray(history["match_step"])[km - 1:], np.convolve(ml, np.ones(km) / km, mode="valid"),
               label=f"mean of {km}")
        f.legend()
    f.set_xlabel("stage-1 step")
    f.set_title("stage 1: correspondence extractors")
    steps = np.asarray(history["step"])
    loss = np.asarray(history["loss_cube"])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    a.plot(steps, loss, alpha=0.3, label="cube L1")
    a.plot(steps[k - 1:], smooth, label=f"cube L1 (mean of {k})")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("stage 2: whole-network loss" if final_from is None else "stages 2-3: whole-network loss")
    a.legend()
    b.plot(history["val_step"], history["val_psnr_model"], "o-", label="tiny model")
    b.plot(history["val_step"], history["val_psnr_bicubic"], "--", label="bicubic")
    if final_from is not None:
        for ax in (a, b):
            ax.axvline(final_from, color="grey", linestyle=":", label="stage 3 (larger crops)")
    b.set_xlabel("step")
    b.set_ylabel("PSNR (dB)")
    b.set_title("held-out validation")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m sschsr_deploy.train --out DIR [--steps N ...]``: the command that produced the shipped weights."""
    import argparse
    import sys

    defaults = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m sschsr_deploy.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run directory (weights, card, curves, resumable checkpoints)")
    for name, value in asdict(defaults).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--no-resume", action="store_true", help="start over even if DIR holds a checkpoint")
    args = vars(ap.parse_args(argv))
    out, no_resume = args.pop("out"), args.pop("no_resume")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    card = train(TrainConfig(**args), out, resume=not no_resume)
    print(json.dumps(card["validation"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
