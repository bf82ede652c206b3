"""Native CPU spectral attention (torch.ops.sschsr.spectral_attention / gram_and_norms) against the PyTorch reference.

Tolerances (relative error ‖out − ref‖ / ‖ref‖, reference evaluated in float64 on the same, already rounded inputs):
float64 ≤ 1e-12, float32 ≤ 1e-5, float16 ≤ 2e-3 and bfloat16 ≤ 1e-2 (dominated by rounding the output to 16 bits;
the statistics stay float32).
"""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.ops import spectral_attention_reference

_C = pytest.importorskip("sschsr_deploy._C", reason="native extension not built")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def make_inputs(b, c, h, w, heads, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    k = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) + 0.2
    v = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    tau = 0.5 + torch.rand(heads, 1, 1, generator=g, dtype=torch.float64) * 2
    return q.to(dtype), k.to(dtype), v.to(dtype), tau


def reference64(q, k, v, tau, heads):
    return spectral_attention_reference(q.double(), k.double(), v.double(), tau.double(), heads)


SHAPES = [
    # b, c, h, w, heads
    (1, 8, 5, 7, 1),
    (2, 12, 9, 11, 3),
    (3, 16, 6, 6, 2),
    (1, 256, 16, 12, 8),  # res1 head size (c = 32)
    (2, 64, 33, 35, 1),  # res3 head size (c = 64), 1155 pixels: crosses a 1024-pixel chunk
    (1, 10, 70, 61, 2),  # c = 5 (micro-tile edges), 4270 pixels: crosses a 4096-pixel split
    (1, 8, 1, 1, 8),  # c = 1, one pixel
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(shape, dtype):
    b, c, h, w, heads = shape
    q, k, v, tau = make_inputs(b, c, h, w, heads, dtype, seed=hash(shape) % 1000)
    out = torch.ops.sschsr.spectral_attention(q, k, v, tau.to(dtype), heads)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    ref = reference64(q, k, v, tau.to(dtype), heads)
    assert rel_err(out, ref) <= TOL[dtype]


def test_same_as_reference_in_its_own_precision():
    """The fp32 result is as close to the fp32 reference as fp32 rounding allows (guards against tolerances hiding
    a systematic difference)."""
    q, k, v, tau = make_inputs(2, 32, 20, 17, 4, torch.float32, seed=3)
    tau = tau.float()
    out = torch.ops.sschsr.spectral_attention(q, k, v, tau, 4)
    assert rel_err(out, spectral_attention_reference(q, k, v, tau, 4)) <= 1e-5
    # …and clearly different from the attention with another temperature (the test can fail).
    assert rel_err(out, spectral_attention_reference(q, k, v, tau * 1.5, 4)) > 1e-3


@pytest.mark.parametrize("tau_shape", [(4, 1, 1), (4,), (1, 4, 1, 1), (2, 2)])
def test_temperature_any_shape(tau_shape):
    q, k, v, tau = make_inputs(1, 16, 6, 5, 4, torch.float64, seed=5)
    t = tau.reshape(tau_shape)
    out = torch.ops.sschsr.spectral_attention(q, k, v, t, 4)
    assert rel_err(out, reference64(q, k, v, tau, 4)) <= 1e-12


def test_float32_temperature_with_float64_inputs():
    q, k, v, tau = make_inputs(1, 6, 4, 4, 2, torch.float64, seed=6)
    out = torch.ops.sschsr.spectral_attention(q, k, v, tau.float(), 2)
    assert rel_err(out, reference64(q, k, v, tau.float(), 2)) <= 1e-12


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(2, 3 * 12, 14, 10, generator=g)
    q = base[:, 0:12]  # channel slice of a bigger tensor
    k = base[:, 12:24].transpose(2, 3).contiguous().transpose(2, 3)  # W-major storage
    v = base[:, 24:36].contiguous(memory_format=torch.channels_last)
    tau = torch.rand(3, 1, 1, generator=g) + 0.5
    tau_view = torch.rand(3, 2, generator=g)[:, 0]  # strided temperature
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    for t in (tau, tau_view):
        out = torch.ops.sschsr.spectral_attention(q, k, v, t, 3)
        assert rel_err(out, reference64(q, k, v, t, 3)) <= 1e-5


def test_zero_channel_gives_uniform_row():
    """A q channel that is all zero normalises to zero (1e-12 clamp): its attention row is uniform, like the
    reference."""
    q, k, v, tau = make_inputs(1, 8, 7, 9, 2, torch.float32, seed=9)
    q[:, 1] = 0
    out = torch.ops.sschsr.spectral_attention(q, k, v, tau.float(), 2)
    ref = reference64(q, k, v, tau, 2)
    assert rel_err(out, ref) <= 1e-5
    assert torch.allclose(out[0, 1].double(), v[0, :4].double().mean(0), atol=1e-6)


def test_model_call_matches_reference():
    """Through the MDTA module: the op is a drop-in replacement of the reference core."""
    from sschsr_deploy.model.attention import MDTA

    torch.manual_seed(0)
    m = MDTA(32, 4).eval()
    with torch.no_grad():
        m.temperature.uniform_(0.5, 2.0)
        x = torch.randn(2, 32, 11, 13)
        q, k, v = m.qkv_dwconv(m.qkv(x)).chunk(3, dim=1)
        ours = torch.ops.sschsr.spectral_attention(q, k, v, m.temperature, 4)
        ref = spectral_attention_reference(q, k, v, m.temperature, 4)
    assert rel_err(ours, ref) <= 1e-5


# ---- gram_and_norms ----------------------------------------------------------------------------------------------


def stats64(q, k, heads):
    b, c = q.shape[:2]
    qh = q.double().reshape(b, heads, c // heads, -1)
    kh = k.double().reshape(b, heads, c // heads, -1)
    return qh @ kh.transpose(-1, -2), q.double().pow(2).flatten(2).sum(-1), k.double().pow(2).flatten(2).sum(-1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_gram_and_norms(shape, dtype):
    b, c, h, w, heads = shape
    q, k, _, _ = make_inputs(b, c, h, w, heads, dtype, seed=hash(shape) % 997)
    gram, q_sq, k_sq = torch.ops.sschsr.gram_and_norms(q, k, heads)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert gram.dtype == q_sq.dtype == k_sq.dtype == want_dtype
    assert gram.shape == (b, heads, c // heads, c // heads) and q_sq.shape == (b, c) and k_sq.shape == (b, c)
    g64, q64, k64 = stats64(q, k, heads)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert rel_err(gram, g64) <= tol
    assert rel_err(q_sq, q64) <= tol
    assert rel_err(k_sq, k64) <= tol


def test_gram_and_norms_add_over_spatial_tiles():
    """Per-tile statistics summed over a spatial tiling equal the whole-image statistics (what tiled inference uses),
    and attention computed from the summed statistics equals whole-image attention."""
    q, k, v, tau = make_inputs(2, 24, 23, 29, 3, torch.float32, seed=10)
    whole = torch.ops.sschsr.gram_and_norms(q, k, 3)
    total = [torch.zeros_like(t) for t in whole]
    for ys in (slice(0, 7), slice(7, 16), slice(16, 23)):
        for xs in (slice(0, 13), slice(13, 29)):
            part = torch.ops.sschsr.gram_and_norms(q[:, :, ys, xs], k[:, :, ys, xs], 3)  # non-contiguous tiles
            total = [a + b for a, b in zip(total, part, strict=True)]
    for a, b in zip(total, whole, strict=True):
        assert rel_err(a, b) <= 1e-6
    gram, q_sq, k_sq = total
    qn = q_sq.sqrt().clamp_min(1e-12).reshape(2, 3, 8, 1)
    kn = k_sq.sqrt().clamp_min(1e-12).reshape(2, 3, 1, 8)
    attn = (gram / (qn * kn) * tau.float().reshape(1, 3, 1, 1)).softmax(-1)
    out = (attn @ v.reshape(2, 3, 8, -1)).reshape(v.shape)
    assert rel_err(out, reference64(q, k, v, tau, 3)) <= 1e-5


def test_fp16_statistics_do_not_overflow():
    """Σ q² over 65k pixels far exceeds the fp16 range (65504): the statistics are float32 and finite."""
    g = torch.Generator().manual_seed(11)
    q = (30 * torch.randn(1, 2, 256, 256, generator=g)).half()
    k = (30 * torch.randn(1, 2, 256, 256, generator=g)).half()
    gram, q_sq, k_sq = torch.ops.sschsr.gram_and_norms(q, k, 1)
    assert torch.isfinite(gram).all() and torch.isfinite(q_sq).all() and q_sq.min() > 65504
    g64, q64, _ = stats64(q, k, 1)
    assert rel_err(gram, g64) <= 1e-5 and rel_err(q_sq, q64) <= 1e-5
    out = torch.ops.sschsr.spectral_attention(q, k, q, torch.ones(1), 1)
    assert torch.isfinite(out).all()


# ---- errors --------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(1, 8, 4, 4)
    t = torch.ones(2)
    with pytest.raises(RuntimeError, match="must match"):
        torch.ops.sschsr.spectral_attention(q, torch.randn(1, 8, 4, 5), q, t, 2)
    with pytest.raises(RuntimeError, match="must match"):
        torch.ops.sschsr.spectral_attention(q, q, torch.randn(1, 8, 5, 4), t, 2)
    with pytest.raises(RuntimeError, match="not divisible by 3 heads"):
        torch.ops.sschsr.spectral_attention(q, q, q, torch.ones(3), 3)
    with pytest.raises(RuntimeError, match="temperature has 3 values"):
        torch.ops.sschsr.spectral_attention(q, q, q, torch.ones(3), 2)
    with pytest.raises(RuntimeError, match="B×C×H×W"):
        torch.ops.sschsr.spectral_attention(q[0], q[0], q[0], t, 2)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        qi = q.int()
        torch.ops.sschsr.spectral_attention(qi, qi, qi, t, 2)
    with pytest.raises(RuntimeError, match="but k is"):
        torch.ops.sschsr.spectral_attention(q, q.double(), q, t, 2)
    with pytest.raises(RuntimeError, match="heads must be positive"):
        torch.ops.sschsr.gram_and_norms(q, q, 0)
    with pytest.raises(RuntimeError, match="must match"):
        torch.ops.sschsr.gram_and_norms(q, torch.randn(2, 8, 4, 4), 2)


def test_empty_batch():
    q = torch.randn(0, 8, 4, 4)
    out = torch.ops.sschsr.spectral_attention(q, q, q, torch.ones(2), 2)
    assert out.shape == q.shape
    gram, q_sq, _ = torch.ops.sschsr.gram_and_norms(q, q, 2)
    assert gram.shape == (0, 2, 4, 4) and q_sq.shape == (0, 8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_formulation_matches_reference(shape, dtype):
    """The matrix-product formulation for channels-last tensors (the CPU path of a channels-last model), on channel
    slices of a channels-last qkv tensor as the model hands them over: same function, channels-last result."""
    from sschsr_deploy.ops.spectral_attention import is_channels_last, spectral_attention_channels_last

    b, c, h, w, heads = shape
    q, k, v, tau = make_inputs(b, c, h, w, heads, dtype, seed=11 + c + h)
    qkv = torch.cat([q, k, v], dim=1).contiguous(memory_format=torch.channels_last)
    qs, ks, vs = qkv.chunk(3, dim=1)
    if h * w > 1:  # (one pixel: every layout is both)
        assert all(is_channels_last(t) for t in (qs, ks, vs)) and not qs.is_contiguous()
    out = spectral_attention_channels_last(qs, ks, vs, tau, heads)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, reference64(q, k, v, tau, heads)) <= TOL[dtype]
    if h * w > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_model_entry_point_takes_the_channels_last_path():
    """``spectral_attention`` (the model's entry) on channels-last inputs: the formulation without layout copies,
    equal to the native kernel on the NCHW copies; NCHW inputs keep the native kernel."""
    from sschsr_deploy.ops import spectral_attention

    q, k, v, tau = make_inputs(2, 24, 9, 13, 3, torch.float32, seed=5)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    got = spectral_attention(*cl, tau, 3)
    assert got.is_contiguous(memory_format=torch.channels_last)
    want = torch.ops.sschsr.spectral_attention(q, k, v, tau, 3)
    assert rel_err(got, want) <= 1e-5
    assert spectral_attention(q, k, v, tau, 3).is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the float32 island: low-precision channels-last inputs
        low = spectral_attention(*(t.bfloat16() for t in cl), tau, 3)
    assert low.dtype == torch.float32 and rel_err(low, want) <= TOL[torch.bfloat16]
