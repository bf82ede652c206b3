"""Small cases of the native CUDA operators, for ``compute-sanitizer`` (stage ``sanitizer`` of scripts/gpu_suite.py).

Why small: memcheck, racecheck and synccheck slow kernels down 10-100x, and what they look for (out-of-bounds or
misaligned accesses, shared-memory races, barrier misuse) shows on shapes that exercise every code path: partial
tiles, channel counts that are not a multiple of the K step, several splits, every dtype (fp32 / fp64 take the SIMT
paths, fp16 / bf16 the WMMA tensor-core paths). Each result is also compared loosely with the float64 reference on the
CPU, so a kernel that silently writes nothing cannot pass. Prints ``gpu_sanitizer_cases: ok`` at the end: the suite
requires that line, so a run the sanitizer cut short never counts as clean.

    python scripts/gpu_sanitizer_cases.py                 # CUDA (what the suite runs)
    python scripts/gpu_sanitizer_cases.py --device cpu    # the same cases on the native CPU kernels (logic check)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

OPS = ("modulated_deform_conv2d", "patch_match", "spectral_attention", "gram_and_norms")
# loose on purpose: the GPU tests hold the tight tolerances; this only catches garbage
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def deform_cases(device: str, dtype: torch.dtype) -> list[tuple[str, Callable[[], float]]]:
    from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference as ref

    cases = []
    # b, c, o, h, w, kh, kw, stride, pad, dil, groups, offset_groups
    for i, (b, c, o, h, w, kh, kw, st, pad, dil, groups, og) in enumerate([
        (1, 8, 6, 7, 9, 3, 3, 1, 1, 1, 1, 2),  # partial pixel / channel tiles
        (2, 12, 10, 6, 5, 3, 2, 2, 1, 1, 2, 3),  # stride 2, conv groups, non-square kernel
        (1, 40, 70, 5, 4, 1, 1, 1, 0, 1, 1, 1),  # K not a multiple of the stage depth, > 1 channel tile
    ]):
        ho = (h + 2 * pad - dil * (kh - 1) - 1) // st + 1
        wo = (w + 2 * pad - dil * (kw - 1) - 1) // st + 1
        x, off = randn(b, c, h, w, seed=i), 2.0 * randn(b, 2 * og * kh * kw, ho, wo, seed=10 + i)
        m = torch.rand(b, og * kh * kw, ho, wo, generator=torch.Generator().manual_seed(20 + i), dtype=torch.float64)
        wt = randn(o, c // groups, kh, kw, seed=30 + i) / (c // groups * kh * kw) ** 0.5
        bias = randn(o, seed=40 + i)
        args = ([st, st], [pad, pad], [dil, dil], groups, og)
        tensors = [t.to(dtype) for t in (x, off, m, wt, bias)]

        def run(tensors=tensors, args=args) -> float:
            out = torch.ops.sschsr.modulated_deform_conv2d(*(t.to(device) for t in tensors), *args)
            want = ref(*(t.double() for t in tensors), tuple(args[0]), tuple(args[1]), tuple(args[2]), *args[3:])
            return rel(out, want)

        cases.append((f"deform_conv case{i}", run))
    return cases


def attention_cases(device: str, dtype: torch.dtype) -> list[tuple[str, Callable[[], float]]]:
    from sschsr_deploy.ops.spectral_attention import gram_and_norms_reference, spectral_attention_reference

    cases = []
    for i, (b, c, h, w, heads) in enumerate([(1, 8, 5, 7, 1), (2, 80, 9, 9, 2), (1, 64, 33, 35, 1)]):
        q, k, v = (randn(b, c, h, w, seed=50 + 3 * i + j).to(dtype) for j in range(3))
        tau = (0.5 + torch.rand(heads, 1, 1, generator=torch.Generator().manual_seed(i))).to(dtype)

        def attn(q=q, k=k, v=v, tau=tau, heads=heads) -> float:
            out = torch.ops.sschsr.spectral_attention(q.to(device), k.to(device), v.to(device), tau.to(device), heads)
            return rel(out, spectral_attention_reference(q.double(), k.double(), v.double(), tau.double(), heads))

        def gram(q=q, k=k, heads=heads) -> float:
            got = torch.ops.sschsr.gram_and_norms(q.to(device), k.to(device), heads)
            want = gram_and_norms_reference(q.double(), k.double(), heads)
            return max(rel(g, w) for g, w in zip(got, want, strict=True))

        cases += [(f"spectral_attention case{i}", attn), (f"gram_and_norms case{i}", gram)]
    return cases


def patch_match_cases(device: str, dtype: torch.dtype) -> list[tuple[str, Callable[[], float]]]:
    from sschsr_deploy.ops.patch_match import patch_match_reference

    cases = []
    for i, (b, c, h, w, p) in enumerate([(1, 7, 6, 5, 2), (2, 16, 9, 11, 3), (1, 64, 20, 23, 3)]):
        feat, refm = randn(b, c, h, w, seed=70 + i).to(dtype), randn(b, c, h, w, seed=80 + i).to(dtype)

        def run(feat=feat, refm=refm, p=p) -> float:
            idx, sim = torch.ops.sschsr.patch_match(feat.to(device), refm.to(device), p)
            ridx, rsim = patch_match_reference(feat.double(), refm.double(), p)
            agree = (idx.cpu() == ridx).double().mean().item()
            if agree < 0.9:  # near ties may swap in 16-bit; most windows must agree
                return float("inf")
            same = idx.cpu() == ridx
            return rel(sim.cpu()[same], rsim[same])

        cases.append((f"patch_match case{i}", run))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args(argv)
    import sschsr_deploy.ops  # noqa: F401  (defines torch.ops.sschsr.*; registers the native kernels)
    from sschsr_deploy.ops._backend import has_kernel, native_status

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitizer_cases: CUDA is not available", file=sys.stderr)
        return 2
    missing = [op for op in OPS if not has_kernel(op, args.device)]
    if missing:
        print(f"gpu_sanitizer_cases: no native {args.device} kernel for {', '.join(missing)} ({native_status()})",
              file=sys.stderr)
        return 2
    dtypes = [torch.float32, torch.float64]
    if args.device == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    bad = []
    n = 0
    for dtype in dtypes:
        for name, case in deform_cases(args.device, dtype) + attention_cases(args.device, dtype) + patch_match_cases(
                args.device, dtype):
            err = case()
            n += 1
            ok = err <= TOL[dtype]
            print(f"{name:28s} {str(dtype).removeprefix('torch.'):9s} rel.err {err:.2e} {'ok' if ok else 'BAD'}")
            if not ok:
                bad.append(f"{name} {dtype}")
    if args.device == "cuda":
        torch.cuda.synchronize()
    if bad:
        print(f"gpu_sanitizer_cases: {len(bad)} of {n} cases disagree with the reference: {', '.join(bad)}",
              file=sys.stderr)
        return 1
    print(f"gpu_sanitizer_cases: ok ({n} cases on {args.device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
