"""Reference-guided spectral attention stages of the decoder (official ``spectralAttentionPositionLayer``, spec §3.8.3).

Restormer-style blocks whose attention is over channels ("spectral"): a SelfLayer (MDTA + GDFN) followed by a
CrossLayer in which the aggregated reference feature gates the values (GatedMDTA + GDFN). No conv here has a bias.
The global attention core is the ``spectral_attention`` op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import spectral_attention
from ..precision import float32_module

LN_EPS = 1e-5
FFN_EXPANSION = 2.66


class _LayerNormBody(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


@float32_module
class ChannelLayerNorm(nn.Module):
    """Per-pixel LayerNorm over the channels of an NCHW tensor, biased variance, eps 1e-5 ("WithBias" type).

    A tensor stored channels-last (N, H, W, C in memory) is normalised by one fused ``layer_norm`` over its last
    memory dimension (a view, no copy); others by the elementwise formulation (what the ONNX export traces)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _LayerNormBody(dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] > 1 and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.body.weight, self.body.bias, LN_EPS)
            return y.permute(0, 3, 1, 2)
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        w = self.body.weight.view(1, -1, 1, 1)
        b = self.body.bias.view(1, -1, 1, 1)
        return (x - mu) / torch.sqrt(var + LN_EPS) * w + b


def _dwconv(ch: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)


def _conv1x1(i: int, o: int) -> nn.Conv2d:
    return nn.Conv2d(i, o, 1, bias=False)


class PositionalEmbedding(nn.Sequential):
    """PE(v) = DW3×3 → exact GELU → DW3×3 (keys ``pos_emb.0``, ``pos_emb.2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__(_dwconv(dim), nn.GELU(), _dwconv(dim))


class MDTA(nn.Module):
    """Multi-Dconv-head transposed (channel) self-attention plus the positional term PE(v)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = _conv1x1(dim, 3 * dim)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=False)
        self.project_out = _conv1x1(dim, dim)
        self.pos_emb = PositionalEmbedding(dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        out = spectral_attention(q, k, v, self.temperature, self.heads)
        return self.project_out(out) + self.pos_emb(v)


class GatedMDTA(nn.Module):
    """Cross attention where queries and keys come from the HSI stream and the reference only gates the values."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = _conv1x1(dim, dim)
        self.q_dwconv = _dwconv(dim)
        self.kv = _conv1x1(dim, 2 * dim)
        self.kv_dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False)
        self.project_out = _conv1x1(dim, dim)
        self.pos_emb = PositionalEmbedding(dim)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        q = self.q_dwconv(self.q(x))
        k, v = self.kv_dwconv(self.kv(x)).chunk(2, dim=1)
        out = spectral_attention(q, k, v * guide, self.temperature, self.heads)
        return self.project_out(out) + self.pos_emb(v)


class GDFN(nn.Module):
    """Gated depthwise feed-forward: 1×1 → DW3×3 → GELU(u₁)·u₂ → 1×1, hidden = ⌊2.66·d⌋."""

    def __init__(self, dim: int, expansion: float = FFN_EXPANSION) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = _conv1x1(dim, 2 * hidden)
        self.dwconv = _dwconv(2 * hidden)
        self.project_out = _conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        u1, u2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(u1) * u2)


class SelfLayer(nn.Module):
    """x ← x + MDTA(LN₁x); x ← x + GDFN(LN₂x)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class CrossLayer(nn.Module):
    """x ← x + GatedMDTA(LN₁x, LN₂y); x ← x + GDFN(LN₃x). LN₂ normalises the reference guide."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = GatedMDTA(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim)
        self.norm3 = ChannelLayerNorm(dim)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), self.norm2(guide))
        return x + self.ffn(self.norm3(x))


class SpectralAttentionBlock(nn.Module):
    """One body block: SelfLayer then CrossLayer on the stream; the guide passes through unchanged."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = SelfLayer(dim, heads)
        self.cattn = CrossLayer(dim, heads)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        return self.cattn(self.attn(x), guide)


class _PatchEmbed(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(i, o, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Upsample(nn.Module):
    """conv 3×3 d→4d then PixelShuffle(2) (keys ``up.body.0``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, 4 * dim, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class SpectralAttentionStage(nn.Module):
    """patch_embed(E ‖ X) → blocks guided by the aggregated reference A → optional ×2 upsample → output conv."""

    def __init__(self, inp: int, dim: int, out: int, blocks: int, heads: int, upsample: bool) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(inp, dim)
        self.body = nn.ModuleList(SpectralAttentionBlock(dim, heads) for _ in range(blocks))
        self.up = _Upsample(dim) if upsample else None
        self.output = nn.Conv2d(dim, out, 3, padding=1, bias=False)

    def forward(self, feat: Tensor, guide: Tensor, prev: Tensor | None = None) -> Tensor:
        x = self.patch_embed(feat if prev is None else torch.cat([feat, prev], dim=1))
        for block in self.body:
            x = block(x, guide)
        if self.up is not None:
            x = self.up(x)
        return self.output(x)
