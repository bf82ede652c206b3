"""Random deformable-convolution problems shared by the CPU, GPU and autograd tests of ``modulated_deform_conv2d``.

Offsets are drawn at a given scale with every third row / second column rounded to integers (corners exactly on the
grid and on the borders), or, for tests of the offset gradient, kept at least 0.01 from an integer (the bilinear
weight's derivative jumps there).
"""

from __future__ import annotations

import torch

CASES = [
    # b, c, o, h, w, kernel, stride, pad, dil, groups, offset_groups, offset_scale
    (1, 16, 16, 9, 11, 3, 1, 1, 1, 1, 8, 2.0),  # decoder-like (3×3, 8 offset groups), odd size
    (2, 8, 6, 7, 5, 3, 2, 1, 1, 2, 2, 3.0),  # batch, stride 2, conv groups
    (3, 6, 4, 10, 13, 1, 1, 0, 1, 1, 3, 1.5),  # 1×1 kernel, 3 offset groups
    (1, 4, 8, 12, 9, 5, 1, 2, 2, 1, 1, 4.0),  # 5×5, dilation 2
    (2, 12, 12, 8, 8, 3, 1, 0, 1, 3, 4, 20.0),  # large offsets: most samples leave the image
    (1, 6, 5, 6, 14, (3, 2), (1, 2), (1, 0), (2, 1), 1, 2, 1.0),  # non-square everything
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in fp64 on the CPU."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def make_case(b, c, o, h, w, k, stride, pad, dil, groups, og, scale, seed, dtype=torch.float64, device="cpu",
              mask=True, bias=True, scaled_weight=False, away_from_integers=False):
    """(tensors [input, offset, mask, weight, bias], (stride, padding, dilation, groups, offset_groups)).

    Drawn in fp64 on the CPU from ``seed``, then cast to ``dtype`` on ``device``; ``scaled_weight`` divides the weight
    by √fan-in (outputs of order 1, for fp16 tests)."""
    kh, kw = pair(k)
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    dh, dw = pair(dil)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(o, c // groups, kh, kw, generator=g, dtype=torch.float64)
    if scaled_weight:
        wt = wt / (c // groups * kh * kw) ** 0.5
    off = scale * torch.randn(b, 2 * og * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    if away_from_integers:
        off = off.floor() + (off - off.floor()).clamp(0.01, 0.99)
    else:
        off[..., ::3, ::2] = torch.round(off[..., ::3, ::2])
    m = torch.rand(b, og * kh * kw, ho, wo, generator=g, dtype=torch.float64) if mask else None
    bs = torch.randn(o, generator=g, dtype=torch.float64) if bias else None
    tensors = [None if t is None else t.to(device=device, dtype=dtype) for t in (x, off, m, wt, bs)]
    return tensors, ((sh, sw), (ph, pw), (dh, dw), groups, og)
