"""The native CPU modulated deformable convolution (``torch.ops.sschsr.modulated_deform_conv2d``) against the reference.

Ground truth: ``modulated_deform_conv2d_reference`` in fp64 (and torchvision's ``deform_conv2d`` as a second opinion).
Tolerances (relative error ‖out − ref‖ / ‖ref‖): fp64 1e-12, fp32 1e-5; fp16 2e-3 and bf16 1e-2 against the fp64
reference evaluated on the same (rounded) inputs: the kernel computes in fp32, so what remains is the rounding of the
output (≤ 2⁻¹¹ and 2⁻⁸ per element).
"""

from __future__ import annotations

import pytest
import torch
from dcn_cases import CASES as BASE_CASES
from dcn_cases import make_case, rel_err

from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference

_C = pytest.importorskip("sschsr_deploy._C", reason="native extension sschsr_deploy._C is not built")
if not hasattr(torch.ops.sschsr, "modulated_deform_conv2d"):
    pytest.skip("the native extension has no modulated_deform_conv2d", allow_module_level=True)

op = torch.ops.sschsr.modulated_deform_conv2d
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def call(tensors, args):
    x, off, m, wt, bs = tensors
    stride, pad, dil, groups, og = args
    return op(x, off, m, wt, bs, list(stride), list(pad), list(dil), groups, og)


def reference(tensors, args):
    up = [t if t is None else t.double() for t in tensors]
    return modulated_deform_conv2d_reference(*up, *args)


