"""Spectral (channel) attention in Triton: one pass for the Gram matrix and the L2 norms, softmax on c×c, then A·V.

Semantics are those of :func:`sschsr_deploy.ops.spectral_attention.spectral_attention_reference`: per head,
softmax((q̂ k̂ᵀ)·τ) v with q̂, k̂ each channel divided by max(‖·‖₂, 1e-12). Because q̂ k̂ᵀ = (q kᵀ) / (‖q‖ ‖k‖ᵀ) the
normalisation is applied to the small c×c Gram matrix, so q̂ and k̂ are never materialised:

1. ``_gram_norms_kernel``: one pass over the pixels computes G = q kᵀ (``tl.dot``, fp32 accumulation) and the squared
   channel norms of q and k together. The pixels are split over S programs per c×c tile; each writes its fp32 partial
   sums and ``torch.sum`` adds the S partials (a deterministic second pass, no atomics).
2. torch, on the (B, heads, c, c) fp32 matrices: divide by the clamped norms, scale by τ, softmax.
3. ``_attn_apply_kernel``: out = A·v, tiled over (channel block, pixel block), fp32 accumulation.

Tested on the CPU through the Triton interpreter (fp32, fp16); every GPU configuration × dtype (bf16 included) is
compiled for sm_80 and sm_90 and assembled by ptxas on the CPU (:mod:`.compile_check`); unverified on GPU hardware.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...errors import InputValidationError
from .. import check_grid, check_int32_extent, check_launch_devices, launch_device, triton_interpreting

__all__ = ["attention_apply_triton", "gram_and_norms_triton", "spectral_attention_triton"]

_INTERPRET = triton_interpreting()
L2_EPS = 1e-12
_MAX_BLOCK_C = 64  # c×c tiles larger than this are split over a grid of channel blocks
_SPLIT_QUANTUM = 256  # pixels per split are a multiple of this (≥ every BLOCK_N below)


@triton.jit
def _add(a, b):
    return a + b


# Reductions go through the builtin tl.reduce, never tl.sum: triton's @jit library functions (tl.sum, tl.zeros, ...)
# fail under the interpreter when triton was imported (e.g. by torch._dynamo) before TRITON_INTERPRET was set. The
# combine function is tl.sum's own when this triton has it, because the interpreter reduces that one with numpy and
# calls any other element by element (about 1000× slower).
_SUM = getattr(tl.standard, "_sum_combine", _add)


# The GPU autotune spaces, whatever the interpreter flag (so that they can be compiled ahead of time on a CPU).
GRAM_GPU_CONFIGS = tuple(
    triton.Config({"BLOCK_N": n}, num_warps=nw, num_stages=2) for n, nw in ((64, 4), (128, 4), (128, 8))
)
APPLY_GPU_CONFIGS = tuple(
    triton.Config({"BLOCK_N": n}, num_warps=nw, num_stages=2) for n, nw in ((64, 4), (128, 4), (256, 8))
)


def _configs(gpu: tuple[triton.Config, ...]) -> list[triton.Config]:
    if _INTERPRET:  # the interpreter cannot autotune over several configs
        return [triton.Config({"BLOCK_N": 256}, num_warps=4, num_stages=1)]
    return list(gpu)


_APPLY_CONFIGS = _configs(APPLY_GPU_CONFIGS)


@triton.autotune(configs=_configs(GRAM_GPU_CONFIGS), key=["c", "BLOCK_C"])
@triton.jit
def _gram_norms_kernel(
    q_ptr, k_ptr, g_ptr, qsq_ptr, ksq_ptr,
    heads, c, N, n_per_split, S, NC,
    q_sb, q_sc, q_sn, k_sb, k_sc, k_sn,
    DOT_PRECISION: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    s = tl.program_id(1)
    bh = pid // (NC * NC)
    t = pid % (NC * NC)
    ci = t // NC
    cj = t % NC
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    rows = ci * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = cj * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = rows < c
    c_ok = cols < c
    q_base = q_ptr + b * q_sb + ((h * c + rows) * q_sc)[:, None]
    k_base = k_ptr + b * k_sb + ((h * c + cols) * k_sc)[:, None]

    acc = tl.full((BLOCK_C, BLOCK_C), 0.0, dtype=tl.float32)
    qs = tl.full((BLOCK_C,), 0.0, dtype=tl.float32)
    ks = tl.full((BLOCK_C,), 0.0, dtype=tl.float32)
    start = s * n_per_split
    stop = tl.minimum(start + n_per_split, N)
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < stop
        qt = tl.load(q_base + (n * q_sn)[None, :], mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        kt = tl.load(k_base + (n * k_sn)[None, :], mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(qt, tl.trans(kt), acc, input_precision=DOT_PRECISION)
        qf = qt.to(tl.float32)
        kf = kt.to(tl.float32)
        qs += tl.reduce(qf * qf, 1, _SUM)
        ks += tl.reduce(kf * kf, 1, _SUM)

    # partial sums: gram (B·heads, S, c, c), squared norms (B, S, C)
    g_ptrs = g_ptr + ((bh * S + s).to(tl.int64) * c * c) + (rows * c)[:, None] + cols[None, :]
    tl.store(g_ptrs, acc, mask=r_ok[:, None] & c_ok[None, :])
    sq_base = (b * S + s) * (heads * c) + h * c
    tl.store(qsq_ptr + sq_base + rows, qs, mask=r_ok & (cj == 0))
    tl.store(ksq_ptr + sq_base + cols, ks, mask=c_ok & (ci == 0))


@triton.autotune(configs=_APPLY_CONFIGS, key=["c", "BLOCK_C"])
@triton.jit
def _attn_apply_kernel(
    a_ptr, v_ptr, y_ptr,
    heads, c, N, NC,
    v_sb, v_sc, v_sn, y_sb, y_sc, y_sn,
    DOT_PRECISION: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)  # pixel blocks on axis 0: the only axis allowed more than 65535 programs
    pid = tl.program_id(1)
    bh = pid // NC
    ci = pid % NC
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    rows = ci * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = rows < c
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    a_base = a_ptr + bh.to(tl.int64) * c * c + (rows * c)[:, None]
    v_base = v_ptr + b * v_sb + (n * v_sn)[None, :]

    acc = tl.full((BLOCK_C, BLOCK_N), 0.0, dtype=tl.float32)
    for cj0 in range(0, c, BLOCK_C):
        cols = cj0 + tl.arange(0, BLOCK_C)
        c_ok = cols < c
        a = tl.load(a_base + cols[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
        vt = tl.load(v_base + ((h * c + cols) * v_sc)[:, None], mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a.to(vt.dtype), vt, acc, input_precision=DOT_PRECISION)

    y_ptrs = y_ptr + b * y_sb + ((h * c + rows) * y_sc)[:, None] + (n * y_sn)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=r_ok[:, None] & n_ok[None, :])


def _block_c(c: int) -> int:
    return min(_MAX_BLOCK_C, max(16, triton.next_power_of_2(c)))  # tl.dot needs ≥ 16


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp16/bf16 operands ignore the setting


def _check(q: Tensor, k: Tensor, heads: int, op: str, v: Tensor | None = None) -> torch.device:
    shapes = [q.shape, k.shape] + ([] if v is None else [v.shape])
    if q.dim() != 4 or any(s != q.shape for s in shapes):
        raise InputValidationError(f"{op}: q, k{', v' if v is not None else ''} must share one B×C×H×W shape, "
                                   f"got {[tuple(s) for s in shapes]}")
    if not isinstance(heads, int) or heads < 1 or q.shape[1] % heads:
        raise InputValidationError(f"{op}: {q.shape[1]} channels are not divisible by {heads} heads")
    dtypes = {q.dtype, k.dtype} | ({v.dtype} if v is not None else set())
    if len(dtypes) != 1 or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputValidationError(f"{op}: q, k, v must share one dtype among fp32/fp16/bf16, got {dtypes}")
    return check_launch_devices(op, _INTERPRET, q, k, v)


def _default_splits(programs: int, n: int, device: torch.device) -> int:
    """Pixel splits so that the Gram pass fills the GPU (≈ 2 programs per SM); one split under the interpreter."""
    max_splits = triton.cdiv(n, _SPLIT_QUANTUM)
    if device.type != "cuda" or _INTERPRET:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(max_splits, triton.cdiv(2 * sms, programs)))


def gram_and_norms_triton(
    q: Tensor, k: Tensor, heads: int, *, splits: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gram matrix and squared channel norms of q and k, in one pass over the pixels.

    q, k: (B, C, H, W), any strides. Returns ``gram`` (B, heads, c, c) fp32 with gram[b, h, i, j] = Σₙ q[b, h·c+i, n]
    k[b, h·c+j, n], and ``q_sq``, ``k_sq`` (B, C) fp32, the squared L2 norms of every channel over the pixels. The sums
    are additive over pixel tiles (the function of two pixel halves adds up to that of the whole). ``splits``: number of
    pixel chunks reduced in parallel (default: enough to fill the GPU; 1 under the interpreter).
    """
    op = "gram_and_norms (triton)"
    device = _check(q, k, heads, op)
    b, ch = q.shape[:2]
    c = ch // heads
    qf = q.flatten(2)  # (B, C, N): a view unless H and W cannot be merged
    kf = k.flatten(2)
    n = qf.shape[2]
    gram = torch.zeros((b, heads, c, c), dtype=torch.float32, device=q.device)
    q_sq = torch.zeros((b, ch), dtype=torch.float32, device=q.device)
    k_sq = torch.zeros((b, ch), dtype=torch.float32, device=q.device)
    if gram.numel() == 0 or n == 0:
        return gram, q_sq, k_sq
    block_c = _block_c(c)
    nc = triton.cdiv(c, block_c)
    programs = b * heads * nc * nc
    if splits is None:
        splits = _default_splits(programs, n, q.device)
    if splits < 1:
        raise InputValidationError(f"{op}: splits must be ≥ 1, got {splits}")
    n_per_split = triton.cdiv(triton.cdiv(n, splits), _SPLIT_QUANTUM) * _SPLIT_QUANTUM
    s = triton.cdiv(n, n_per_split)
    check_grid(op, (programs, s), ("split the batch (or the heads) over several calls", "pass fewer splits"))
    check_int32_extent(op, qf, kf)
    g_part = torch.empty((b, heads, s, c, c), dtype=torch.float32, device=q.device)
    qsq_part = torch.empty((b, s, ch), dtype=torch.float32, device=q.device)
    ksq_part = torch.empty((b, s, ch), dtype=torch.float32, device=q.device)
    with launch_device(device):
        _gram_norms_kernel[(programs, s)](
            qf, kf, g_part, qsq_part, ksq_part,
            heads, c, n, n_per_split, s, nc,
            *qf.stride(), *kf.stride(),
            DOT_PRECISION=_dot_precision(q.dtype), BLOCK_C=block_c,
        )
    if s == 1:
        return g_part[:, :, 0], qsq_part[:, 0], ksq_part[:, 0]
    return g_part.sum(dim=2), qsq_part.sum(dim=1), ksq_part.sum(dim=1)


