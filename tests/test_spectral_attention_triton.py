"""The Triton spectral attention (and gram_and_norms) kernels against the plain-PyTorch reference: on CPU tensors
through the Triton interpreter here, compiled on CUDA tensors on a GPU (see ``triton_checks.py`` for tolerances)."""

from __future__ import annotations

import pytest
import torch
from triton_checks import INTERPRETED, TOL, KernelChecks, _ref64, rand, randn, rel

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.kernels.triton import (
    gram_and_norms_triton,
    spectral_attention_triton,
)
from sschsr_deploy.ops.spectral_attention import spectral_attention_reference


class _SpectralAttentionChecks(KernelChecks):
    @pytest.mark.parametrize(
        "b,c,h,w,heads",
        [(2, 8, 7, 9, 1), (1, 12, 9, 13, 2), (2, 12, 5, 6, 4), (1, 20, 20, 20, 1), (1, 72, 6, 7, 1)],
    )
    def test_spectral_attention_matches_reference(self, b, c, h, w, heads):
        q, k, v = (randn(b, c, h, w, seed=s) for s in (20, 21, 22))
        tau = rand(heads, 1, 1, seed=23) * 2 + 0.5
        out = spectral_attention_triton(self._to(q), self._to(k), self._to(v), self._to(tau), heads)
        ref = _ref64(spectral_attention_reference, q, k, v, tau, heads)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert rel(out, ref) <= TOL[torch.float32]

    def test_spectral_attention_zero_channel_and_non_contiguous(self):
        base = randn(2, 8, 9, 22, seed=30)
        q = base[..., ::2].clone()
        q[:, 3] = 0.0  # a dead channel: its norm clamps at 1e-12 and its attention row is uniform
        k = randn(2, 8, 9, 11, seed=31)
        k[:, 5] = 0.0
        v = randn(2, 8, 11, 9, seed=32).transpose(2, 3)  # non-contiguous, H and W not mergeable
        tau = torch.tensor([0.7, 1.9])
        qs = self._to(base)[..., ::2].copy_(self._to(q))  # strided view holding q's values
        ks = self._to(k).contiguous(memory_format=torch.channels_last)
        assert not (qs.is_contiguous() or ks.is_contiguous() or v.is_contiguous())
        out = spectral_attention_triton(qs, ks, self._to(v), self._to(tau), 2)
        ref = _ref64(spectral_attention_reference, q, k, v, tau, 2)
        assert torch.isfinite(out).all()
        assert rel(out, ref) <= TOL[torch.float32]

    @pytest.mark.parametrize("dtype_name", ["fp16", "bf16"])
    def test_spectral_attention_half(self, dtype_name):
        dtype = self._dtype(dtype_name)
        q, k, v = (randn(2, 16, 9, 13, seed=s).to(dtype) for s in (40, 41, 42))
        tau = torch.tensor([1.0, 3.0, 0.5, 2.0])
        out = spectral_attention_triton(self._to(q), self._to(k), self._to(v), self._to(tau), 4)
        assert out.dtype == dtype
        ref = _ref64(spectral_attention_reference, q, k, v, tau, 4)
        assert rel(out, ref) <= TOL[dtype]

    def test_gram_and_norms_values_splits_and_additivity(self):
        b, c, h, w, heads = 2, 12, 20, 23, 3
        q, k = randn(b, c, h, w, seed=50), randn(b, c, h, w, seed=51)
        qd, kd = q.double().reshape(b, heads, c // heads, -1), k.double().reshape(b, heads, c // heads, -1)
        gram, q_sq, k_sq = gram_and_norms_triton(self._to(q), self._to(k), heads)
        assert gram.dtype == q_sq.dtype == k_sq.dtype == torch.float32
        assert gram.shape == (b, heads, c // heads, c // heads) and q_sq.shape == k_sq.shape == (b, c)
        assert rel(gram, qd @ kd.transpose(-1, -2)) <= TOL[torch.float32]
        assert rel(q_sq, q.double().square().sum((2, 3))) <= TOL[torch.float32]
        assert rel(k_sq, k.double().square().sum((2, 3))) <= TOL[torch.float32]
        # split reduction over pixel chunks agrees with one chunk
        g3, q3, k3 = gram_and_norms_triton(self._to(q), self._to(k), heads, splits=3)
        for a, r in ((g3, gram), (q3, q_sq), (k3, k_sq)):
            assert rel(a, r) <= 1e-6
        # additive over pixel tiles (non-contiguous column slices)
        qa, ka = self._to(q)[..., :10], self._to(k)[..., :10]
        qb, kb = self._to(q)[..., 10:], self._to(k)[..., 10:]
        ga, qsa, ksa = gram_and_norms_triton(qa, ka, heads)
        gb, qsb, ksb = gram_and_norms_triton(qb, kb, heads)
        assert rel(ga + gb, gram) <= 1e-6
        assert rel(qsa + qsb, q_sq) <= 1e-6 and rel(ksa + ksb, k_sq) <= 1e-6

    def test_gram_tiled_channels(self):
        # c = 72 > 64: the c×c matrix is tiled over a 2×2 grid of channel blocks, norms come from the edge blocks
        q, k = randn(1, 72, 5, 7, seed=55), randn(1, 72, 5, 7, seed=56)
        gram, q_sq, k_sq = gram_and_norms_triton(self._to(q), self._to(k), 1)
        qd, kd = q.double().reshape(1, 72, -1), k.double().reshape(1, 72, -1)
        assert rel(gram[:, 0], qd @ kd.transpose(-1, -2)) <= TOL[torch.float32]
        assert rel(q_sq, qd.square().sum(-1)) <= TOL[torch.float32]
        assert rel(k_sq, kd.square().sum(-1)) <= TOL[torch.float32]

    def test_spectral_attention_bad_inputs(self):
        q = self._to(randn(1, 8, 4, 4, seed=60))
        tau = self._to(torch.ones(2, 1, 1))
        with pytest.raises(InputValidationError, match="shape"):
            spectral_attention_triton(q, q[:, :4], q, tau, 2)
        with pytest.raises(InputValidationError, match="divisible"):
            spectral_attention_triton(q, q, q, self._to(torch.ones(3)), 3)
        with pytest.raises(InputValidationError, match="temperature"):
            spectral_attention_triton(q, q, q, self._to(torch.ones(4)), 2)
        with pytest.raises(InputValidationError, match="dtype"):
            spectral_attention_triton(q, q, q.half(), tau, 2)
        with pytest.raises(InputValidationError, match="splits"):
            gram_and_norms_triton(q, q, 2, splits=0)


@pytest.mark.skipif(not INTERPRETED, reason="kernels were compiled for a GPU (TRITON_INTERPRET off)")
class TestSpectralAttentionTritonInterpreter(_SpectralAttentionChecks):
    """On CPU tensors through the Triton interpreter."""

    device = "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="kernels were defined under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
class TestSpectralAttentionTritonGPU(_SpectralAttentionChecks):
    """The same checks with the compiled kernel on CUDA tensors (fp32 / fp16 / bf16)."""

    device = "cuda"

    def test_model_sized_shapes(self):
        # the official decoder's attention: c = 32 per head, 8 heads
        q, k, v = (randn(2, 256, 32, 48, seed=s) for s in (1, 2, 3))
        tau = rand(8, 1, 1, seed=4) + 0.5
        out = spectral_attention_triton(self._to(q), self._to(k), self._to(v), self._to(tau), 8)
        assert rel(out, _ref64(spectral_attention_reference, q, k, v, tau, 8)) <= 1e-5