CASES = [
    *BASE_CASES,
    # b, c, o, h, w, kernel, stride, pad, dil, groups, offset_groups, offset_scale
    (1, 40, 24, 17, 13, 3, 1, 1, 1, 1, 8, 3.0),  # several pixel tiles + remainder, O not a multiple of 16
    (2, 300, 7, 5, 6, 3, 1, 1, 1, 1, 2, 1.0),  # reduction split into several chunks inside one tap
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_fp64_and_fp32_match_reference(case, with_mask, with_bias):
    tensors, args = make_case(*case, seed=len(CASES) * 7 + CASES.index(case), mask=with_mask, bias=with_bias)
    ref = reference(tensors, args)
    out64 = call(tensors, args)
    assert out64.dtype == torch.float64 and out64.shape == ref.shape
    assert rel_err(out64, ref) <= TOL[torch.float64]
    t32 = [t if t is None else t.float() for t in tensors]
    out32 = call(t32, args)
    assert out32.dtype == torch.float32
    assert rel_err(out32, reference(t32, args)) <= TOL[torch.float32]


@pytest.mark.parametrize("case", CASES[:6], ids=[f"case{i}" for i in range(6)])
def test_matches_torchvision(case):
    tvops = pytest.importorskip("torchvision.ops")
    tensors, args = make_case(*case, seed=99, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    stride, pad, dil, _, _ = args
    ours = call(tensors, args)
    theirs = tvops.deform_conv2d(x, off, wt, bs, stride, pad, dil, m)
    assert rel_err(ours, theirs) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precisions_compute_in_fp32(dtype):
    tensors, args = make_case(2, 24, 16, 11, 9, 3, 1, 1, 1, 1, 8, 2.5, seed=5, dtype=dtype)
    out = call(tensors, args)
    assert out.dtype == dtype
    assert rel_err(out, reference(tensors, args)) <= TOL[dtype]


def test_random_shapes():
    # Random geometry (odd sizes, strides, dilations, paddings, groups, offset groups) in one loop, fp32 and fp64.
    g = torch.Generator().manual_seed(2024)
    for trial in range(12):
        r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
        groups, og = r(1, 3), r(1, 4)
        c = groups * og * r(1, 3)
        o = groups * r(1, 5)
        kh, kw = r(1, 4), r(1, 4)
        sh, sw, dh, dw = r(1, 3), r(1, 3), r(1, 2), r(1, 2)
        ph, pw = r(0, 2), r(0, 2)
        h = max(r(3, 15), dh * (kh - 1) + 1 - 2 * ph)
        w = max(r(3, 15), dw * (kw - 1) + 1 - 2 * pw)
        case = (r(1, 3), c, o, h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, og, 4.0 * torch.rand(1).item())
        tensors, args = make_case(*case, seed=trial, mask=trial % 3 != 0, bias=trial % 2 == 0)
        ref = reference(tensors, args)
        assert rel_err(call(tensors, args), ref) <= TOL[torch.float64], case
        t32 = [t if t is None else t.float() for t in tensors]
        assert rel_err(call(t32, args), ref) <= TOL[torch.float32], case


def test_non_contiguous_and_channels_last_inputs():
    tensors, args = make_case(2, 16, 12, 10, 9, 3, 1, 1, 1, 1, 4, 2.0, seed=11, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    expected = call(tensors, args)
    # Same values, other memory: transposed storage, strided views, channels-last.
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)
    off_s = torch.zeros(off.shape[0], off.shape[1] * 2, *off.shape[2:])[:, ::2].copy_(off)
    m_t = m.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    wt_t = wt.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    bs_s = torch.zeros(bs.numel() * 3)[::3].copy_(bs)
    assert not any(t.is_contiguous() for t in (x_t, off_s, m_t, wt_t, bs_s))
    out = op(x_t, off_s, m_t, wt_t, bs_s, *map(list, args[:3]), *args[3:])
    assert torch.equal(out, expected)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = op(x_cl, off, m, wt, bs, *map(list, args[:3]), *args[3:])
    assert rel_err(out_cl, expected) <= 1e-6  # channels-last is read directly: same math, same order
    assert out_cl.is_contiguous()


def test_zero_input_gives_bias_and_far_offsets_read_zero():
    tensors, args = make_case(1, 8, 5, 7, 6, 3, 1, 1, 1, 1, 2, 1.0, seed=3)
    x, off, m, wt, bs = tensors
    out = op(torch.zeros_like(x), off, m, wt, bs, *map(list, args[:3]), *args[3:])
    assert torch.equal(out, bs.view(1, -1, 1, 1).expand_as(out))
    far = torch.full_like(off, 1e6)  # every sample leaves the image by far (and float-to-int conversion must not wrap)
    out = op(x, far, m, wt, bs, *map(list, args[:3]), *args[3:])
    assert torch.equal(out, bs.view(1, -1, 1, 1).expand_as(out))
    out = op(x, -far, m, wt, None, *map(list, args[:3]), *args[3:])
    assert torch.equal(out, torch.zeros_like(out))


def test_zero_offsets_unit_mask_is_conv2d():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 16, 13, 11, generator=g, dtype=torch.float64)
    wt = torch.randn(8, 8, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(8, generator=g, dtype=torch.float64)
    off = torch.zeros(2, 2 * 8 * 9, 7, 6, dtype=torch.float64)
    mask = torch.ones(2, 8 * 9, 7, 6, dtype=torch.float64)
    out = op(x, off, mask, wt, bias, [2, 2], [1, 1], [1, 1], 2, 8)
    expected = torch.nn.functional.conv2d(x, wt, bias, stride=2, padding=1, groups=2)
    assert rel_err(out, expected) <= 1e-13


def test_integer_shift_is_exact():
    x = torch.arange(1.0, 1.0 + 5 * 7).view(1, 1, 5, 7)
    off = torch.zeros(1, 2, 5, 7)
    off[:, 0], off[:, 1] = 1.0, -2.0
    out = op(x, off, None, torch.ones(1, 1, 1, 1), None, [1, 1], [0, 0], [1, 1], 1, 1)
    expected = torch.zeros_like(x)
    expected[:, :, :4, 2:] = x[:, :, 1:, :5]
    assert torch.equal(out, expected)


def test_result_does_not_depend_on_thread_count():
    tensors, args = make_case(2, 32, 32, 20, 19, 3, 1, 1, 1, 1, 8, 3.0, seed=8, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = call(tensors, args)
        torch.set_num_threads(2)
        two = call(tensors, args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_empty_batch():
    tensors, args = make_case(1, 8, 4, 6, 6, 3, 1, 1, 1, 1, 2, 1.0, seed=1, dtype=torch.float32)
    x, off, m, wt, bs = tensors
    out = op(x[:0], off[:0], m[:0], wt, bs, *map(list, args[:3]), *args[3:])
    assert out.shape == (0, 4, 6, 6)


def _bad(**changes):
    tensors, args = make_case(2, 8, 6, 7, 5, 3, 1, 1, 1, 1, 2, 1.0, seed=4, dtype=torch.float32)
    names = ["input", "offset", "mask", "weight", "bias"]
    kw = dict(zip(names, tensors, strict=True))
    kw.update(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, offset_groups=2)
    kw.update(changes)
    return lambda: op(*(kw[k] for k in names + ["stride", "padding", "dilation", "groups", "offset_groups"]))


@pytest.mark.parametrize(
    "changes, exc, match",
    [
        (dict(offset=torch.zeros(2, 36, 7, 4)), ValueError, r"offset shape \(2, 36, 7, 4\) != expected \(2, 36, 7, 5"),
        (dict(offset=torch.zeros(2, 18, 7, 5)), ValueError, r"offset shape .* != expected \(2, 36, 7, 5\)"),
        (dict(mask=torch.zeros(2, 9, 7, 5)), ValueError, r"mask shape \(2, 9, 7, 5\) != expected \(2, 18, 7, 5\)"),
        (dict(offset_groups=3), ValueError, r"divisible by offset_groups \(3\)"),
        (dict(groups=3), ValueError, r"divisible by groups \(3\)"),
        (dict(weight=torch.zeros(6, 4, 3, 3)), ValueError, r"weight shape \(6, 4, 3, 3\)"),
        (dict(bias=torch.zeros(5)), ValueError, r"bias has 5 elements"),
        (dict(input=torch.zeros(8, 7, 5)), ValueError, r"input must be 4-D"),
        (dict(stride=[0, 1]), ValueError, r"stride must be positive"),
        (dict(padding=[-1, 0]), ValueError, r"padding must be non-negative"),
        (dict(input=torch.zeros(2, 8, 1, 1), padding=[0, 0]), ValueError, r"smaller than the kernel"),
        (dict(offset=torch.zeros(2, 36, 7, 5, dtype=torch.float64)), TypeError, r"offset dtype Double does not match"),
        (dict(weight=torch.zeros(6, 8, 3, 3, dtype=torch.float16)), TypeError, r"weight dtype Half does not match"),
    ],
)
def test_bad_arguments_raise_clear_errors(changes, exc, match):
    with pytest.raises(exc, match=match):
        _bad(**changes)()


def test_unsupported_dtype():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="unsupported dtype"):
        op(x, torch.zeros(1, 2, 3, 3, dtype=torch.int32), None, torch.zeros(1, 1, 1, 1, dtype=torch.int32), None,
           [1, 1], [0, 0], [1, 1], 1, 1)


def test_dispatch_traces_under_torch_compile_without_cache_warnings():
    """The per-call backend choice runs inside compiled graphs; it must not call functools.cache-wrapped helpers,
    which Dynamo warns about on every trace (and the result must equal the eager call)."""
    import warnings

    from sschsr_deploy.ops import modulated_deform_conv2d

    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 11)
    offset = torch.randn(1, 2 * 2 * 9, 9, 11)
    mask = torch.rand(1, 2 * 9, 9, 11)
    weight = torch.randn(3, 4, 3, 3)

    def f(x, offset, mask, weight):
        return modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1, 2)

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="eager", fullgraph=True)(x, offset, mask, weight)
    assert not [w for w in caught if "lru_cache" in str(w.message)], [str(w.message) for w in caught]
    torch.testing.assert_close(out, f(x, offset, mask, weight), rtol=1e-5, atol=1e-5)
