"""The Triton deformable convolution kernel against its plain-PyTorch reference: on CPU tensors through the Triton
interpreter here, compiled on CUDA tensors on a GPU (see ``triton_checks.py`` for tolerances)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from triton_checks import DCN_CASES, INTERPRETED, TOL, KernelChecks, _dcn_inputs, _ref64, randn, rel

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.kernels.triton import (
    deform_conv2d_triton,
)
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference


class _DeformConvChecks(KernelChecks):
    @pytest.mark.parametrize("case", list(DCN_CASES))
    def test_deform_conv_matches_reference(self, case):
        x, off, mask, weight, bias, kw = _dcn_inputs(DCN_CASES[case])
        out = deform_conv2d_triton(self._to(x), self._to(off), self._to(mask), self._to(weight), self._to(bias), **kw)
        ref = _ref64(modulated_deform_conv2d_reference, x, off, mask, weight, bias, **kw)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert ref.abs().max() > 0.1  # the case really samples something
        assert rel(out, ref) <= TOL[torch.float32]

    @pytest.mark.parametrize("dtype_name", ["fp16", "bf16"])
    def test_deform_conv_half(self, dtype_name):
        dtype = self._dtype(dtype_name)
        x, off, mask, weight, bias, kw = _dcn_inputs(DCN_CASES["3x3_og2_bias_mask"], seed=5)
        x, off, mask, weight, bias = (t.to(dtype) for t in (x, off, mask, weight, bias))
        out = deform_conv2d_triton(*(self._to(t) for t in (x, off, mask, weight, bias)), **kw)
        assert out.dtype == dtype
        ref = _ref64(modulated_deform_conv2d_reference, x, off, mask, weight, bias, **kw)
        assert rel(out, ref) <= TOL[dtype]

    def test_deform_conv_non_contiguous(self):
        x, off, mask, weight, bias, kw = _dcn_inputs(DCN_CASES["3x3_og2_bias_mask"], seed=7)
        xs = self._to(x).contiguous(memory_format=torch.channels_last)
        offs = self._to(off).transpose(2, 3).contiguous().transpose(2, 3)  # same values, swapped spatial strides
        masks = self._to(torch.cat([mask, mask], dim=1))[:, ::2]  # strided channel view
        masks = masks.copy_(self._to(mask))
        ws = self._to(weight).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        assert not (xs.is_contiguous() or offs.is_contiguous() or masks.is_contiguous() or ws.is_contiguous())
        out = deform_conv2d_triton(xs, offs, masks, ws, self._to(bias), **kw)
        ref = _ref64(modulated_deform_conv2d_reference, x, off, mask, weight, bias, **kw)
        assert rel(out, ref) <= TOL[torch.float32]

    def test_deform_conv_integer_offsets_equal_shifted_conv(self):
        # Offsets of whole pixels move every tap: equals a plain conv of the shifted image, an independent check.
        x = randn(2, 6, 8, 9, seed=11)
        weight = randn(5, 6, 3, 3, seed=12)
        off = torch.zeros(2, 2 * 9, 8, 9)
        off[:, 0::2] = 1.0  # dy = +1 for every tap
        off[:, 1::2] = -2.0  # dx = −2
        out = deform_conv2d_triton(self._to(x), self._to(off), None, self._to(weight), None, 1, 1, 1, 1, 1)
        # out[y, x] = Σ w[i, j] · img[y + i, x + j − 3] (zero outside) = valid conv of the 3-padded image, cropped
        full = F.conv2d(F.pad(x.double(), (3, 3, 3, 3)), weight.double())
        ref = full[:, :, 3 : 3 + 8, 0:9]
        assert rel(out, ref) <= TOL[torch.float32]

    def test_deform_conv_bad_inputs(self):
        x, off, mask, weight, bias, kw = _dcn_inputs(DCN_CASES["3x3_og2_bias_mask"])
        x, off, mask, weight, bias = (self._to(t) for t in (x, off, mask, weight, bias))
        with pytest.raises(InputValidationError, match="offset shape"):
            deform_conv2d_triton(x, off[:, :-2], mask, weight, bias, **kw)
        with pytest.raises(InputValidationError, match="mask shape"):
            deform_conv2d_triton(x, off, mask[:, :-1], weight, bias, **kw)
        with pytest.raises(InputValidationError, match="divisible"):
            deform_conv2d_triton(x, off, mask, weight, bias, **{**kw, "offset_groups": 3})
        with pytest.raises(InputValidationError, match="dtype"):
            deform_conv2d_triton(x, off, mask, weight.half(), bias, **kw)
        with pytest.raises(InputValidationError, match="bias shape"):
            deform_conv2d_triton(x, off, mask, weight, bias[:-1], **kw)
        with pytest.raises(InputValidationError, match="empty"):
            deform_conv2d_triton(x[:, :, :1, :1], off, mask, weight, bias, **{**kw, "padding": 0})


@pytest.mark.skipif(not INTERPRETED, reason="kernels were compiled for a GPU (TRITON_INTERPRET off)")
class TestDeformConvTritonInterpreter(_DeformConvChecks):
    """On CPU tensors through the Triton interpreter."""

    device = "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="kernels were defined under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
class TestDeformConvTritonGPU(_DeformConvChecks):
    """The same checks with the compiled kernel on CUDA tensors (fp32 / fp16 / bf16)."""

    device = "cuda"

    def test_model_sized_shapes(self):
        # the official decoder's DCN: 64 channels, 8 offset groups
        x, off, mask, weight, bias, kw = _dcn_inputs((1, 64, 48, 40, 64, (3, 3), 1, 1, 1, 1, 8, True, True, 2.0))
        out = deform_conv2d_triton(*(self._to(t) for t in (x, off, mask, weight, bias)), **kw)
        assert rel(out, _ref64(modulated_deform_conv2d_reference, x, off, mask, weight, bias, **kw)) <= 1e-5
