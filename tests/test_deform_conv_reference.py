"""The plain-PyTorch deformable convolution (the ground truth of every kernel) against torchvision and
independent constructions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.ops import modulated_deform_conv2d_reference

torchvision_ops = pytest.importorskip("torchvision.ops")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


DCN_CASES = [
    # b, c, o, h, w, k, stride, pad, dil, groups, offset_groups, offset_scale
    (1, 16, 16, 9, 11, 3, 1, 1, 1, 1, 8, 2.0),
    (2, 8, 6, 7, 5, 3, 2, 1, 1, 2, 2, 3.0),
    (3, 6, 4, 10, 13, 1, 1, 0, 1, 1, 3, 1.5),
    (1, 4, 8, 12, 9, 5, 1, 2, 2, 1, 1, 4.0),
    (2, 12, 12, 8, 8, 3, 1, 0, 1, 3, 4, 20.0),  # large offsets: most samples leave the image
    (1, 6, 5, 6, 14, (3, 2), (1, 2), (1, 0), (2, 1), 1, 2, 1.0),
]


@pytest.mark.parametrize("case", DCN_CASES)
@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_deform_conv_matches_torchvision(case, with_mask, with_bias):
    b, c, o, h, w, k, stride, pad, dil, groups, og, scale = case
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    dh, dw = (dil, dil) if isinstance(dil, int) else dil
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(o, c // groups, kh, kw, generator=g, dtype=torch.float64)
    off = scale * torch.randn(b, 2 * og * kh * kw, ho, wo, generator=g, dtype=torch.float64)
    mask = torch.rand(b, og * kh * kw, ho, wo, generator=g, dtype=torch.float64) if with_mask else None
    bias = torch.randn(o, generator=g, dtype=torch.float64) if with_bias else None
    ours = modulated_deform_conv2d_reference(x, off, mask, wt, bias, (sh, sw), (ph, pw), (dh, dw), groups, og)
    ref = torchvision_ops.deform_conv2d(x, off, wt, bias, (sh, sw), (ph, pw), (dh, dw), mask)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-12
    ours32 = modulated_deform_conv2d_reference(
        x.float(), off.float(), None if mask is None else mask.float(), wt.float(),
        None if bias is None else bias.float(), (sh, sw), (ph, pw), (dh, dw), groups, og,
    )
    assert rel_err(ours32.double(), ref) <= 1e-5


def test_deform_conv_zero_offsets_unit_mask_is_conv2d():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 13, 11, generator=g)
    wt = torch.randn(8, 16, 3, 3, generator=g)
    bias = torch.randn(8, generator=g)
    off = torch.zeros(2, 2 * 8 * 9, 13, 11)
    mask = torch.ones(2, 8 * 9, 13, 11)
    ours = modulated_deform_conv2d_reference(x, off, mask, wt, bias, 1, 1, 1, 1, 8)
    assert rel_err(ours, F.conv2d(x, wt, bias, padding=1)) <= 1e-6


def test_deform_conv_integer_shift_reads_shifted_image_and_zero_outside():
    # One tap, one group: offset (dy, dx) = (1, -2) reads x[y+1, x-2], zero where that leaves the image.
    x = torch.arange(1.0, 1.0 + 5 * 7).view(1, 1, 5, 7)
    wt = torch.ones(1, 1, 1, 1)
    off = torch.zeros(1, 2, 5, 7)
    off[:, 0], off[:, 1] = 1.0, -2.0
    out = modulated_deform_conv2d_reference(x, off, None, wt)
    expected = torch.zeros_like(x)
    expected[:, :, :4, 2:] = x[:, :, 1:, :5]
    assert torch.equal(out, expected)


def test_deform_conv_non_contiguous_inputs():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 9, 8, 16, generator=g).transpose(2, 3)  # 1×9×16×8, non-contiguous
    off = torch.randn(1, 18, 16, 8, generator=g).transpose(2, 3).contiguous().transpose(2, 3) * 2
    wt = torch.randn(4, 9, 3, 3, generator=g)
    assert not x.is_contiguous() and not off.is_contiguous()
    ours = modulated_deform_conv2d_reference(x, off, None, wt, None, 1, 1, 1, 1, 1)
    ref = torchvision_ops.deform_conv2d(x.contiguous(), off.contiguous(), wt, None, 1, 1, 1)
    assert rel_err(ours, ref) <= 1e-5


def test_deform_conv_shape_errors():
    x = torch.randn(1, 8, 6, 6)
    wt = torch.randn(8, 8, 3, 3)
    with pytest.raises(InputValidationError, match="offset shape"):
        modulated_deform_conv2d_reference(x, torch.zeros(1, 10, 6, 6), None, wt, None, 1, 1, 1, 1, 1)
    with pytest.raises(InputValidationError, match="mask shape"):
        modulated_deform_conv2d_reference(x, torch.zeros(1, 18, 6, 6), torch.ones(1, 8, 6, 6), wt, None, 1, 1)
    with pytest.raises(InputValidationError, match="divisible by offset_groups 3"):
        modulated_deform_conv2d_reference(x, torch.zeros(1, 54, 6, 6), None, wt, None, 1, 1, 1, 1, 3)
