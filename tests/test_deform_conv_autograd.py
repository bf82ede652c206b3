"""The differentiable deformable-convolution path (``modulated_deform_conv2d_sampled``, what training runs) against
the gather reference: forward and every gradient.

Tolerances (relative error ‖out − ref‖ / ‖ref‖): fp64 1e-10 and fp32 2e-5 for the forward and the gradients of input,
mask, weight and bias; the offset gradient is compared on offsets whose fractional part stays ≥ 0.01 from an integer,
because the bilinear weight's derivative jumps at integer coordinates and the normalisation round trip of
``grid_sample`` (≈1e-7 px in fp32) may put a sample on the other side there. Edge cases: samples outside the image
(large offsets), integer offsets, strides / dilation / conv groups, non-contiguous inputs, 1-pixel-wide images.
"""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.ops import modulated_deform_conv2d
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference, modulated_deform_conv2d_sampled


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_case(b, c, o, h, w, k, stride, pad, dil, groups, og, scale, seed, dtype, away_from_integers=False):
    kh, kw = _pair(k)
    sh, sw = _pair(stride)
    ph, pw = _pair(pad)
    dh, dw = _pair(dil)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(o, c // groups, kh, kw, generator=g, dtype=torch.float64)
    off = scale * torch.randn(b, 2 * og * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    if away_from_integers:
        frac = off - off.floor()
        off = off.floor() + frac.clamp(0.01, 0.99)
    else:
        off[..., ::3, ::2] = torch.round(off[..., ::3, ::2])  # integer offsets: corners exactly on the grid
    m = torch.rand(b, og * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    bs = torch.randn(o, generator=g, dtype=torch.float64)
    tensors = [t.to(dtype).requires_grad_() for t in (x, off, m, wt, bs)]
    return tensors, ((sh, sw), (ph, pw), (dh, dw), groups, og)


CASES = [
    # b, c, o, h, w, kernel, stride, pad, dil, groups, offset_groups, offset_scale
    (2, 16, 16, 9, 11, 3, 1, 1, 1, 1, 8, 2.0),  # decoder-like (3×3, 8 offset groups), odd size
    (2, 8, 6, 7, 5, 3, 2, 1, 1, 2, 2, 3.0),  # stride 2, conv groups
    (3, 6, 4, 10, 13, 1, 1, 0, 1, 1, 3, 1.5),  # 1×1 kernel, 3 offset groups
    (1, 4, 8, 12, 9, 5, 1, 2, 2, 1, 1, 4.0),  # 5×5, dilation 2
    (2, 12, 12, 8, 8, 3, 1, 0, 1, 3, 4, 20.0),  # large offsets: most samples leave the image
    (1, 6, 5, 6, 14, (3, 2), (1, 2), (1, 0), (2, 1), 1, 2, 1.0),  # non-square everything
]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _both(tensors, args):
    ref = modulated_deform_conv2d_reference(*tensors, *args)
    grads_ref = torch.autograd.grad((ref * ref.detach().sin()).sum(), tensors)
    out = modulated_deform_conv2d_sampled(*tensors, *args)
    grads = torch.autograd.grad((out * out.detach().sin()).sum(), tensors)
    return ref, out, grads_ref, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_match_reference(case, dtype):
    tensors, args = make_case(*case, seed=7, dtype=dtype)
    ref, out, grads_ref, grads = _both(tensors, args)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    for i, name in ((0, "input"), (2, "mask"), (3, "weight"), (4, "bias")):
        assert rel_err(grads[i], grads_ref[i]) <= TOL[dtype], name
    # the offset gradient, on offsets away from the integer kinks
    tensors, args = make_case(*case, seed=8, dtype=dtype, away_from_integers=True)
    _, _, grads_ref, grads = _both(tensors, args)
    assert rel_err(grads[1], grads_ref[1]) <= TOL[dtype] * 10


def test_gradcheck_fp64():
    tensors, args = make_case(1, 4, 3, 5, 6, 3, 1, 1, 1, 1, 2, 1.5, seed=3, dtype=torch.float64,
                              away_from_integers=True)
    assert torch.autograd.gradcheck(lambda *t: modulated_deform_conv2d_sampled(*t, *args), tuple(tensors))


def test_non_contiguous_inputs():
    tensors, args = make_case(2, 8, 8, 9, 10, 3, 1, 1, 1, 1, 4, 2.0, seed=5, dtype=torch.float32)
    x, off, m, wt, bs = (t.detach() for t in tensors)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    off_strided = torch.stack([off, off], dim=-1)[..., 0]  # non-contiguous view with the same values
    m_cl = m.contiguous(memory_format=torch.channels_last)
    assert not off_strided.is_contiguous() and not x_nc.is_contiguous()
    out = modulated_deform_conv2d_sampled(x_nc, off_strided, m_cl, wt, bs, *args)
    assert rel_err(out, modulated_deform_conv2d_reference(x, off, m, wt, bs, *args)) <= 2e-5


def test_outside_samples_read_zero_and_single_pixel_images_fall_back():
    tensors, args = make_case(1, 4, 4, 6, 6, 3, 1, 1, 1, 1, 1, 1.0, seed=1, dtype=torch.float32)
    x, off, m, wt, bs = (t.detach() for t in tensors)
    far = torch.full_like(off, 1000.0)
    assert torch.allclose(modulated_deform_conv2d_sampled(x, far, m, wt, bs, *args),
                          bs.view(1, -1, 1, 1).expand(1, 4, 6, 6))
    x1 = torch.randn(1, 4, 1, 7)
    off1 = torch.randn(1, 18, 1, 7)
    m1 = torch.rand(1, 9, 1, 7)
    ref = modulated_deform_conv2d_reference(x1, off1, m1, wt, bs, *args)
    assert rel_err(modulated_deform_conv2d_sampled(x1, off1, m1, wt, bs, *args), ref) <= 1e-6


def test_training_dispatch_takes_the_sampled_path(monkeypatch):
    """With gradients needed, the public op runs the sampled formulation (and its result equals the reference)."""
    import sschsr_deploy.ops.deform_conv as dc

    calls = []
    monkeypatch.setattr(dc, "modulated_deform_conv2d_sampled",
                        lambda *a: calls.append(1) or modulated_deform_conv2d_sampled(*a))
    tensors, args = make_case(1, 8, 8, 8, 8, 3, 1, 1, 1, 1, 8, 2.0, seed=2, dtype=torch.float32)
    stride, pad, dil, groups, og = args
    out = modulated_deform_conv2d(*tensors, stride, pad, dil, groups, og)
    out.sum().backward()
    assert calls and tensors[1].grad is not None and tensors[1].grad.abs().sum() > 0
    with torch.no_grad():
        modulated_deform_conv2d(*tensors, stride, pad, dil, groups, og)
    assert len(calls) == 1  # inference does not take it
