"""Bitwise determinism of every GPU kernel, and cases past 2**31 elements (int64 indexing) (needs a CUDA device).

What the kernels promise, from their own comments:

- CUDA deformable convolution (csrc/cuda/deform_conv_kernel.cu): each block owns an output tile and writes its
  accumulators once; the reduction runs in a fixed order, no atomics.
- CUDA spectral attention: "adds the per-split partials in split order (deterministic, no atomics)".
- CUDA patch matching: every split writes one (value, index) per window; "merges the splits in order with the same
  rule".
- Triton (sschsr_deploy/kernels/triton): deform conv and patch matching write each output once; spectral attention
  adds its partial sums with torch.sum, "a deterministic second pass, no atomics".

So calls repeated on the same inputs (same GPU, same autotuned configuration) must agree bit for bit.

int64 indexing: the CUDA kernels index with int64 (``index_t``); the Triton kernels promote the batch term to int64 and
keep offsets inside one sample in int32 (``check_int32_extent``). The large cases hold two samples, the second starting
past 2**31 elements, each sample below 2**31: every sample's output must match the op run on that sample alone (an
int32 overflow reads elsewhere, or faults). They need up to ~36 GiB of free GPU memory, checked with
``torch.cuda.mem_get_info``; with less they skip with the reason (which ``scripts/gpu_suite.py`` counts as a failure:
the H200 it runs on has room). Run by ``scripts/gpu_suite.py`` (stage ``determinism``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPS = ("deform_conv", "spectral_attention", "gram_and_norms", "patch_match")


def implementation(impl: str, op: str) -> Callable[..., object]:
    """The op's native CUDA kernel (``torch.ops.sschsr``) or its Triton function, with one calling convention."""
    if impl == "cuda":
        import sschsr_deploy.ops  # noqa: F401  (defines the ops, loads the extension)
        from sschsr_deploy.ops._backend import has_kernel, native_status

        name = "modulated_deform_conv2d" if op == "deform_conv" else op
        assert has_kernel(name, "cuda"), f"no native CUDA kernel for {name}: {native_status()}"
        native = getattr(torch.ops.sschsr, name)
        if op == "deform_conv":
            return lambda x, off, m, wt, bs, st, pad, og: native(x, off, m, wt, bs, [st, st], [pad, pad], [1, 1],
                                                                 1, og)
        return native
    from sschsr_deploy.kernels import triton as tk

    assert not tk.deform_conv._INTERPRET, "Triton kernels were defined under TRITON_INTERPRET=1"
    if op == "deform_conv":
        return lambda x, off, m, wt, bs, st, pad, og: tk.deform_conv2d_triton(x, off, m, wt, bs, st, pad, 1, 1, og)
    return {"spectral_attention": tk.spectral_attention_triton, "gram_and_norms": tk.gram_and_norms_triton,
            "patch_match": tk.patch_match_triton}[op]


def randn(*shape: int, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    out = torch.randn(*shape, device="cuda", generator=gen, dtype=dtype)  # drawn in dtype: no fp32 copy of big cases
    return out.mul_(scale) if scale != 1.0 else out


def inputs(op: str, dtype: torch.dtype) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(0)
    if op == "deform_conv":
        b, c, o, h, w, og = 2, 64, 48, 40, 44, 8
        return (randn(b, c, h, w, dtype=dtype, gen=g), randn(b, 2 * og * 9, h, w, dtype=dtype, gen=g, scale=2.0),
                torch.rand(b, og * 9, h, w, device="cuda", generator=g).to(dtype),
                randn(o, c, 3, 3, dtype=dtype, gen=g, scale=1 / 24), randn(o, dtype=dtype, gen=g), 1, 1, og)
    if op == "spectral_attention":
        q, k, v = (randn(2, 128, 48, 52, dtype=dtype, gen=g) for _ in range(3))
        return q, k, v, (torch.rand(4, 1, 1, device="cuda", generator=g) + 0.5).to(dtype), 4
    if op == "gram_and_norms":
        return randn(2, 128, 48, 52, dtype=dtype, gen=g), randn(2, 128, 48, 52, dtype=dtype, gen=g), 4
    return randn(1, 64, 40, 44, dtype=dtype, gen=g), randn(1, 64, 40, 44, dtype=dtype, gen=g), 3


def flat(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]  # type: ignore[list-item]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["cuda", "triton"])
def test_repeated_calls_are_bitwise_equal(impl, op, dtype_name):
    fn = implementation(impl, op)
    args = inputs(op, DTYPES[dtype_name])
    first = [t.clone() for t in flat(fn(*args))]
    for _ in range(3):
        again = flat(fn(*args))
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b), f"{impl} {op}: max |diff| {(a.double() - b.double()).abs().max().item()}"


