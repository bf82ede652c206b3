"""The training configuration: :class:`TrainConfig` (everything that determines a run) and the checks of its sizes.

The sizes are checked before any work, so that a bad config fails at once rather than after minutes of training.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.presets import MIN_SIZE, SIZE_MULTIPLE

VALIDATION_SEED = 1_000_000  # validation scenes: test split, seeds from here (the quality table uses other seeds)
MIN_CROP_WITHOUT_RAFT = 64  # stage-2 crops when RAFT is bypassed (ZeroFlow): the decoder's 1/4 level stays >= 16²


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
    raft_loss: str = "l1"  # stage-0 sequence loss: "l1" (RAFT's) or "mse" (both axes together, docs/training.md)
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
    final_crop: int = 128  # larger than the stage-2 crop: the context of large images (docs/training.md, "Final stage")
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


def _bypasses_raft(cfg: TrainConfig) -> bool:
    """Stage 2 swaps RAFT for :class:`~sschsr_deploy.train.stages.ZeroFlow` (RAFT fixed at zero flow: no stage 0, no
    flow loss)."""
    return cfg.raft_steps == 0 and cfg.flow_weight == 0


def _raft_frozen(cfg: TrainConfig) -> bool:
    """RAFT does not train in stage 2 (pretrained in stage 0, or fixed at zero flow)."""
    return cfg.flow_weight == 0


def _raft_eval_in_stage2(cfg: TrainConfig) -> bool:
    """A frozen stage-0 RAFT runs in eval mode in stage 2 (its batch-norm statistics stay those of stage 0). The
    zero-flow RAFT's output does not depend on them; it stays in train mode as when the shipped weights were trained
    (the shipped recipe is unchanged)."""
    return _raft_frozen(cfg) and cfg.raft_steps > 0


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
