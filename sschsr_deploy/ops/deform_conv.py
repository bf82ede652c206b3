"""Modulated deformable convolution (DCNv2): the plain-PyTorch reference that every kernel is checked against.

Semantics are those of mmcv's ``modulated_deform_conv2d`` and ONNX ``DeformConv`` (which agree): offsets hold (dy, dx)
pairs, offset group major then kernel tap (row-major over the kernel window); each bilinear corner that falls outside
the image contributes zero; the sampled value is multiplied by the mask before the weight contraction.

The reference gathers the four bilinear corners explicitly with integer indices (no coordinate normalisation round
trip as ``grid_sample`` would do), one kernel tap at a time, so its memory is O(C·H·W) and not O(C·K·H·W).

Training takes a second plain-PyTorch formulation, :func:`modulated_deform_conv2d_sampled`: all taps in one
``grid_sample`` call and one matrix product. Its backward is ``grid_sample``'s fused kernel instead of the reference's
per-corner ``gather`` → ``scatter_add`` chains and per-tap ``select`` backwards (which zero-fill the whole offset
gradient 18 times per call); at the tiny model's full-resolution decoder level (4×16×128², 8 offset groups) forward +
backward is 4.9x faster on 2 CPU threads, a whole tiny training step 1.22x (``benchmarks/bench_train_step.py``). It
equals the reference up to the normalisation round trip (relative 1e-6 in fp32, tests/test_deform_conv_autograd.py)
and costs O(C·K·Ho·Wo) memory, which is why inference keeps the native kernels and the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputValidationError
from ..precision import float32_island
from ._backend import choose, define_op


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def bilinear_gather_zero(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample ``img`` (N, C, H, W) at float positions ``y``, ``x`` (N, P) in pixel units; corners outside read zero.

    Returns (N, C, P). Computes in the dtype of ``img`` (positions are taken as given).
    """
    n, c, h, w = img.shape
    flat = img.reshape(n, c, h * w)
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    ly = (y - y0).to(img.dtype)
    lx = (x - x0).to(img.dtype)
    y0 = y0.to(torch.long)
    x0 = x0.to(torch.long)
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy = y0 + dy
            xx = x0 + dx
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).unsqueeze(1).expand(n, c, -1)
            v = torch.gather(flat, 2, idx)
            wgt = (wy * wx * valid.to(img.dtype)).unsqueeze(1)
            term = v * wgt
            out = term if out is None else out + term
    return out


def _output_size(
    input: Tensor, offset: Tensor, mask: Tensor | None, weight: Tensor, stride: tuple[int, int],
    padding: tuple[int, int], dilation: tuple[int, int], groups: int, offset_groups: int,
) -> tuple[int, int]:
    """(Ho, Wo), after checking that channels, groups, offsets and mask agree (clear errors, not shape crashes)."""
    b, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    k = kh * kw
    g = offset_groups
    if c % g or c % groups or o % groups or cg * groups != c:
        raise InputValidationError(
            f"deform conv: channels {c} must be divisible by offset_groups {g} and groups {groups}, "
            f"and weight in-channels {cg} × groups must equal {c}"
        )
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    if offset.shape != (b, 2 * g * k, ho, wo):
        raise InputValidationError(f"deform conv: offset shape {tuple(offset.shape)} != {(b, 2 * g * k, ho, wo)}")
    if mask is not None and mask.shape != (b, g * k, ho, wo):
        raise InputValidationError(f"deform conv: mask shape {tuple(mask.shape)} != {(b, g * k, ho, wo)}")
    return ho, wo


