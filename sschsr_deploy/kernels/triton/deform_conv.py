"""Modulated deformable convolution (DCNv2) as a Triton implicit GEMM: bilinear samples gathered on the fly, ``tl.dot``.

Semantics are exactly those of :func:`sschsr_deploy.ops.deform_conv.modulated_deform_conv2d_reference`: offsets hold
(dy, dx) pairs, offset group major then kernel tap; a bilinear corner outside the image reads zero; the sample is
multiplied by the mask (``None`` = ones) before the weight contraction; any kernel size, stride, padding, dilation,
``groups`` and ``offset_groups``.

One program computes a tile of BLOCK_P output pixels × BLOCK_O output channels of one (batch, conv group). It walks
the reduction axis K = (C/groups)·kh·kw in blocks of BLOCK_K (k = in-channel · kh·kw + tap, the weight's own order),
builds the BLOCK_P × BLOCK_K tile of modulated bilinear samples in registers (im2col is never materialised) and
multiplies it with the BLOCK_K × BLOCK_O weight tile, accumulating in fp32. fp32 inputs use ``input_precision="ieee"``
so that a GPU does not silently fall back to TF32; fp16/bf16 inputs feed the tensor cores in their own dtype.

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

__all__ = ["deform_conv2d_triton"]

_INTERPRET = triton_interpreting()


# The GPU autotune space, whatever the interpreter flag (so that it can be compiled ahead of time on a CPU).
GPU_CONFIGS = (
    triton.Config({"BLOCK_P": 64, "BLOCK_O": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 64, "BLOCK_O": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 128, "BLOCK_O": 64, "BLOCK_K": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_P": 128, "BLOCK_O": 128, "BLOCK_K": 32}, num_warps=8, num_stages=2),
)


def _configs() -> list[triton.Config]:
    if _INTERPRET:  # the interpreter cannot autotune over several configs; large tiles keep it fast
        return [triton.Config({"BLOCK_P": 128, "BLOCK_O": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return list(GPU_CONFIGS)


_ACTIVE_CONFIGS = _configs()


@triton.autotune(configs=_ACTIVE_CONFIGS, key=["Og", "KDIM", "KH", "KW"])
@triton.jit
def _deform_conv2d_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, y_ptr,
    H, W, Wo, NPIX, GROUPS, Og, Cg, KDIM, CPG,
    x_sb, x_sc, x_sh, x_sw,
    o_sb, o_sc, o_sh, o_sw,
    m_sb, m_sc, m_sh, m_sw,
    w_so, w_sc, w_sh, w_sw,
    y_sb, y_sc, y_sh, y_sw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    KK: tl.constexpr = KH * KW
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_bg = tl.program_id(2)
    b = (pid_bg // GROUPS).to(tl.int64)  # batch offsets in int64: B·C·H·W may exceed 2**31
    gi = pid_bg % GROUPS

    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < NPIX
    ho = p // Wo
    wo = p % Wo
    base_y = (ho * SH - PH).to(tl.float32)
    base_x = (wo * SW - PW).to(tl.float32)
    oc = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # output channel inside the conv group
    oc_ok = oc < Og

    x_base = x_ptr + b * x_sb
    off_base = off_ptr + b * o_sb + (ho * o_sh + wo * o_sw)[:, None]
    msk_base = msk_ptr + b * m_sb + (ho * m_sh + wo * m_sw)[:, None]
    w_base = w_ptr + ((gi * Og + oc) * w_so)[None, :]

    acc = tl.full((BLOCK_P, BLOCK_O), 0.0, dtype=tl.float32)
    for k0 in range(0, KDIM, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < KDIM
        cin = kk // KK
        tap = kk % KK
        ti = tap // KW
        tj = tap % KW
        c = gi * Cg + cin  # input channel
        ch = (c // CPG) * KK + tap  # (offset group, tap) → mask channel; offset channels 2·ch (dy) and 2·ch + 1 (dx)
        pk_ok = p_ok[:, None] & k_ok[None, :]

        dy = tl.load(off_base + (2 * ch * o_sc)[None, :], mask=pk_ok, other=0.0).to(tl.float32)
        dx = tl.load(off_base + ((2 * ch + 1) * o_sc)[None, :], mask=pk_ok, other=0.0).to(tl.float32)
        py = base_y[:, None] + (ti * DH).to(tl.float32)[None, :] + dy
        px = base_x[:, None] + (tj * DW).to(tl.float32)[None, :] + dx
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        ly = py - y0f
        lx = px - x0f
        hy = 1.0 - ly
        hx = 1.0 - lx
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        y1 = y0 + 1
        x1 = x0 + 1
        oky0 = (y0 >= 0) & (y0 < H)
        oky1 = (y1 >= 0) & (y1 < H)
        okx0 = (x0 >= 0) & (x0 < W)
        okx1 = (x1 >= 0) & (x1 < W)
        cptr = x_base + (c * x_sc)[None, :]
        v00 = tl.load(cptr + y0 * x_sh + x0 * x_sw, mask=pk_ok & oky0 & okx0, other=0.0).to(tl.float32)
        v01 = tl.load(cptr + y0 * x_sh + x1 * x_sw, mask=pk_ok & oky0 & okx1, other=0.0).to(tl.float32)
        v10 = tl.load(cptr + y1 * x_sh + x0 * x_sw, mask=pk_ok & oky1 & okx0, other=0.0).to(tl.float32)
        v11 = tl.load(cptr + y1 * x_sh + x1 * x_sw, mask=pk_ok & oky1 & okx1, other=0.0).to(tl.float32)
        val = v00 * (hy * hx) + v01 * (hy * lx) + v10 * (ly * hx) + v11 * (ly * lx)
        if HAS_MASK:
            val = val * tl.load(msk_base + (ch * m_sc)[None, :], mask=pk_ok, other=0.0).to(tl.float32)

        wt = tl.load(
            w_base + (cin * w_sc + ti * w_sh + tj * w_sw)[:, None],
            mask=k_ok[:, None] & oc_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(val.to(wt.dtype), wt, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + gi * Og + oc, mask=oc_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + b * y_sb + ((gi * Og + oc) * y_sc)[None, :] + (ho * y_sh + wo * y_sw)[:, None]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & oc_ok[None, :])


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(pair) != 2:
        raise InputValidationError(f"deform conv: {name} must be an int or a pair, got {v!r}")
    return pair  # type: ignore[return-value]


def _dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 ("ieee") for fp32 operands; fp16/bf16 ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_grid(op: str, npix: int, og: int, batch_groups: int) -> None:
    """The largest grid any autotune config launches (the smallest tiles) must fit CUDA's grid limits."""
    block_p = min(cfg.kwargs["BLOCK_P"] for cfg in _ACTIVE_CONFIGS)
    block_o = min(cfg.kwargs["BLOCK_O"] for cfg in _ACTIVE_CONFIGS)
    grid = (triton.cdiv(npix, block_p), triton.cdiv(og, block_o), batch_groups)
    advice = ("split the image into tiles", "use fewer output channels per group",
              "split the batch (or the groups) over several calls")
    check_grid(op, grid, advice)