def _check_apply_grid(op: str, b: int, heads: int, c: int, n: int) -> None:
    """The largest A·V grid any autotune config launches (the smallest BLOCK_N) must fit CUDA's grid limits."""
    block_n = min(cfg.kwargs["BLOCK_N"] for cfg in _APPLY_CONFIGS)
    grid = (triton.cdiv(n, block_n), b * heads * triton.cdiv(c, _block_c(c)))
    check_grid(op, grid, ("split the image into tiles", "split the batch (or the heads) over several calls"))


def attention_apply_triton(attn: Tensor, v: Tensor, heads: int) -> Tensor:
    """out[b, h·c+i] = Σⱼ attn[b, h, i, j] · v[b, h·c+j] over all pixels; attn (B, heads, c, c) fp32, v (B, C, H, W)."""
    op = "spectral attention (triton)"
    device = check_launch_devices(op, _INTERPRET, attn, v)
    b, ch, hh, ww = v.shape
    c = ch // heads
    vf = v.flatten(2)
    out = torch.empty((b, ch, hh, ww), dtype=v.dtype, device=v.device)
    n = vf.shape[2]
    if out.numel() == 0:
        return out
    _check_apply_grid(op, b, heads, c, n)
    attn = attn.to(torch.float32).contiguous()
    block_c = _block_c(c)
    nc = triton.cdiv(c, block_c)
    of = out.view(b, ch, n)
    check_int32_extent(op, vf, of)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), b * heads * nc)

    with launch_device(device):
        _attn_apply_kernel[grid](
            attn, vf, of, heads, c, n, nc, *vf.stride(), *of.stride(),
            DOT_PRECISION=_dot_precision(v.dtype), BLOCK_C=block_c,
        )
    return out


