"""Train a preset (the shipped ``tiny`` weights) on generated scenes, on the CPU, reproducibly.

Data: every sample is a fresh :func:`sschsr_deploy.data.make_scene` of the ``train`` split, turned into model inputs
by the deployment preprocessing, so the network learns exactly the input statistics it will see; validation runs on
held-out (``test`` split) scenes. Up to four stages, the first three as the official model is built:

(0) optional (``raft_steps``, off by default): RAFT alone on photos displaced by known random fields;
(1) ``match_steps``: the two contrastive correspondence extractors alone (InfoNCE on the generator's true flow);
(2) ``steps``: the rest of the network with RAFT and the extractors frozen (cube L1 + the official auxiliary loss on
the warp-refine output), with a misalignment curriculum; RAFT is fixed at zero flow by default and stage 2 runs
:class:`ZeroFlow` in its place, which allows crops below RAFT's 128² minimum;
(3) ``final_steps``: the same on larger whole scenes, the learning rate restarted.

Run ``python -m sschsr_deploy.train --out DIR [--steps N ...]`` (one option per :class:`TrainConfig` field; all
defaults: the shipped x4 weights) or :func:`train`. Checkpoints are resumable; the result is a safetensors file, a
JSON card and a PNG of the curves, all written atomically. The recipe, the reasons for it and the history of the
measured runs (v6/v7/v8, pilots, stopped runs) are in ``docs/training.md``.

Modules: :mod:`.config` (the configuration and its checks), :mod:`.sampling` (samples and the sample streams),
:mod:`.losses`, :mod:`.evaluation` (held-out measurements), :mod:`.stages` (the stage loops and :func:`train`),
:mod:`.curves` (the PNG), :mod:`.cli` (the command line).
"""

from .cli import main
from .config import (
    MIN_CROP_WITHOUT_RAFT,
    VALIDATION_SEED,
    TrainConfig,
    check_model_sizes,
    parse_scene_sizes,
)
from .config import _bypasses_raft as _bypasses_raft
from .curves import plot_curves
from .evaluation import _psnr as _psnr
from .evaluation import flow_error, matching_accuracy, validate
from .losses import contrastive_match_loss, network_loss, offset_alignment_loss, raft_sequence_loss
from .sampling import NetworkSamples, Sample, StageTwoSamples, make_sample, misalignment_at, sample_from_scene
from .sampling import _collate as _collate
from .sampling import _scene_for as _scene_for
from .stages import ZeroFlow, train
from .stages import _build as _build
from .stages import _lr_at as _lr_at
from .stages import _pretrain_flow as _pretrain_flow
from .stages import _raft_swapped as _raft_swapped

__all__ = [
    "MIN_CROP_WITHOUT_RAFT",
    "VALIDATION_SEED",
    "NetworkSamples",
    "Sample",
    "StageTwoSamples",
    "TrainConfig",
    "ZeroFlow",
    "check_model_sizes",
    "contrastive_match_loss",
    "flow_error",
    "main",
    "make_sample",
    "matching_accuracy",
    "misalignment_at",
    "network_loss",
    "offset_alignment_loss",
    "parse_scene_sizes",
    "plot_curves",
    "raft_sequence_loss",
    "sample_from_scene",
    "train",
    "validate",
]
