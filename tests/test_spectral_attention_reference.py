"""The plain-PyTorch spectral attention (the ground truth of every kernel) against a per-head loop."""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.ops import spectral_attention_reference


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _attention_loop(q, k, v, tau, heads):
    b, c, h, w = q.shape
    out = torch.empty_like(v)
    ch = c // heads
    for bi in range(b):
        for hd in range(heads):
            sl = slice(hd * ch, (hd + 1) * ch)
            qq = q[bi, sl].reshape(ch, -1)
            kk = k[bi, sl].reshape(ch, -1)
            qq = qq / qq.norm(dim=1, keepdim=True).clamp_min(1e-12)
            kk = kk / kk.norm(dim=1, keepdim=True).clamp_min(1e-12)
            a = torch.softmax(qq @ kk.T * tau.flatten()[hd], dim=1)
            out[bi, sl] = (a @ v[bi, sl].reshape(ch, -1)).reshape(ch, h, w)
    return out


@pytest.mark.parametrize(("b", "c", "h", "w", "heads"), [(1, 8, 5, 7, 2), (2, 12, 9, 4, 3), (1, 6, 3, 3, 1)])
def test_spectral_attention_matches_loop(b, c, h, w, heads):
    g = torch.Generator().manual_seed(c * h)
    q, k, v = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    tau = 1 + torch.rand(heads, 1, 1, generator=g, dtype=torch.float64)
    ref = _attention_loop(q, k, v, tau, heads)
    assert rel_err(spectral_attention_reference(q, k, v, tau, heads), ref) <= 1e-12
    out32 = spectral_attention_reference(q.float(), k.float(), v.float(), tau.float().flatten(), heads)
    assert rel_err(out32.double(), ref) <= 1e-5


def test_spectral_attention_zero_channel_is_safe():
    q = torch.randn(1, 4, 6, 6)
    q[:, 1] = 0  # a zero channel: the 1e-12 clamp keeps the result finite
    out = spectral_attention_reference(q, q.clone(), torch.randn(1, 4, 6, 6), torch.ones(2), 2)
    assert torch.isfinite(out).all()


def test_spectral_attention_errors():
    q = torch.randn(1, 6, 4, 4)
    with pytest.raises(InputValidationError, match="not divisible by 4 heads"):
        spectral_attention_reference(q, q, q, torch.ones(4), 4)
    with pytest.raises(InputValidationError, match="temperature has 3 values, need 2"):
        spectral_attention_reference(q, q, q, torch.ones(3), 2)
    with pytest.raises(InputValidationError, match="share one"):
        spectral_attention_reference(q, q[:, :, :3], q, torch.ones(2), 2)
