"""The operator layer: every op exists in torch.ops.sschsr, backend choice rules, overrides, tracing support."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sschsr_deploy import ops
from sschsr_deploy.ops import _backend

OPS = ("modulated_deform_conv2d", "spectral_attention", "gram_and_norms", "patch_match")


@pytest.mark.parametrize("op", OPS)
def test_every_op_is_registered(op):
    assert _backend.hasattr_op(op)


def test_fake_implementations_give_shapes_without_data():
    with FakeTensorMode():
        out = torch.ops.sschsr.modulated_deform_conv2d(
            torch.empty(2, 8, 9, 9), torch.empty(2, 18, 5, 5), None, torch.empty(4, 8, 3, 3), None,
            [2, 2], [1, 1], [1, 1], 1, 1,
        )
        assert out.shape == (2, 4, 5, 5)
        q = torch.empty(2, 12, 7, 5)
        assert torch.ops.sschsr.spectral_attention(q, q, q, torch.empty(3), 3).shape == q.shape
        gram, qn, kn = torch.ops.sschsr.gram_and_norms(q, q, 3)
        assert gram.shape == (2, 3, 4, 4) and qn.shape == kn.shape == (2, 12) and gram.dtype == torch.float32
        idx, sim = torch.ops.sschsr.patch_match(torch.empty(1, 4, 8, 10), torch.empty(1, 4, 8, 10), 3)
        assert idx.shape == sim.shape == (1, 6, 8) and idx.dtype == torch.long


def test_auto_choice(monkeypatch):
    monkeypatch.delenv("SSCHSR_DEFORM_CONV_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, needs_grad=True) == "reference"
    expected = "native" if _backend.has_kernel("modulated_deform_conv2d", "cpu") else "reference"
    assert _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, needs_grad=False) == expected


def test_invalid_and_unavailable_overrides_raise(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("SSCHSR_DEFORM_CONV_BACKEND", "fastest")
    with pytest.raises(ValueError, match="SSCHSR_DEFORM_CONV_BACKEND='fastest' is not one of"):
        _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, False)
    monkeypatch.setenv("SSCHSR_DEFORM_CONV_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="SSCHSR_DEFORM_CONV_BACKEND=cuda but the tensors are on cpu"):
        _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, False)
    monkeypatch.setenv("SSCHSR_DEFORM_CONV_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, False)
    monkeypatch.setenv("SSCHSR_DEFORM_CONV_BACKEND", "reference")
    assert _backend.choose("SSCHSR_DEFORM_CONV_BACKEND", "modulated_deform_conv2d", cpu, False) == "reference"


def test_forced_backends_nest_and_restore():
    cpu = torch.device("cpu")
    with _backend.forced_backends(patch_match="op"):
        assert _backend.choose("X", "patch_match", cpu, True) == "native"
        with _backend.forced_backends(patch_match="reference"):
            assert _backend.choose("X", "patch_match", cpu, False) == "reference"
        assert _backend.choose("X", "patch_match", cpu, True) == "native"
    assert _backend.choose("X", "patch_match", cpu, True) == "reference"
    with pytest.raises(ValueError, match="must be 'op' or 'reference'"):
        with _backend.forced_backends(patch_match="cuda"):
            pass


def test_gradients_flow_through_the_dispatching_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 7, generator=g, requires_grad=True)
    off = torch.randn(1, 18, 6, 7, generator=g, requires_grad=True)
    w = torch.randn(4, 8, 3, 3, generator=g, requires_grad=True)
    ops.modulated_deform_conv2d(x, off, None, w, None, 1, 1, 1, 1, 1).square().sum().backward()
    assert x.grad is not None and off.grad is not None and w.grad is not None
    q = torch.randn(1, 4, 5, 5, generator=g, requires_grad=True)
    ops.spectral_attention(q, q * 2, q + 1, torch.ones(2), 2).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_stats_give_the_attention_of_the_whole_image_when_summed_over_tiles():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 8, 12, 10, generator=g, dtype=torch.float64) for _ in range(3))
    tau = 1 + torch.rand(2, dtype=torch.float64, generator=g)
    parts = [ops.gram_and_norms(q[..., :7, :], k[..., :7, :], 2), ops.gram_and_norms(q[..., 7:, :], k[..., 7:, :], 2)]
    gram, qs, ks = (a + b for a, b in zip(*parts, strict=True))
    attn = ops.attention_from_stats(gram, qs, ks, tau)
    b, c, h, w = v.shape
    out = (attn @ v.reshape(b, 2, c // 2, h * w)).reshape(b, c, h, w)
    assert torch.allclose(out, ops.spectral_attention_reference(q, k, v, tau, 2), atol=1e-12)


@pytest.mark.slow
def test_model_runs_on_triton_backends(monkeypatch):
    """The whole tiny model with every op on its Triton kernel (interpreter here) equals the reference model."""
    pytest.importorskip("triton")
    from sschsr_deploy.model import SSCHSR

    torch.manual_seed(0)
    model = SSCHSR.from_preset("tiny").eval()
    g = torch.Generator().manual_seed(2)
    hsi, rgb, ref = torch.rand(1, 31, 128, 128, generator=g), torch.rand(1, 3, 128, 128, generator=g), None
    ref = torch.roll(rgb, (2, -3), (2, 3))
    inputs = (hsi, rgb, ref, rgb * 255, ref * 255)
    for var in ("SSCHSR_DEFORM_CONV_BACKEND", "SSCHSR_SPECTRAL_ATTENTION_BACKEND", "SSCHSR_PATCH_MATCH_BACKEND"):
        monkeypatch.setenv(var, "reference")
    with torch.no_grad():
        expected = model(*inputs)
    if torch.cuda.is_available():
        pytest.skip("the interpreter path is tested on CPU machines; GPU runs are in the gpu tests")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for var in ("SSCHSR_DEFORM_CONV_BACKEND", "SSCHSR_SPECTRAL_ATTENTION_BACKEND", "SSCHSR_PATCH_MATCH_BACKEND"):
        monkeypatch.setenv(var, "triton")
    with torch.no_grad():
        got = model(*inputs)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-4


def test_backend_variables_are_named_after_the_ops_and_old_names_still_work(monkeypatch):
    """One name per op: SSCHSR_DEFORM_CONV_BACKEND / SSCHSR_SPECTRAL_ATTENTION_BACKEND; the earlier DCN / ATTENTION
    names are read with a deprecation warning while the new one is unset, and the new one wins."""
    import importlib

    deform_conv, spectral_attention, patch_match = (
        importlib.import_module(f"sschsr_deploy.ops.{m}") for m in ("deform_conv", "spectral_attention", "patch_match"))
    assert (deform_conv.ENV_VAR, spectral_attention.ENV_VAR, patch_match.ENV_VAR) == (
        "SSCHSR_DEFORM_CONV_BACKEND", "SSCHSR_SPECTRAL_ATTENTION_BACKEND", "SSCHSR_PATCH_MATCH_BACKEND")
    cpu = torch.device("cpu")
    monkeypatch.delenv("SSCHSR_DEFORM_CONV_BACKEND", raising=False)
    monkeypatch.setenv("SSCHSR_DCN_BACKEND", "reference")
    _backend._warn_legacy.cache_clear()
    with pytest.warns(DeprecationWarning, match="SSCHSR_DCN_BACKEND is deprecated"):
        assert _backend.choose(deform_conv.ENV_VAR, "modulated_deform_conv2d", cpu, False) == "reference"
    monkeypatch.setenv("SSCHSR_DCN_BACKEND", "fastest")
    with pytest.raises(ValueError, match="SSCHSR_DCN_BACKEND='fastest'"):
        _backend.choose(deform_conv.ENV_VAR, "modulated_deform_conv2d", cpu, False)
    monkeypatch.setenv("SSCHSR_DEFORM_CONV_BACKEND", "reference")
    assert _backend.choose(deform_conv.ENV_VAR, "modulated_deform_conv2d", cpu, False) == "reference"