def modulated_deform_conv2d_reference(
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
    """Reference modulated deformable convolution.

    input (B, C, H, W); offset (B, 2·G·kh·kw, Ho, Wo) with (dy, dx) pairs; mask (B, G·kh·kw, Ho, Wo) or None (all ones);
    weight (O, C/groups, kh, kw); G = ``offset_groups``. Returns (B, O, Ho, Wo).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    k = kh * kw
    g = offset_groups
    ho, wo = _output_size(input, offset, mask, weight, (sh, sw), (ph, pw), (dh, dw), groups, g)

    off = offset.reshape(b, g, k, 2, ho * wo)
    msk = None if mask is None else mask.reshape(b, g, k, ho * wo)
    rows = torch.arange(ho, device=input.device, dtype=offset.dtype) * sh - ph
    cols = torch.arange(wo, device=input.device, dtype=offset.dtype) * sw - pw
    base_y = rows.view(ho, 1).expand(ho, wo).reshape(-1)
    base_x = cols.view(1, wo).expand(ho, wo).reshape(-1)
    grouped = input.reshape(b * g, c // g, h, w)
    out = input.new_zeros(b, o, ho * wo)
    w_groups = weight.reshape(groups, o // groups, cg, k)
    for tap in range(k):
        i, j = divmod(tap, kw)
        py = base_y + i * dh + off[:, :, tap, 0]  # (B, G, P)
        px = base_x + j * dw + off[:, :, tap, 1]
        val = bilinear_gather_zero(grouped, py.reshape(b * g, -1), px.reshape(b * g, -1))  # (B·G, C/G, P)
        val = val.reshape(b, g, c // g, ho * wo)
        if msk is not None:
            val = val * msk[:, :, tap].unsqueeze(2)
        val = val.reshape(b, groups, cg, ho * wo)
        out = out + torch.einsum("goc,bgcp->bgop", w_groups[..., tap], val).reshape(b, o, ho * wo)
    if bias is not None:
        out = out + bias.view(1, o, 1)
    return out.reshape(b, o, ho, wo)


def modulated_deform_conv2d_sampled(
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
    """The reference's semantics through one ``grid_sample`` over all taps (the differentiable path, see module doc).

    ``grid_sample(align_corners=True, padding_mode="zeros")`` zeroes each bilinear corner outside the image on its own,
    exactly the reference's border rule. Images with a side of 1 pixel (where the normalisation divides by zero) and
    dtypes other than fp32/fp64 go to the reference.
    """
    b, c, h, w = input.shape
    if h < 2 or w < 2 or input.dtype not in (torch.float32, torch.float64):
        return modulated_deform_conv2d_reference(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                                 offset_groups)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    o, cg, kh, kw = weight.shape
    k = kh * kw
    g = offset_groups
    ho, wo = _output_size(input, offset, mask, weight, (sh, sw), (ph, pw), (dh, dw), groups, g)

    dt, dev = offset.dtype, offset.device
    off = offset.reshape(b, g, k, 2, ho, wo)
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).repeat_interleave(kw).view(1, 1, k, 1, 1)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).repeat(kh).view(1, 1, k, 1, 1)
    rows = (torch.arange(ho, device=dev, dtype=dt) * sh - ph).view(1, 1, 1, ho, 1)
    cols = (torch.arange(wo, device=dev, dtype=dt) * sw - pw).view(1, 1, 1, 1, wo)
    # pixel -> [-1, 1] with align_corners=True: -1 is pixel 0, +1 is pixel size-1
    gy = (rows + tap_y + off[:, :, :, 0]) * (2.0 / (h - 1)) - 1.0
    gx = (cols + tap_x + off[:, :, :, 1]) * (2.0 / (w - 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(b * g, k * ho, wo, 2).to(input.dtype)
    val = F.grid_sample(input.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)  # (B·G, C/G, K·Ho, Wo)
    val = val.reshape(b, g, c // g, k, ho * wo)
    if mask is not None:
        val = val * mask.reshape(b, g, 1, k, ho * wo).to(val.dtype)
    # (B, groups, C/groups·K, P): channel-major, tap-minor, as weight.reshape(O, C/groups·K) is laid out
    val = val.reshape(b, groups, cg * k, ho * wo)
    out = torch.matmul(weight.reshape(groups, o // groups, cg * k), val).reshape(b, o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


SCHEMA = (
    "modulated_deform_conv2d(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups, int offset_groups) -> Tensor"
)
ENV_VAR = "SSCHSR_DEFORM_CONV_BACKEND"


def _fake(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    b, _, h, w = input.shape
    o, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    return input.new_empty((b, o, ho, wo))


define_op("modulated_deform_conv2d", SCHEMA, modulated_deform_conv2d_reference, _fake)


@float32_island
def modulated_deform_conv2d(
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
    """Modulated deformable convolution as the model calls it: picks native / Triton / reference per call
    (``SSCHSR_DEFORM_CONV_BACKEND`` overrides; see ``ops/_backend.py``). With gradients needed, the reference path is
    :func:`modulated_deform_conv2d_sampled`."""
    args = (input, offset, mask, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups, offset_groups)
    tensors = [t for t in (input, offset, mask, weight, bias) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    backend = choose(ENV_VAR, "modulated_deform_conv2d", input.device, needs_grad)
    if backend == "native":
        return torch.ops.sschsr.modulated_deform_conv2d(*args)
    if backend == "triton":
        from ..kernels.triton.deform_conv import deform_conv2d_triton

        return deform_conv2d_triton(*args)
    if needs_grad:
        return modulated_deform_conv2d_sampled(*args)
    return modulated_deform_conv2d_reference(*args)