def need_free_gib(gib: float) -> None:
    free, total = torch.cuda.mem_get_info()
    if free < gib * 2**30:
        pytest.skip(f"not enough free GPU memory for a >2**31-element case: needs {gib:.0f} GiB, "
                    f"{free / 2**30:.1f} of {total / 2**30:.0f} GiB free")


def rel(a: torch.Tensor, b: torch.Tensor, chunk: int = 8) -> float:
    """‖a − b‖ / ‖b‖ accumulated in fp64 over channel chunks (a float64 copy of a 1e9-element output would not fit)."""
    num = den = 0.0
    for i in range(0, a.shape[1], chunk):
        x, y = a[:, i:i + chunk].float(), b[:, i:i + chunk].float()
        num += (x - y).square().sum(dtype=torch.float64).item()
        den += y.square().sum(dtype=torch.float64).item()
    return (num / max(den, 1e-300)) ** 0.5


@pytest.fixture
def free_after():
    yield
    torch.cuda.empty_cache()


@pytest.mark.parametrize("impl", ["cuda", "triton"])
def test_deform_conv_past_2_31_elements(impl, free_after):
    """Input 2×1024×1100×1100 fp16 (2.48e9 elements, 1.24e9 per sample), 1×1 kernel: cheap to run, large to index."""
    b, c, h, w, o = 2, 1024, 1100, 1100, 16
    assert b * c * h * w > 2**31 > c * h * w
    need_free_gib(12)
    fn = implementation(impl, "deform_conv")
    g = torch.Generator(device="cuda").manual_seed(1)
    x = randn(b, c, h, w, dtype=torch.float16, gen=g)
    off = randn(b, 2, h, w, dtype=torch.float16, gen=g, scale=2.0)
    m = torch.rand(b, 1, h, w, device="cuda", generator=g).to(torch.float16)
    wt = randn(o, c, 1, 1, dtype=torch.float16, gen=g, scale=1 / 32)
    bs = randn(o, dtype=torch.float16, gen=g)
    out = fn(x, off, m, wt, bs, 1, 0, 1)
    assert out.shape == (b, o, h, w) and torch.isfinite(out).all()
    for i in range(b):
        alone = fn(x[i:i + 1].clone(), off[i:i + 1].clone(), m[i:i + 1].clone(), wt, bs, 1, 0, 1)
        err = rel(out[i:i + 1], alone)
        assert err <= 1e-3, f"sample {i}: rel. error {err:.2e} against the sample run alone"


@pytest.mark.parametrize("impl", ["cuda", "triton"])
def test_spectral_attention_past_2_31_elements(impl, free_after):
    """q, k, v 2×64×4160×4160 fp16 (2.2e9 elements each; each sample 1.1e9), 2 heads."""
    b, c, h, w, heads = 2, 64, 4160, 4160, 2
    assert b * c * h * w > 2**31 > c * h * w
    need_free_gib(36)
    fn = implementation(impl, "spectral_attention")
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (randn(b, c, h, w, dtype=torch.float16, gen=g) for _ in range(3))
    tau = torch.full((heads, 1, 1), 2.0, device="cuda", dtype=torch.float16)
    out = fn(q, k, v, tau, heads)
    assert out.shape == q.shape and torch.isfinite(out).all()
    for i in range(b):
        alone = fn(q[i:i + 1].clone(), k[i:i + 1].clone(), v[i:i + 1].clone(), tau, heads)
        err = rel(out[i:i + 1], alone)  # the pixel splits may differ with the batch: rounding, not bits
        assert err <= 2e-3, f"sample {i}: rel. error {err:.2e} against the sample run alone"
        del alone
