"""Triton kernels (deform conv, spectral attention, patch matching) against the plain-PyTorch references.

On a machine without CUDA the kernels run on CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1``, set
below before the kernels are imported). On a CUDA machine the variable defaults to 0, the kernels are compiled and
``TestTritonGPU`` runs the same checks on CUDA tensors (bf16 included). References are evaluated on the CPU in fp64,
so TF32 or reduced-precision library paths never leak into the ground truth.

Tolerances (relative error ‖out − ref‖ / ‖ref‖): fp32 1e-5 (tl.dot is exact fp32 under the interpreter and
``input_precision="ieee"`` on a GPU); fp16 3e-3 and bf16 2e-2 (inputs are rounded to the dtype before the reference
sees them, so the bound covers the kernel's own roundings: operands of tl.dot and the output).
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' definition (their import)

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sschsr_deploy.errors import InputValidationError  # noqa: E402
from sschsr_deploy.kernels.triton import deform_conv as _dcn_module  # noqa: E402
from sschsr_deploy.kernels.triton import (  # noqa: E402
    deform_conv2d_triton,
    gram_and_norms_triton,
    patch_match_triton,
    spectral_attention_triton,
)
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference  # noqa: E402
from sschsr_deploy.ops.patch_match import patch_match_reference  # noqa: E402
from sschsr_deploy.ops.spectral_attention import spectral_attention_reference  # noqa: E402

INTERPRETED = _dcn_module._INTERPRET  # how the kernels were defined in this process (first import wins)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().cpu().double()
    ref = ref.detach().cpu().double()
    return ((out - ref).norm() / ref.norm()).item()


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def rand(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def _ref64(fn, *args, **kwargs):
    """Run a reference on CPU fp64 copies of its tensor arguments."""
    conv = [a.detach().cpu().double() if isinstance(a, torch.Tensor) else a for a in args]
    return fn(*conv, **kwargs)


# deform conv cases:
# (B, C, H, W, O, (kh, kw), stride, padding, dilation, groups, offset_groups, has mask, has bias, offset scale)
DCN_CASES = {
    "3x3_og2_bias_mask": (2, 8, 9, 11, 6, (3, 3), 1, 1, 1, 1, 2, True, True, 2.5),
    "many_blocks": (1, 8, 13, 13, 36, (3, 3), 1, 1, 1, 1, 8, True, False, 1.0),
    "rect_kernel_strided_dilated": (2, 8, 10, 9, 4, (2, 3), (2, 1), (1, 2), (2, 1), 2, 4, False, False, 1.5),
    "groups4_1x1": (2, 8, 6, 7, 8, (1, 1), 1, 0, 1, 4, 4, True, True, 0.7),
    "odd_channels": (3, 5, 7, 6, 3, (3, 3), 1, 0, 1, 1, 1, True, True, 1.0),
    "offsets_mostly_outside": (1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 2, True, True, 12.0),
}


def _dcn_inputs(case, seed=0):
    b, c, h, w, o, (kh, kw), stride, padding, dilation, groups, og, has_mask, has_bias, scale = case
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    x = randn(b, c, h, w, seed=seed)
    off = randn(b, 2 * og * kh * kw, ho, wo, seed=seed + 1, scale=scale)
    mask = rand(b, og * kh * kw, ho, wo, seed=seed + 2) if has_mask else None
    weight = randn(o, c // groups, kh, kw, seed=seed + 3, scale=0.3)
    bias = randn(o, seed=seed + 4) if has_bias else None
    return x, off, mask, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                            offset_groups=og)


class _Checks:
    """Every kernel against its reference; subclasses choose the device."""

    device = "cpu"

    def _dtype(self, name: str) -> torch.dtype:
        if name == "bf16" and self.device == "cpu":
            pytest.skip("bf16 is not supported by the Triton interpreter")
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            pytest.skip("this GPU has no bf16")
        return DTYPES[name]

    def _to(self, t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.to(device=self.device, dtype=dtype or t.dtype)

    # ---------------------------------------------------------------- deformable convolution
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

    # ---------------------------------------------------------------- spectral attention
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

    # ---------------------------------------------------------------- patch matching
    @pytest.mark.parametrize("b,c,h,w,p", [(2, 8, 12, 13, 3), (1, 3, 7, 9, 3), (1, 5, 14, 15, 3), (2, 4, 6, 5, 1),
                                           (1, 4, 9, 8, 5)])
    def test_patch_match_matches_reference(self, b, c, h, w, p):
        feat, ref_feat = randn(b, c, h, w, seed=70), randn(b, c, h, w, seed=71)
        idx, sim = patch_match_triton(self._to(feat), self._to(ref_feat), p)
        ridx, rsim = patch_match_reference(feat, ref_feat, p)  # fp32 CPU: same arithmetic order for the arg-max
        assert idx.dtype == torch.long and idx.shape == ridx.shape and sim.dtype == torch.float32
        assert torch.equal(idx.cpu(), ridx)
        assert rel(sim, rsim) <= TOL[torch.float32]

    def test_patch_match_shifted_copy(self):
        # the input is the reference moved by (2, −3): interior windows find their patch, with similarity ≈ 1
        ref_feat = randn(2, 6, 13, 14, seed=80)
        feat = torch.roll(ref_feat, shifts=(2, -3), dims=(2, 3))
        idx, sim = patch_match_triton(self._to(feat), self._to(ref_feat), 3)
        hp, wp = 11, 12
        ys, xs = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
        inside = (ys >= 2) & (xs + 3 < wp)  # windows that do not wrap around
        expected = (ys - 2) * wp + (xs + 3)
        assert inside.sum() > 40
        assert torch.equal(idx.cpu()[:, inside], expected[inside].expand(2, -1))
        assert (sim.cpu()[:, inside] - 1).abs().max() < 1e-4
        ridx, rsim = patch_match_reference(feat, ref_feat, 3)
        assert torch.equal(idx.cpu(), ridx) and rel(sim, rsim) <= TOL[torch.float32]

    def test_patch_match_periodic_reference(self):
        # a periodic reference (period 5) holds many identical patches; every window of a rolled copy must land on
        # one of the copies of its patch, with similarity ≈ 1
        g = torch.Generator().manual_seed(90)
        ref_feat = torch.randn(1, 4, 5, 5, generator=g).repeat(2, 1, 4, 4)  # 20×20 → 18×18 = 324 patches
        feat = torch.roll(ref_feat, shifts=(1, 2), dims=(2, 3)) * 3.0  # scale does not change cosine
        idx, sim = patch_match_triton(self._to(feat), self._to(ref_feat), 3)
        wp = 18
        ys, xs = torch.meshgrid(torch.arange(wp), torch.arange(wp), indexing="ij")
        idx = idx.cpu()
        assert torch.equal((idx // wp) % 5, ((ys - 1) % 5).expand(2, -1, -1))
        assert torch.equal((idx % wp) % 5, ((xs - 2) % 5).expand(2, -1, -1))
        assert (sim.cpu() - 1).abs().max() < 1e-4

    def test_patch_match_exact_ties_pick_lowest_index(self):
        # Exact ties need bit-identical scores, which a matmul only guarantees when no rounding happens: each window
        # holds at most one non-zero (one-hot) pixel, so its score against patch n is one entry of patch n, summed
        # with zeros. The reference is periodic (duplicates in one BLOCK_N tile and across tiles) and all-zero
        # windows tie over every patch (→ index 0).
        g = torch.Generator().manual_seed(91)
        c, size, wp = 4, 20, 18
        ref_feat = torch.randn(1, c, 5, 5, generator=g).repeat(2, 1, 4, 4)
        feat = torch.zeros(2, c, size, size)
        for bi in range(2):
            for y in range(bi, size, 4):  # non-zero pixels ≥ 4 apart: never two in one 3×3 window
                for x in range((y // 4) % 3, size, 4):
                    feat[bi, int(torch.randint(c, (1,), generator=g)), y, x] = 0.5 + float(y + x)
        idx, sim = patch_match_triton(self._to(feat), self._to(ref_feat), 3)
        # expected: the lowest patch index among the exact maxima of fp32 scores, formed exactly as the op does
        fi = F.normalize(feat, dim=1, eps=1e-12)
        fr = F.normalize(ref_feat, dim=1, eps=1e-12)
        win, pat = F.unfold(fi, 3), F.unfold(fr, 3)
        pat = pat / (pat.norm(dim=1, keepdim=True) + 1e-5)
        scores = (pat.double().transpose(1, 2) @ win.double()).float()  # exact: one non-zero product per entry
        best = scores.max(dim=1, keepdim=True).values
        n = torch.arange(scores.shape[1]).view(1, -1, 1)
        expected = torch.where(scores == best, n, scores.shape[1]).min(dim=1).values.view(2, wp, wp)
        tie_count = (scores == best).sum(dim=1)
        assert (tie_count > 1).float().mean() > 0.9  # nearly every window is a tie, several across tiles
        assert (scores == best)[:, 128:].any(dim=1).float().mean() > 0.5  # tied maxima also in later 128-wide tiles
        assert torch.equal(idx.cpu(), expected)
        assert (expected == 0).any() and (expected > 0).any()
        ridx, rsim = patch_match_reference(feat, ref_feat, 3)
        assert torch.equal(idx.cpu(), ridx) and rel(sim, rsim) <= TOL[torch.float32]

    def test_patch_match_non_contiguous(self):
        feat = randn(2, 6, 11, 10, seed=95)
        ref_feat = randn(2, 6, 10, 11, seed=96).transpose(2, 3)  # 2×6×11×10, spatial strides swapped
        fs = self._to(feat).contiguous(memory_format=torch.channels_last)
        assert not (fs.is_contiguous() or ref_feat.is_contiguous())
        idx, sim = patch_match_triton(fs, self._to(ref_feat), 3)
        ridx, rsim = patch_match_reference(feat, ref_feat.contiguous(), 3)
        assert torch.equal(idx.cpu(), ridx) and rel(sim, rsim) <= TOL[torch.float32]

    @pytest.mark.parametrize("dtype_name", ["fp16", "bf16"])
    def test_patch_match_half(self, dtype_name):
        dtype = self._dtype(dtype_name)
        feat, ref_feat = randn(2, 8, 10, 11, seed=97).to(dtype), randn(2, 8, 10, 11, seed=98).to(dtype)
        idx, sim = patch_match_triton(self._to(feat), self._to(ref_feat), 3)
        assert sim.dtype == dtype
        # exact fp64 scores of every (patch, window): the chosen patch must score within the dtype's tolerance of
        # the best (near-ties may pick a different index than the reference)
        fi = F.normalize(feat.double(), dim=1, eps=1e-12)
        fr = F.normalize(ref_feat.double(), dim=1, eps=1e-12)
        win, pat = F.unfold(fi, 3), F.unfold(fr, 3)
        pat = pat / (pat.norm(dim=1, keepdim=True) + 1e-5)
        scores = (pat.transpose(1, 2) @ win) / (win.norm(dim=1) + 1e-5).unsqueeze(1)  # B × N × P
        best = scores.max(dim=1).values
        chosen = scores.gather(1, idx.cpu().reshape(2, 1, -1)).squeeze(1)
        assert (best - chosen).max() <= 4 * TOL[dtype]
        assert rel(sim.reshape(2, -1), best) <= TOL[dtype]
        ridx, _ = patch_match_reference(feat.double(), ref_feat.double(), 3)
        assert (idx.cpu() == ridx).float().mean() > 0.9

    def test_patch_match_bad_inputs(self):
        f = self._to(randn(1, 4, 6, 6, seed=99))
        with pytest.raises(InputValidationError, match="shape"):
            patch_match_triton(f, f[:, :3], 3)
        with pytest.raises(InputValidationError, match="smaller"):
            patch_match_triton(f[:, :, :2], f[:, :, :2], 3)
        with pytest.raises(InputValidationError, match="dtype"):
            patch_match_triton(f, f.half(), 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter")
def test_interpreter_works_when_triton_was_imported_first():
    # torch._dynamo (hence torchvision, torch.compile) imports triton; if that happens before TRITON_INTERPRET is set,
    # triton's own @jit library (tl.sum, tl.zeros, ...) stays compiled-only and kernels calling it fail. Ours avoid it.
    code = (
        "import os, triton, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from sschsr_deploy.kernels.triton import deform_conv2d_triton, patch_match_triton, spectral_attention_triton\n"
        "from sschsr_deploy.ops import modulated_deform_conv2d_reference, patch_match_reference, "
        "spectral_attention_reference\n"
        "torch.manual_seed(0)\n"
        "x, w, off = torch.randn(1, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(1, 18, 6, 6)\n"
        "d = deform_conv2d_triton(x, off, None, w, None, 1, 1, 1, 1, 1)\n"
        "assert torch.allclose(d, modulated_deform_conv2d_reference(x, off, None, w, None, 1, 1), atol=1e-4)\n"
        "q = torch.randn(1, 4, 5, 5)\n"
        "a = spectral_attention_triton(q, q * 2, q + 1, torch.ones(2), 2)\n"
        "assert torch.allclose(a, spectral_attention_reference(q, q * 2, q + 1, torch.ones(2), 2), atol=1e-5)\n"
        "i, s = patch_match_triton(q, q.flip(3))\n"
        "assert torch.equal(i, patch_match_reference(q, q.flip(3))[0])\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_int32_extent_guard():
    # per-sample offsets are int32 in the kernels: a larger sample must be refused, not silently wrapped
    from sschsr_deploy.kernels import check_int32_extent

    check_int32_extent("op", torch.empty(4, 2**15, 2**15, 1, device="meta"))  # 2**30 elements: fine
    with pytest.raises(InputValidationError, match="int32"):
        check_int32_extent("op", torch.empty(1, 2**16, 2**16, 2, device="meta"))


@pytest.mark.skipif(not INTERPRETED, reason="kernels were compiled for a GPU (TRITON_INTERPRET off): see TestTritonGPU")
class TestTritonInterpreter(_Checks):
    """The kernels on CPU tensors through the Triton interpreter."""

    device = "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="kernels were defined under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
class TestTritonGPU(_Checks):
    """The same checks with compiled kernels on CUDA tensors (fp32 / fp16 / bf16)."""

    device = "cuda"

    def test_cpu_tensors_refused_when_compiled(self):
        f = randn(1, 4, 6, 6, seed=1)
        with pytest.raises(InputValidationError, match="CUDA"):
            patch_match_triton(f, f, 3)

    def test_model_sized_shapes(self):
        # shapes of the official decoder: DCN 64 ch, 8 offset groups; attention c = 32 with 8 heads; VGG-like matching
        x, off, mask, weight, bias, kw = _dcn_inputs((1, 64, 48, 40, 64, (3, 3), 1, 1, 1, 1, 8, True, True, 2.0))
        out = deform_conv2d_triton(*(self._to(t) for t in (x, off, mask, weight, bias)), **kw)
        assert rel(out, _ref64(modulated_deform_conv2d_reference, x, off, mask, weight, bias, **kw)) <= 1e-5
        q, k, v = (randn(2, 256, 32, 48, seed=s) for s in (1, 2, 3))
        tau = rand(8, 1, 1, seed=4) + 0.5
        out = spectral_attention_triton(self._to(q), self._to(k), self._to(v), self._to(tau), 8)
        assert rel(out, _ref64(spectral_attention_reference, q, k, v, tau, 8)) <= 1e-5
        f, r = randn(1, 64, 40, 36, seed=5), randn(1, 64, 40, 36, seed=6)
        idx, sim = patch_match_triton(self._to(f), self._to(r), 3)
        ridx, rsim = patch_match_reference(f, r, 3)
        assert (idx.cpu() == ridx).float().mean() > 0.999 and rel(sim, rsim) <= 1e-5