def spectral_attention_triton(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """softmax(q̂ k̂ᵀ τ) v per head; same arguments and result as ``spectral_attention_reference``.

    q, k, v: (B, C, H, W) sharing one dtype (fp32/fp16/bf16), any strides; temperature: ``heads`` values (any shape,
    e.g. (heads, 1, 1)). The Gram matrix, norms and softmax are fp32 whatever the input dtype. Returns (B, C, H, W) in
    the inputs' dtype.
    """
    op = "spectral attention (triton)"
    _check(q, k, heads, op, v)
    if temperature.numel() != heads:
        raise InputValidationError(f"{op}: temperature has {temperature.numel()} values, need {heads}")
    b, ch = q.shape[:2]
    c = ch // heads
    if q.numel():  # fail before the Gram pass when the A·V launch cannot run
        _check_apply_grid(op, b, heads, c, q.shape[2] * q.shape[3])
    gram, q_sq, k_sq = gram_and_norms_triton(q, k, heads)
    qn = q_sq.sqrt().clamp_min(L2_EPS).view(b, heads, c, 1)
    kn = k_sq.sqrt().clamp_min(L2_EPS).view(b, heads, 1, c)
    tau = temperature.to(device=gram.device, dtype=torch.float32).reshape(1, heads, 1, 1)
    attn = torch.softmax(gram / qn / kn * tau, dim=-1)
    return attention_apply_triton(attn, v, heads)