def deform_conv2d_triton(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    offset_groups: int = 1,
) -> Tensor:
    """Modulated deformable convolution; same arguments and result as ``modulated_deform_conv2d_reference``.

    input (B, C, H, W) fp32/fp16/bf16; offset (B, 2·G·kh·kw, Ho, Wo); mask (B, G·kh·kw, Ho, Wo) or None; weight
    (O, C/groups, kh, kw) and bias (O,) in the input's dtype. Offsets and mask may have any float dtype (they are read
    as fp32). Any strides are accepted (nothing is copied). Returns (B, O, Ho, Wo) in the input's dtype.
    """
    op = "deform conv (triton)"
    if input.dim() != 4 or weight.dim() != 4 or offset.dim() != 4 or (mask is not None and mask.dim() != 4):
        raise InputValidationError(f"{op}: input, offset, mask and weight must be 4-D")
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputValidationError(f"{op}: input dtype {input.dtype} is not fp32, fp16 or bf16")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise InputValidationError(f"{op}: weight/bias dtype must equal the input's {input.dtype}")
    if not offset.is_floating_point() or (mask is not None and not mask.is_floating_point()):
        raise InputValidationError(f"{op}: offset and mask must be floating point")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or groups < 1 or offset_groups < 1:
        raise InputValidationError(f"{op}: stride/dilation/groups must be ≥ 1 and padding ≥ 0")
    b, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    g = offset_groups
    if c % g or c % groups or o % groups or cg * groups != c:
        raise InputValidationError(
            f"{op}: channels {c} must be divisible by offset_groups {g} and groups {groups}, "
            f"out channels {o} by groups, and weight in-channels {cg} × groups must equal {c}"
        )
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if ho < 1 or wo < 1:
        raise InputValidationError(f"{op}: output would be empty ({ho}×{wo}) for input {h}×{w}")
    k = kh * kw
    if tuple(offset.shape) != (b, 2 * g * k, ho, wo):
        raise InputValidationError(f"{op}: offset shape {tuple(offset.shape)} != {(b, 2 * g * k, ho, wo)}")
    if mask is not None and tuple(mask.shape) != (b, g * k, ho, wo):
        raise InputValidationError(f"{op}: mask shape {tuple(mask.shape)} != {(b, g * k, ho, wo)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise InputValidationError(f"{op}: bias shape {tuple(bias.shape)} != {(o,)}")
    device = check_launch_devices(op, _INTERPRET, input, offset, mask, weight, bias)

    out = torch.empty((b, o, ho, wo), dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    og = o // groups
    npix = ho * wo
    _check_grid(op, npix, og, b * groups)
    msk = mask if mask is not None else offset  # placeholder pointer, never read when HAS_MASK is False
    bia = bias if bias is not None else weight
    check_int32_extent(op, input, offset, msk, out)

    def grid(meta):
        return (triton.cdiv(npix, meta["BLOCK_P"]), triton.cdiv(og, meta["BLOCK_O"]), b * groups)

    with launch_device(device):
        _deform_conv2d_kernel[grid](
            input, offset, msk, weight, bia, out,
            h, w, wo, npix, groups, og, cg, cg * k, c // g,
            *input.stride(), *offset.stride(), *msk.stride(), *weight.stride(), *out.stride(),
            sh, sw, ph, pw, dh, dw,
            KH=kh, KW=kw, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
            DOT_PRECISION=_dot_precision(input.dtype),
        )
    return out
