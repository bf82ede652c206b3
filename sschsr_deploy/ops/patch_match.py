"""Exhaustive 3×3 patch matching (cosine similarity, arg-max over all reference patches): the plain-PyTorch reference.

Follows spec §3.6 "Matching at 1/4 resolution": both feature maps are L2-normalised per pixel (norm clamped at 1e-12);
every stride-1 3×3 reference patch n (row-major by its top-left corner) is divided by (its Frobenius norm + 1e-5); the
score of patch n at input window (y, x) is their inner product; the best score is divided by (the input window's
norm + 1e-5). Reference patches are scanned in chunks, and a later chunk replaces the running best only when strictly
greater, so ties resolve to the lowest patch index, like the official chunk loop. The full N × positions score matrix
is never held at once: memory is one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputValidationError
from ..precision import float32_island
from ._backend import choose, define_op

PIXEL_EPS = 1e-12
PATCH_EPS = 1e-5
# Official chunk size rule: floor(2**29 / (h·w)) reference patches per chunk. Tie-breaking does not depend on it here
# (ties always go to the lowest index), so a smaller chunk only bounds memory.
_CHUNK_ELEMENTS = 2**26


def patch_match_reference(feat: Tensor, ref_feat: Tensor, patch_size: int = 3) -> tuple[Tensor, Tensor]:
    """Best reference patch for every input window.

    feat, ref_feat: B×C×h×w. Returns ``index`` (B×(h−p+1)×(w−p+1), int64, n = Y·(w−p+1) + X of the best reference
    patch's top-left corner) and ``similarity`` (same shape, float: the cosine similarity of that match).
    """
    if feat.dim() != 4 or feat.shape != ref_feat.shape:
        raise InputValidationError(
            f"patch match: feat and ref_feat must share one B×C×h×w shape, got {tuple(feat.shape)} and "
            f"{tuple(ref_feat.shape)}"
        )
    b, c, h, w = feat.shape
    p = patch_size
    if h < p or w < p:
        raise InputValidationError(f"patch match: feature maps {h}×{w} are smaller than the {p}×{p} patch")
    hp, wp = h - p + 1, w - p + 1
    fi = F.normalize(feat, dim=1, eps=PIXEL_EPS)
    fr = F.normalize(ref_feat, dim=1, eps=PIXEL_EPS)
    win = F.unfold(fi, p)  # B × (C·p·p) × P, column q = window with top-left (q // wp, q % wp)
    pat = F.unfold(fr, p)  # B × (C·p·p) × N
    pat = pat / (pat.norm(dim=1, keepdim=True) + PATCH_EPS)
    win_norm = win.norm(dim=1) + PATCH_EPS  # B × P
    n_total = pat.shape[2]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, hp * wp))
    best_val = feat.new_full((b, hp * wp), float("-inf"))
    best_idx = torch.zeros((b, hp * wp), dtype=torch.long, device=feat.device)
    for start in range(0, n_total, chunk):
        stop = min(n_total, start + chunk)
        scores = pat[:, :, start:stop].transpose(1, 2) @ win  # B × n × P
        val, idx = scores.max(dim=1)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + start, best_idx)
    sim = best_val / win_norm
    return best_idx.reshape(b, hp, wp), sim.reshape(b, hp, wp)


SCHEMA = "patch_match(Tensor feat, Tensor ref_feat, int patch_size) -> (Tensor, Tensor)"
ENV_VAR = "SSCHSR_PATCH_MATCH_BACKEND"


def _fake(feat, ref_feat, patch_size):
    b, _, h, w = feat.shape
    shape = (b, h - patch_size + 1, w - patch_size + 1)
    return feat.new_empty(shape, dtype=torch.long), feat.new_empty(shape)


define_op("patch_match", SCHEMA, patch_match_reference, _fake)


@float32_island(out_like=None)  # index int64; the similarity stays float32
def patch_match(feat: Tensor, ref_feat: Tensor, patch_size: int = 3) -> tuple[Tensor, Tensor]:
    """Patch matching as the model calls it (``SSCHSR_PATCH_MATCH_BACKEND`` overrides the automatic choice).

    Not differentiable (an arg-max); the similarity is differentiable only through the reference backend.
    """
    needs_grad = torch.is_grad_enabled() and (feat.requires_grad or ref_feat.requires_grad)
    backend = choose(ENV_VAR, "patch_match", feat.device, needs_grad)
    if backend == "native":
        return torch.ops.sschsr.patch_match(feat, ref_feat, patch_size)
    if backend == "triton":
        from ..kernels.triton.patch_match import patch_match_triton

        return patch_match_triton(feat, ref_feat, patch_size)
    return patch_match_reference(feat, ref_feat, patch_size)
