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
from dcn_cases import CASES, make_case, rel_err

from sschsr_deploy.ops import modulated_deform_conv2d
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference, modulated_deform_conv2d_sampled

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _case(*case, seed, dtype, away_from_integers=False):
    tensors, args = make_case(*case, seed=seed, dtype=dtype, away_from_integers=away_from_integers)
    return [t.requires_grad_() for t in tensors], args


def _both(tensors, args):
    ref = modulated_deform_conv2d_reference(*tensors, *args)
    grads_ref = torch.autograd.grad((ref * ref.detach().sin()).sum(), tensors)
    out = modulated_deform_conv2d_sampled(*tensors, *args)
    grads = torch.autograd.grad((out * out.detach().sin()).sum(), tensors)
    return ref, out, grads_ref, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_match_reference(case, dtype):
    tensors, args = _case(*case, seed=7, dtype=dtype)
    ref, out, grads_ref, grads = _both(tensors, args)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    for i, name in ((0, "input"), (2, "mask"), (3, "weight"), (4, "bias")):
        assert rel_err(grads[i], grads_ref[i]) <= TOL[dtype], name
    # the offset gradient, on offsets away from the integer kinks
    tensors, args = _case(*case, seed=8, dtype=dtype, away_from_integers=True)
    _, _, grads_ref, grads = _both(tensors, args)
    assert rel_err(grads[1], grads_ref[1]) <= TOL[dtype] * 10


def test_gradcheck_fp64():
    tensors, args = _case(1, 4, 3, 5, 6, 3, 1, 1, 1, 1, 2, 1.5, seed=3, dtype=torch.float64, away_from_integers=True)
    assert torch.autograd.gradcheck(lambda *t: modulated_deform_conv2d_sampled(*t, *args), tuple(tensors))


def test_non_contiguous_inputs():
    tensors, args = _case(2, 8, 8, 9, 10, 3, 1, 1, 1, 1, 4, 2.0, seed=5, dtype=torch.float32)
    x, off, m, wt, bs = (t.detach() for t in tensors)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    off_strided = torch.stack([off, off], dim=-1)[..., 0]  # non-contiguous view with the same values
    m_cl = m.contiguous(memory_format=torch.channels_last)
    assert not off_strided.is_contiguous() and not x_nc.is_contiguous()
    out = modulated_deform_conv2d_sampled(x_nc, off_strided, m_cl, wt, bs, *args)
    assert rel_err(out, modulated_deform_conv2d_reference(x, off, m, wt, bs, *args)) <= 2e-5


def test_outside_samples_read_zero_and_single_pixel_images_fall_back():
    tensors, args = _case(1, 4, 4, 6, 6, 3, 1, 1, 1, 1, 1, 1.0, seed=1, dtype=torch.float32)
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
    tensors, args = _case(1, 8, 8, 8, 8, 3, 1, 1, 1, 1, 8, 2.0, seed=2, dtype=torch.float32)
    stride, pad, dil, groups, og = args
    out = modulated_deform_conv2d(*tensors, stride, pad, dil, groups, og)
    out.sum().backward()
    assert calls and tensors[1].grad is not None and tensors[1].grad.abs().sum() > 0
    with torch.no_grad():
        modulated_deform_conv2d(*tensors, stride, pad, dil, groups, og)
    assert len(calls) == 1  # inference does not take it
