"""Every Triton autotune configuration, forced once, against the float64 reference (needs a CUDA device).

Why: autotuning runs only the fastest configuration for each key, so a configuration that miscompiles or indexes
wrongly (a block size whose remainder the masks do not cover, a dot shape the tensor cores reject) stays hidden until
some GPU or shape makes it the fastest. Each test narrows the kernel's ``triton.runtime.autotuner.Autotuner`` to one
configuration (``configs = [cfg]`` and its cache emptied: triton 3.6-3.8 then launch that configuration without
benchmarking) and compares the result with the reference, on shapes that leave a remainder in every tiled dimension.

The configurations come from the kernel module's ``GPU_CONFIGS`` (``GRAM_GPU_CONFIGS`` / ``APPLY_GPU_CONFIGS`` for
spectral attention) when it has them, else from the Autotuner itself, which holds the GPU list whenever the kernels
were compiled rather than interpreted. Run by ``scripts/gpu_suite.py`` (stage ``triton-configs``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' definition (their import)

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from sschsr_deploy.kernels.triton import deform_conv as dcn_mod  # noqa: E402
from sschsr_deploy.kernels.triton import patch_match as pm_mod  # noqa: E402
from sschsr_deploy.kernels.triton import spectral_attention as sa_mod  # noqa: E402
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference  # noqa: E402
from sschsr_deploy.ops.patch_match import patch_match_reference  # noqa: E402
from sschsr_deploy.ops.spectral_attention import gram_and_norms_reference  # noqa: E402

pytestmark = pytest.mark.gpu

# name -> (module, Autotuner attribute, module-level list names to prefer)
KERNELS: dict[str, tuple[ModuleType, str, tuple[str, ...]]] = {
    "deform_conv": (dcn_mod, "_deform_conv2d_kernel", ("GPU_CONFIGS",)),
    "patch_match": (pm_mod, "_patch_match_kernel", ("GPU_CONFIGS",)),
    "gram_norms": (sa_mod, "_gram_norms_kernel", ("GRAM_GPU_CONFIGS",)),
    "attn_apply": (sa_mod, "_attn_apply_kernel", ("APPLY_GPU_CONFIGS",)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # SIMT-exact ("ieee") and tensor-core paths
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
MATCH_MARGIN = {torch.float32: 1e-5, torch.bfloat16: 3e-2}  # fp64 top-2 score gap above which the index must agree


def _as_config(entry: Any) -> Any:
    """A ``triton.Config`` from a module-level list entry: a Config, or (kwargs, num_warps[, num_stages])."""
    if isinstance(entry, triton.Config):
        return entry
    if isinstance(entry, tuple) and entry and isinstance(entry[0], dict):
        return triton.Config(entry[0], *entry[1:])
    raise TypeError(f"cannot read {entry!r} as a triton.Config")


def _source(name: str) -> tuple[str, list[Any]]:
    mod, attr, lists = KERNELS[name]
    for list_name in lists:
        if hasattr(mod, list_name):
            return f"{mod.__name__}.{list_name}", [_as_config(c) for c in getattr(mod, list_name)]
    kernel = getattr(mod, attr)
    return f"{mod.__name__}.{attr}.configs", list(getattr(kernel, "configs", []))


def _cfg_id(cfg: Any) -> str:
    parts = [f"{k}{v}" for k, v in cfg.kwargs.items()] + [f"w{cfg.num_warps}", f"s{cfg.num_stages}"]
    return "_".join(parts)


def _params(name: str) -> list[Any]:
    _, configs = _source(name)
    return [pytest.param(cfg, id=f"{i}-{_cfg_id(cfg)}") for i, cfg in enumerate(configs)]


def _kernel(name: str) -> Autotuner:
    mod, attr, _ = KERNELS[name]
    assert not mod._INTERPRET, "the kernels were defined under TRITON_INTERPRET=1: nothing is compiled for the GPU"
    kernel = getattr(mod, attr)
    assert isinstance(kernel, Autotuner), f"{attr} is a {type(kernel).__name__}, not a triton Autotuner"
    return kernel


@contextlib.contextmanager
def only_config(kernel: Autotuner, cfg: Any) -> Iterator[None]:
    """Run ``kernel`` with ``cfg`` alone; the configurations and the tuning cache are restored afterwards."""
    saved = kernel.configs
    cache = getattr(kernel, "cache", None)
    saved_cache = dict(cache) if isinstance(cache, dict) else None
    kernel.configs = [cfg]
    if isinstance(cache, dict):
        cache.clear()
    try:
        yield
    finally:
        kernel.configs = saved
        if isinstance(cache, dict) and saved_cache is not None:
            cache.clear()
            cache.update(saved_cache)


def _check_used(kernel: Autotuner, cfg: Any) -> None:
    used = getattr(kernel, "best_config", None)  # set by Autotuner.run in triton 3.6-3.8
    if used is not None:
        assert str(used) == str(cfg), f"ran {used}, wanted {cfg}"


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("name", list(KERNELS))
def test_config_list_is_the_autotuned_list(name):
    """The list tested below is what the Autotuner chooses from (a module-level list could drift from it)."""
    kernel = _kernel(name)
    where, configs = _source(name)
    assert configs, f"{where} is empty"
    assert sorted(map(str, configs)) == sorted(map(str, kernel.configs)), f"{where} differs from the Autotuner's"


# b, c, h, w, o, (kh, kw), stride, pad, dil, groups, offset_groups, has_bias, offset scale
DCN_CASES = {
    "remainders": (2, 16, 11, 13, 40, (3, 3), 1, 1, 1, 1, 4, True, 2.0),  # 143 px, O=40, K=144
    "k_below_block": (3, 2, 5, 6, 3, (1, 1), 1, 0, 1, 1, 1, False, 0.7),  # K=2 < BLOCK_K, no bias
}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(DCN_CASES))
@pytest.mark.parametrize("cfg", _params("deform_conv"))
def test_deform_conv_config(cfg, case, dtype_name):
    from sschsr_deploy.kernels.triton import deform_conv2d_triton

    kernel = _kernel("deform_conv")
    dtype = DTYPES[dtype_name]
    b, c, h, w, o, (kh, kw), st, pad, dil, groups, og, has_bias, scale = DCN_CASES[case]
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // st + 1
    wo = (w + 2 * pad - dil * (kw - 1) - 1) // st + 1
    x = randn(b, c, h, w, seed=1).to(dtype)
    off = randn(b, 2 * og * kh * kw, ho, wo, seed=2, scale=scale).to(dtype)
    mask = torch.rand(b, og * kh * kw, ho, wo, generator=torch.Generator().manual_seed(3)).to(dtype)
    weight = randn(o, c // groups, kh, kw, seed=4, scale=(c * kh * kw) ** -0.5).to(dtype)
    bias = randn(o, seed=5).to(dtype) if has_bias else None
    kwargs = dict(stride=st, padding=pad, dilation=dil, groups=groups, offset_groups=og)
    with only_config(kernel, cfg):
        out = deform_conv2d_triton(*(t.cuda() if t is not None else None for t in (x, off, mask, weight, bias)),
                                   **kwargs)
        torch.cuda.synchronize()
        _check_used(kernel, cfg)
    ref = modulated_deform_conv2d_reference(x.double(), off.double(), mask.double(), weight.double(),
                                            None if bias is None else bias.double(), **kwargs)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel(out, ref) <= TOL[dtype]


def _margins64(feat: torch.Tensor, refm: torch.Tensor, p: int) -> torch.Tensor:
    """Gap between the best and the second-best fp64 score of every window (where an index may legitimately flip)."""
    fi = F.normalize(feat.double(), dim=1, eps=1e-12)
    fr = F.normalize(refm.double(), dim=1, eps=1e-12)
    win, pat = F.unfold(fi, p), F.unfold(fr, p)
    pat = pat / (pat.norm(dim=1, keepdim=True) + 1e-5)
    top = (pat.transpose(1, 2) @ win).topk(2, dim=1).values
    b, _, h, w = feat.shape
    return ((top[:, 0] - top[:, 1]) / (win.norm(dim=1) + 1e-5)).reshape(b, h - p + 1, w - p + 1)


PM_CASES = {"remainders": (1, 16, 13, 14, 3), "d_below_block": (2, 5, 9, 8, 2)}  # D=144 / D=20, 132 / 56 positions


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(PM_CASES))
@pytest.mark.parametrize("cfg", _params("patch_match"))
def test_patch_match_config(cfg, case, dtype_name):
    from sschsr_deploy.kernels.triton import patch_match_triton

    kernel = _kernel("patch_match")
    dtype = DTYPES[dtype_name]
    b, c, h, w, p = PM_CASES[case]
    feat, refm = randn(b, c, h, w, seed=6).to(dtype), randn(b, c, h, w, seed=7).to(dtype)
    with only_config(kernel, cfg):
        idx, sim = patch_match_triton(feat.cuda(), refm.cuda(), p)
        torch.cuda.synchronize()
        _check_used(kernel, cfg)
    ridx, rsim = patch_match_reference(feat.double(), refm.double(), p)
    idx, sim = idx.cpu(), sim.cpu()
    clear = _margins64(feat, refm, p) > MATCH_MARGIN[dtype]
    assert clear.any()  # some windows have a clear best patch: the case really tests the index
    assert torch.equal(idx[clear], ridx[clear])
    same = idx == ridx
    assert (sim.double() - rsim)[same].abs().max() <= (1e-5 if dtype == torch.float32 else 3e-2)


# b, C, h, w, heads, splits: c = C / heads per head; 40 leaves a partial 64-wide tile, 80 needs two tiles
ATT_CASES = {"partial_tile_3_splits": (2, 80, 23, 29, 2, 3), "two_tiles_1_split": (1, 80, 17, 19, 1, 1)}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(ATT_CASES))
@pytest.mark.parametrize("cfg", _params("gram_norms"))
def test_gram_norms_config(cfg, case, dtype_name):
    from sschsr_deploy.kernels.triton import gram_and_norms_triton

    kernel = _kernel("gram_norms")
    dtype = DTYPES[dtype_name]
    b, ch, h, w, heads, splits = ATT_CASES[case]
    q, k = randn(b, ch, h, w, seed=8).to(dtype), randn(b, ch, h, w, seed=9).to(dtype)
    with only_config(kernel, cfg):
        got = gram_and_norms_triton(q.cuda(), k.cuda(), heads, splits=splits)
        torch.cuda.synchronize()
        _check_used(kernel, cfg)
    want = gram_and_norms_reference(q.double(), k.double(), heads)
    tol = 1e-5  # fp32 accumulation of exact products: the same bound for rounded bf16 inputs
    for g, wnt in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == wnt.shape
        assert rel(g, wnt) <= tol


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(ATT_CASES))
@pytest.mark.parametrize("cfg", _params("attn_apply"))
def test_attn_apply_config(cfg, case, dtype_name):
    from sschsr_deploy.kernels.triton import attention_apply_triton

    kernel = _kernel("attn_apply")
    dtype = DTYPES[dtype_name]
    b, ch, h, w, heads, _ = ATT_CASES[case]
    c = ch // heads
    attn = torch.softmax(randn(b, heads, c, c, seed=10, scale=3.0), dim=-1).float()
    v = randn(b, ch, h, w, seed=11).to(dtype)
    with only_config(kernel, cfg):
        out = attention_apply_triton(attn.cuda(), v.cuda(), heads)
        torch.cuda.synchronize()
        _check_used(kernel, cfg)
    ref = (attn.double() @ v.double().reshape(b, heads, c, h * w)).reshape(b, ch, h, w)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel(out, ref) <= TOL[dtype]
