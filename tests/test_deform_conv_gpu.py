"""The CUDA modulated deformable convolution (``torch.ops.sschsr.modulated_deform_conv2d``) against the reference.

The kernel was written without a GPU ("unverified on hardware"): these tests are what verifies it. Ground truth: the
reference in fp64 on the same (rounded) inputs. Tolerances (relative error): fp64 1e-12, fp32 1e-5 (SIMT, fp32
accumulation), fp16 2e-3 and bf16 1e-2 (samples rounded to the input dtype for the tensor cores, fp32 accumulation,
output rounded).
"""

from __future__ import annotations

import pytest
import torch
from dcn_cases import CASES as BASE_CASES
from dcn_cases import make_case as _make_case
from dcn_cases import rel_err

from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_extension")]

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]




def op(*args):
    return torch.ops.sschsr.modulated_deform_conv2d(*args)


def make_case(*case, seed, dtype, mask=True, bias=True):
    """A shared random problem on the GPU (weights scaled to outputs of order 1), args as the op takes them."""
    tensors, args = _make_case(*case, seed=seed, dtype=dtype, device="cuda", mask=mask, bias=bias, scaled_weight=True)
    stride, pad, dil, groups, og = args
    return tensors, [list(stride), list(pad), list(dil), groups, og]


def reference(tensors, args):
    up = [None if t is None else t.double().cpu() for t in tensors]
    stride, pad, dil, groups, og = args
    return modulated_deform_conv2d_reference(*up, tuple(stride), tuple(pad), tuple(dil), groups, og)


CASES = [
    *BASE_CASES,
    # b, c, o, h, w, kernel, stride, pad, dil, groups, offset_groups, offset_scale
    (2, 72, 80, 19, 23, 3, 1, 1, 1, 1, 8, 3.0),  # several pixel / channel tiles with remainders
    (1, 300, 7, 5, 6, 3, 1, 1, 1, 1, 2, 1.0),  # long reduction, K not a multiple of the stage depth
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("with_mask_bias", [True, False], ids=["mask_bias", "plain"])
def test_matches_reference(case, dtype, with_mask_bias):
    tensors, args = make_case(*case, seed=CASES.index(case), dtype=dtype, mask=with_mask_bias, bias=with_mask_bias)
    out = op(*tensors, *args)
    assert out.dtype == dtype and out.device.type == "cuda"
    ref = reference(tensors, args)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("c, side", [(256, 64), (128, 128), (64, 256)], ids=["C256", "C128", "C64"])
def test_decoder_shapes(c, side, dtype):
    tensors, args = make_case(1, c, c, side, side, 3, 1, 1, 1, 1, 8, 3.0, seed=c, dtype=dtype)
    out = op(*tensors, *args)
    # fp32 reference on the GPU (the fp64 CPU reference would take minutes at these sizes)
    up = [None if t is None else t.float() for t in tensors]
    stride, pad, dil, groups, og = args
    ref = modulated_deform_conv2d_reference(*up, tuple(stride), tuple(pad), tuple(dil), groups, og)
    assert rel_err(out, ref) <= max(TOL[dtype], 2e-6)


def test_matches_cpu_kernel_and_torchvision():
    tensors, args = make_case(2, 32, 24, 15, 17, 3, 1, 1, 1, 1, 8, 3.0, seed=42, dtype=torch.float32)
    out = op(*tensors, *args)
    cpu = op(*[None if t is None else t.cpu() for t in tensors], *args)
    assert rel_err(out, cpu) <= 1e-5
    tvops = pytest.importorskip("torchvision.ops")
    x, off, m, wt, bs = tensors
    assert rel_err(out, tvops.deform_conv2d(x, off, wt, bs, args[0], args[1], args[2], m)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_non_contiguous_and_channels_last(dtype):
    tensors, args = make_case(2, 16, 12, 10, 9, 3, 1, 1, 1, 1, 4, 2.0, seed=11, dtype=dtype)
    x, off, m, wt, bs = tensors
    expected = op(*tensors, *args)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)
    off_s = torch.zeros(off.shape[0], off.shape[1] * 2, *off.shape[2:], device="cuda", dtype=dtype)[:, ::2]
    off_s.copy_(off)
    m_t = m.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    wt_t = wt.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    bs_s = torch.zeros(bs.numel() * 3, device="cuda", dtype=dtype)[::3]
    bs_s.copy_(bs)
    assert not any(t.is_contiguous() for t in (x_t, off_s, m_t, wt_t, bs_s))
    assert torch.equal(op(x_t, off_s, m_t, wt_t, bs_s, *args), expected)
    out_cl = op(x.contiguous(memory_format=torch.channels_last), off, m, wt, bs, *args)
    assert rel_err(out_cl, expected) <= TOL[dtype]
    assert rel_err(out_cl, reference(tensors, args)) <= TOL[dtype]


def test_runs_on_the_current_stream():
    # The input is produced on a side stream after a long GPU sleep. If the kernel were launched on another stream
    # (e.g. the default one) it would read the input before it is written and the result would be wrong.
    tensors, args = make_case(1, 64, 64, 48, 40, 3, 1, 1, 1, 1, 8, 3.0, seed=3, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    expected = reference(tensors, args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream
        x_late = x * 1.0
        out = op(x_late, off, m, wt, bs, *args)
        done = torch.cuda.Event()
        done.record(side)
    done.synchronize()
    assert rel_err(out, expected) <= TOL[torch.float32]


def test_far_offsets_give_bias_and_empty_batch():
    tensors, args = make_case(1, 8, 5, 7, 6, 3, 1, 1, 1, 1, 2, 1.0, seed=3, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    out = op(x, torch.full_like(off, 1e6), m, wt, bs, *args)
    assert torch.equal(out, bs.view(1, -1, 1, 1).expand_as(out))
    assert op(x[:0], off[:0], m[:0], wt, bs, *args).shape == (0, 5, 7, 6)


def test_device_mismatch_is_rejected():
    tensors, args = make_case(1, 8, 5, 7, 6, 3, 1, 1, 1, 1, 2, 1.0, seed=3, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    with pytest.raises(RuntimeError, match="offset is on cpu but input is on cuda"):
        op(x, off.cpu(), m, wt, bs, *args)
