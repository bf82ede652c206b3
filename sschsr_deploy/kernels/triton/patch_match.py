"""Exhaustive patch matching in Triton: cosine scores by ``tl.dot``, streamed with a running max/arg-max per window.

Semantics are those of :func:`sschsr_deploy.ops.patch_match.patch_match_reference`: both maps L2-normalised per pixel
(norm clamped at 1e-12); every stride-1 p×p reference patch divided by (its norm + 1e-5); the score of patch n at
window q is their inner product; the best score is divided by (the window's norm + 1e-5); ties go to the lowest patch
index.

torch does the linear-memory preparation (normalisation, ``unfold`` of windows and patches into (B, C·p·p, positions),
patch and window norms, all in fp32). The kernel gives each program BLOCK_P windows; it streams over the reference
patches in blocks of BLOCK_N, computes the BLOCK_P × BLOCK_N score tile with ``tl.dot`` over C·p·p in blocks of BLOCK_D
(fp32 accumulation) and folds the tile into a running (max, lowest arg-max) per window: within a tile the lowest
index among the maxima is taken, and a later tile replaces the running best only when strictly greater. The
positions × patches score matrix is never held. fp32 inputs use ``input_precision="ieee"`` (no TF32 on a GPU); fp16/bf16
inputs are normalised in fp32 and fed to ``tl.dot`` in their own dtype.

Tested on the CPU through the Triton interpreter (fp32, fp16); every GPU configuration × dtype (bf16 included) is
compiled for sm_80 and sm_90 and assembled by ptxas on the CPU (:mod:`.compile_check`); unverified on GPU hardware.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ...errors import InputValidationError
from .. import check_grid, check_int32_extent, check_launch_devices, launch_device, triton_interpreting

__all__ = ["patch_match_triton"]

_INTERPRET = triton_interpreting()
PIXEL_EPS = 1e-12
PATCH_EPS = 1e-5
_INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def _max2(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min2(a, b):
    return tl.minimum(a, b)


# Reductions go through the builtin tl.reduce, never tl.max / tl.min: triton's @jit library functions fail under the
# interpreter when triton was imported (e.g. by torch._dynamo) before TRITON_INTERPRET was set. The combine functions
# are tl.max / tl.min's own when this triton has them, because the interpreter reduces those with numpy and calls any
# other element by element (about 1000× slower).
_MAX = getattr(tl.standard, "_elementwise_max", _max2)
_MIN = getattr(tl.standard, "_elementwise_min", _min2)


# The GPU autotune space, whatever the interpreter flag (so that it can be compiled ahead of time on a CPU).
GPU_CONFIGS = (
    triton.Config({"BLOCK_P": 64, "BLOCK_N": 64, "BLOCK_D": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128, "BLOCK_N": 64, "BLOCK_D": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128, "BLOCK_N": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_D": 64}, num_warps=4, num_stages=2),
)


def _configs() -> list[triton.Config]:
    if _INTERPRET:  # the interpreter cannot autotune over several configs; large tiles keep it fast
        return [triton.Config({"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_D": 64}, num_warps=4, num_stages=1)]
    return list(GPU_CONFIGS)


_ACTIVE_CONFIGS = _configs()


@triton.autotune(configs=_ACTIVE_CONFIGS, key=["D", "DOT_PRECISION"])
@triton.jit
def _patch_match_kernel(
    win_ptr, pat_ptr, wn_ptr, idx_ptr, sim_ptr,
    P, NREF, D,
    w_sb, w_sd, w_sp,
    t_sb, t_sd, t_sn,
    DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    w_base = win_ptr + b * w_sb + (p * w_sp)[:, None]
    t_base = pat_ptr + b * t_sb

    best = tl.full((BLOCK_P,), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_P,), 0, dtype=tl.int32)
    for n0 in range(0, NREF, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < NREF
        acc = tl.full((BLOCK_P, BLOCK_N), 0.0, dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_ok = d < D
            wt = tl.load(w_base + (d * w_sd)[None, :], mask=p_ok[:, None] & d_ok[None, :], other=0.0)
            pt = tl.load(t_base + (d * t_sd)[:, None] + (n * t_sn)[None, :], mask=d_ok[:, None] & n_ok[None, :],
                         other=0.0)
            acc = tl.dot(wt, pt, acc, input_precision=DOT_PRECISION)
        acc = tl.where(n_ok[None, :], acc, float("-inf"))
        tile_max = tl.reduce(acc, 1, _MAX)
        tile_idx = tl.reduce(tl.where(acc == tile_max[:, None], n[None, :], _INT32_MAX), 1, _MIN)  # lowest tied index
        better = tile_max > best  # strictly greater: an earlier (lower) index keeps a tie
        best = tl.where(better, tile_max, best)
        best_idx = tl.where(better, tile_idx, best_idx)

    wn = tl.load(wn_ptr + b * P + p, mask=p_ok, other=1.0)
    tl.store(idx_ptr + b * P + p, best_idx.to(tl.int64), mask=p_ok)
    tl.store(sim_ptr + b * P + p, (best / wn).to(sim_ptr.dtype.element_ty), mask=p_ok)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp16/bf16 operands ignore the setting


def patch_match_triton(feat: Tensor, ref_feat: Tensor, patch_size: int = 3) -> tuple[Tensor, Tensor]:
    """Best reference patch for every input window; same arguments and result as ``patch_match_reference``.

    feat, ref_feat: (B, C, h, w) fp32/fp16/bf16, any strides. Returns ``index`` (B, h−p+1, w−p+1) int64 (n = Y·(w−p+1)
    + X of the best reference patch's top-left corner, lowest n on ties) and ``similarity`` (same shape, feat's dtype).
    """
    op = "patch match (triton)"
    if feat.dim() != 4 or feat.shape != ref_feat.shape:
        raise InputValidationError(
            f"{op}: feat and ref_feat must share one B×C×h×w shape, got {tuple(feat.shape)} and {tuple(ref_feat.shape)}"
        )
    if feat.dtype not in (torch.float32, torch.float16, torch.bfloat16) or ref_feat.dtype != feat.dtype:
        raise InputValidationError(f"{op}: feat and ref_feat must share one dtype among fp32/fp16/bf16, got "
                                   f"{feat.dtype} and {ref_feat.dtype}")
    b, c, h, w = feat.shape
    p = int(patch_size)
    if p < 1:
        raise InputValidationError(f"{op}: patch_size must be ≥ 1, got {patch_size}")
    if h < p or w < p:
        raise InputValidationError(f"{op}: feature maps {h}×{w} are smaller than the {p}×{p} patch")
    device = check_launch_devices(op, _INTERPRET, feat, ref_feat)
    hp, wp = h - p + 1, w - p + 1
    npos = hp * wp
    block_p = min(cfg.kwargs["BLOCK_P"] for cfg in _ACTIVE_CONFIGS)  # the largest grid any config launches
    check_grid(op, (triton.cdiv(npos, block_p), b),
               ("split the feature maps into tiles", "split the batch over several calls"))
    index = torch.empty((b, hp, wp), dtype=torch.long, device=feat.device)
    sim = torch.empty((b, hp, wp), dtype=feat.dtype, device=feat.device)
    if index.numel() == 0:
        return index, sim
    if c == 0:
        raise InputValidationError(f"{op}: feature maps have no channels")

    compute = feat.dtype  # fp16/bf16 stay in their dtype for the tensor cores, normalisation is fp32
    fi = F.normalize(feat.float(), dim=1, eps=PIXEL_EPS)
    fr = F.normalize(ref_feat.float(), dim=1, eps=PIXEL_EPS)
    win = F.unfold(fi, p)  # (B, D, P): column q = window with top-left (q // wp, q % wp)
    pat = F.unfold(fr, p)  # (B, D, N)
    pat = pat / (pat.norm(dim=1, keepdim=True) + PATCH_EPS)
    win_norm = (win.norm(dim=1) + PATCH_EPS).contiguous()  # (B, P) fp32
    win = win.to(compute)
    pat = pat.to(compute)
    d = win.shape[1]
    check_int32_extent(op, win, pat)

    def grid(meta):
        return (triton.cdiv(npos, meta["BLOCK_P"]), b)

    with launch_device(device):
        _patch_match_kernel[grid](
            win, pat, win_norm, index, sim,
            npos, npos, d,
            *win.stride(), *pat.stride(),
            DOT_PRECISION=_dot_precision(compute),
        )
    return index, sim
