"""Spectral (channel-wise, "transposed") attention: the plain-PyTorch reference of the MDTA core.

Per head h with c = C/heads channels: A_h = softmax((q̂ k̂ᵀ) · τ_h) over the last axis, out = A_h · v, where q̂ and k̂ are
each channel's H·W-vector divided by max(‖·‖₂, 1e-12) (spec §3.8.3, MDTA steps 2–5). The L2 norms and the Gram matrix
are sums over all pixels, which is why the attention is global over the image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import InputValidationError

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


def spectral_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, heads: int) -> Tensor:
    """Spectral attention as the model calls it; custom kernels plug in here (today: the reference)."""
    return spectral_attention_reference(q, k, v, temperature, heads)
