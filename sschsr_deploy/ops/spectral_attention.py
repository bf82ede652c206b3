"""Spectral (channel-wise, "transposed") attention: the plain-PyTorch reference of the MDTA core.

Per head h with c = C/heads channels: A_h = softmax((q̂ k̂ᵀ) · τ_h) over the last axis, out = A_h · v, where q̂ and k̂ are
each channel's H·W-vector divided by max(‖·‖₂, 1e-12) (spec §3.8.3, MDTA steps 2–5). The L2 norms and the Gram matrix
are sums over all pixels, which is why the attention is global over the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputValidationError
from ..precision import float32_island
from ._backend import choose, define_op

L2_EPS = 1e-12


def _check(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise InputValidationError(
            f"spectral attention: q, k, v must share one B×C×H×W shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape[1] % heads:
        raise InputValidationError(f"spectral attention: {q.shape[1]} channels are not divisible by {heads} heads")
    if temperature.numel() != heads:
        raise InputValidationError(f"spectral attention: temperature has {temperature.numel()} values, need {heads}")
    return temperature.reshape(1, heads, 1, 1)


def spectral_attention_reference(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """softmax(q̂ k̂ᵀ τ) v per head, exactly as the official MDTA computes it. Returns B×C×H×W."""
    tau = _check(q, k, v, temperature, heads)
    b, c, h, w = q.shape
    qh = F.normalize(q.reshape(b, heads, c // heads, h * w), dim=-1, eps=L2_EPS)
    kh = F.normalize(k.reshape(b, heads, c // heads, h * w), dim=-1, eps=L2_EPS)
    attn = (qh @ kh.transpose(-2, -1)) * tau
    attn = attn.softmax(dim=-1)
    out = attn @ v.reshape(b, heads, c // heads, h * w)
    return out.reshape(b, c, h, w)


def is_channels_last(t: Tensor) -> bool:
    """True when ``t`` (B×C×H×W) keeps its channels adjacent in memory (channels-last storage, or a channel slice of
    it such as ``chunk``'s), so that pixels are rows of a matrix without a copy."""
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and t.stride(3) >= t.shape[1]


def spectral_attention_channels_last(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """The same function for channels-last tensors, as matrix products over pixel rows: per head the Gram matrix
    Qᵀ K (c × c) from the N × c pixel rows, the norms from the same rows, out rows = V Aᵀ. No NCHW copy of q, k or
    v is made and the result is channels-last (the CPU path of a channels-last model; ~1.2-1.5× the native kernel
    with its three layout copies). Returns B×C×H×W (channels-last storage)."""
    _check(q, k, v, temperature, heads)
    b, cc, h, w = q.shape
    c, n = cc // heads, h * w

    def rows(t: Tensor) -> Tensor:  # (heads, n, c) view of one image
        return t.permute(1, 2, 0).reshape(n, heads, c).transpose(0, 1)

    outs = []
    for i in range(b):
        qr, kr, vr = rows(q[i]), rows(k[i]), rows(v[i])
        gram = torch.bmm(qr.transpose(1, 2), kr)
        q_sq = torch.linalg.vector_norm(qr, dim=1).square().reshape(1, cc)
        k_sq = torch.linalg.vector_norm(kr, dim=1).square().reshape(1, cc)
        attn = attention_from_stats(gram[None], q_sq, k_sq, temperature)[0]
        outs.append(torch.bmm(vr, attn.transpose(1, 2)).transpose(0, 1).reshape(1, h, w, cc))
    return (outs[0] if b == 1 else torch.cat(outs)).permute(0, 3, 1, 2)


def gram_and_norms_reference(q: Tensor, k: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The pixel sums attention needs, in float32: Gram q·kᵀ per head (B, heads, c, c) and squared channel norms (B, C).

    They add across spatial tiles, which is what makes exactly tiled attention possible.
    """
    if q.dim() != 4 or q.shape != k.shape:
        raise InputValidationError(f"gram_and_norms: q and k must share one B×C×H×W shape, got {tuple(q.shape)}, "
                                   f"{tuple(k.shape)}")
    if q.shape[1] % heads:
        raise InputValidationError(f"gram_and_norms: {q.shape[1]} channels are not divisible by {heads} heads")
    b, c, h, w = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.reshape(b, heads, c // heads, h * w).to(acc)
    kf = k.reshape(b, heads, c // heads, h * w).to(acc)
    return qf @ kf.transpose(-2, -1), qf.square().sum(-1).reshape(b, c), kf.square().sum(-1).reshape(b, c)


def attention_from_stats(gram: Tensor, q_sq: Tensor, k_sq: Tensor, temperature: Tensor) -> Tensor:
    """softmax(q̂ k̂ᵀ τ) from the summed statistics: (B, heads, c, c), normalisation applied to the small matrix."""
    b, heads, c, _ = gram.shape
    qn = q_sq.reshape(b, heads, c, 1).sqrt().clamp_min(L2_EPS)
    kn = k_sq.reshape(b, heads, 1, c).sqrt().clamp_min(L2_EPS)
    return (gram / (qn * kn) * temperature.reshape(1, heads, 1, 1).to(gram.dtype)).softmax(dim=-1)


SCHEMA = "spectral_attention(Tensor q, Tensor k, Tensor v, Tensor temperature, int heads) -> Tensor"
GRAM_SCHEMA = "gram_and_norms(Tensor q, Tensor k, int heads) -> (Tensor, Tensor, Tensor)"
ENV_VAR = "SSCHSR_SPECTRAL_ATTENTION_BACKEND"


def _fake(q, k, v, temperature, heads):
    return torch.empty_like(v)


def _gram_fake(q, k, heads):
    b, c = q.shape[:2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty((b, heads, c // heads, c // heads), dtype=acc), q.new_empty((b, c), dtype=acc),
            q.new_empty((b, c), dtype=acc))


define_op("spectral_attention", SCHEMA, spectral_attention_reference, _fake)
define_op("gram_and_norms", GRAM_SCHEMA, gram_and_norms_reference, _gram_fake)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@float32_island
def spectral_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """Spectral attention as the model calls it (``SSCHSR_SPECTRAL_ATTENTION_BACKEND`` overrides the choice)."""
    backend = choose(ENV_VAR, "spectral_attention", q.device, _needs_grad(q, k, v, temperature))
    if backend == "native":
        if q.device.type == "cpu" and is_channels_last(q) and is_channels_last(k) and is_channels_last(v):
            return spectral_attention_channels_last(q, k, v, temperature, heads)  # no layout copies
        return torch.ops.sschsr.spectral_attention(q, k, v, temperature, heads)
    if backend == "triton":
        from ..kernels.triton.spectral_attention import spectral_attention_triton

        return spectral_attention_triton(q, k, v, temperature, heads)
    return spectral_attention_reference(q, k, v, temperature, heads)


@float32_island(out_like=None)  # fp32 statistics
def gram_and_norms(q: Tensor, k: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Partial attention statistics of one tile (see ``gram_and_norms_reference``), fastest backend."""
    backend = choose(ENV_VAR, "gram_and_norms", q.device, _needs_grad(q, k))
    if backend == "native":
        return torch.ops.sschsr.gram_and_norms(q, k, heads)
    if backend == "triton":
        from ..kernels.triton.spectral_attention import gram_and_norms_triton

        return gram_and_norms_triton(q, k, heads)
    return gram_and_norms_reference(q, k, heads)
