"""Measurements on held-out samples during training: PSNR against bicubic, RAFT's flow error, the patch matching's
accuracy (the numbers of the card's ``validation``, ``flow`` and ``matching`` entries)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.correspondence import index_to_flow
from ..ops import patch_match
from .sampling import Sample


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
