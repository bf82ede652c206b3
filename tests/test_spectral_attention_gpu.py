"""CUDA spectral attention (``torch.ops.sschsr.spectral_attention`` / ``gram_and_norms``) against the PyTorch
reference (fp32 / fp16 / bf16 / fp64, non-contiguous inputs, a non-default stream).

Needs a CUDA device and an extension built with CUDA (skipped otherwise). Tolerance: relative error vs the float64
reference on the same rounded inputs ≤ 1e-5 (fp32), 2e-3 (fp16), 1e-2 (bf16); gram_and_norms ≤ 1e-5 (fp32 statistics
for every input dtype except fp64).
"""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.ops import spectral_attention_reference

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_extension")]




ATT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


ATT_SHAPES = [
    (1, 8, 5, 7, 1),
    (2, 12, 9, 11, 3),
    (1, 256, 32, 24, 8),  # res1 heads (c = 32)
    (1, 128, 40, 33, 4),  # res2 heads (c = 32)
    (2, 64, 70, 65, 1),  # res3 head (c = 64), several pixel splits
    (1, 80, 9, 9, 2),  # c = 40: two Gram tiles per side, partial second tile
]


@pytest.mark.parametrize("shape", ATT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_spectral_attention_cuda(shape, dtype):
    b, c, h, w, heads = shape
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    q, k, v = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    tau = (0.5 + 2 * torch.rand(heads, 1, 1, generator=g, dtype=torch.float64)).to(dtype)
    out = torch.ops.sschsr.spectral_attention(q.cuda(), k.cuda(), v.cuda(), tau.cuda(), heads)
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == q.shape
    ref = spectral_attention_reference(q.double(), k.double(), v.double(), tau.double(), heads)
    assert rel_err(out, ref) <= ATT_TOL[dtype]
    gram, q_sq, k_sq = torch.ops.sschsr.gram_and_norms(q.cuda(), k.cuda(), heads)
    assert gram.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    qh = q.double().reshape(b, heads, c // heads, -1)
    kh = k.double().reshape(b, heads, c // heads, -1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(gram, qh @ kh.transpose(-1, -2)) <= tol
    assert rel_err(q_sq, q.double().pow(2).flatten(2).sum(-1)) <= tol
    assert rel_err(k_sq, k.double().pow(2).flatten(2).sum(-1)) <= tol


def test_spectral_attention_cuda_matches_cpu_kernel_and_non_contiguous():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 3 * 32, 17, 19, generator=g)
    q, k, v = base[:, :32], base[:, 32:64].transpose(2, 3).contiguous().transpose(2, 3), base[:, 64:]
    tau = torch.rand(4, 1, 1, generator=g) + 0.5
    cpu = torch.ops.sschsr.spectral_attention(q, k, v, tau, 4)
    gpu = torch.ops.sschsr.spectral_attention(q.cuda(), k.cuda(), v.cuda(), tau.cuda(), 4)
    assert rel_err(gpu, cpu) <= 1e-5


def test_spectral_attention_on_a_side_stream():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 64, 128, 96, generator=g) for _ in range(3))
    tau = torch.ones(2, 1, 1)
    ref = spectral_attention_reference(q.double(), k.double(), v.double(), tau.double(), 2)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        qd, kd, vd, td = (t.cuda(non_blocking=True) for t in (q, k, v, tau))
        out = torch.ops.sschsr.spectral_attention(qd, kd, vd, td, 2)
        out_host = out.to("cpu", non_blocking=False)
    side.synchronize()
    assert rel_err(out_host, ref) <= 1e-5
