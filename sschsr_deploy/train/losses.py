"""The training losses: RAFT's sequence loss (stage 0), InfoNCE of the extractors (stage 1), the network loss
(stages 2-3: L1 on the cube + the official auxiliary loss on the warp-refine output [+ flow and offset terms])."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.warp import warp_reference_exact
from .config import TrainConfig


def raft_sequence_loss(pred: Tensor, lowres: Tensor, flow: Tensor,
                       loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """RAFT's sequence loss: ``loss_fn`` of the upsampled flow ``pred`` plus every iteration's 1/8-resolution flow
    (``lowres``: iters x B x 2 x h/8 x w/8, in 1/8-resolution pixels) weighted 0.8^(n-1-i), against the true flow."""
    target8 = F.avg_pool2d(flow, 8)  # HR pixels
    n = lowres.shape[0]
    return loss_fn(pred, flow) + sum(0.8 ** (n - 1 - i) * loss_fn(8 * lowres[i], target8) for i in range(n))


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


def network_loss(model: nn.Module, res: dict[str, Tensor], target: Tensor, flow_gt: Tensor, ref_aligned: Tensor,
                 trace: dict[str, Tensor] | None, cfg: TrainConfig) -> dict[str, Tensor]:
    """The loss of a stage-2/3 step and its parts: ``loss`` = cube L1 + ``flow_weight`` x flow L1 + ``warp_weight`` x
    SmoothL1 of the warp-refine output to the aligned photo [+ ``offset_weight`` x :func:`offset_alignment_loss`
    (``offset``) when ``trace`` holds a forward's trace]. ``res`` is the forward's ``return_all`` dict."""
    parts = {"cube": F.l1_loss(res["out"], target), "flow": F.l1_loss(res["flow"], flow_gt),
             "warp": F.smooth_l1_loss(res["ref_warpnet"], ref_aligned, beta=0.01)}
    loss = parts["cube"] + cfg.flow_weight * parts["flow"] + cfg.warp_weight * parts["warp"]
    if trace is not None:
        parts["offset"] = offset_alignment_loss(model, trace, flow_gt - res["flow"].detach())
        loss = loss + cfg.offset_weight * parts["offset"]
    return {"loss": loss, **parts}
