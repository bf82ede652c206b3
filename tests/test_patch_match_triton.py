"""The Triton patch matching kernel against its plain-PyTorch reference: on CPU tensors through the Triton
interpreter here, compiled on CUDA tensors on a GPU (see ``triton_checks.py`` for tolerances)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from triton_checks import INTERPRETED, TOL, KernelChecks, randn, rel

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.kernels.triton import (
    patch_match_triton,
)
from sschsr_deploy.ops.patch_match import patch_match_reference


class _PatchMatchChecks(KernelChecks):
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


@pytest.mark.skipif(not INTERPRETED, reason="kernels were compiled for a GPU (TRITON_INTERPRET off)")
class TestPatchMatchTritonInterpreter(_PatchMatchChecks):
    """On CPU tensors through the Triton interpreter."""

    device = "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="kernels were defined under TRITON_INTERPRET=1; run with TRITON_INTERPRET=0")
class TestPatchMatchTritonGPU(_PatchMatchChecks):
    """The same checks with the compiled kernel on CUDA tensors (fp32 / fp16 / bf16)."""

    device = "cuda"

    def test_cpu_tensors_refused_when_compiled(self):
        f = randn(1, 4, 6, 6, seed=1)
        with pytest.raises(InputValidationError, match="CUDA"):
            patch_match_triton(f, f, 3)

    def test_model_sized_shapes(self):
        # VGG-like matching features
        f, r = randn(1, 64, 40, 36, seed=5), randn(1, 64, 40, 36, seed=6)
        idx, sim = patch_match_triton(self._to(f), self._to(r), 3)
        ridx, rsim = patch_match_reference(f, r, 3)
        assert (idx.cpu() == ridx).float().mean() > 0.999 and rel(sim, rsim) <= 1e-5
