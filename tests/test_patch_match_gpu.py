"""CUDA patch matching (``torch.ops.sschsr.patch_match``) against the PyTorch reference (fp32 / fp16 / bf16 / fp64,
ties, a non-default stream, the golden case).

Needs a CUDA device and an extension built with CUDA (skipped otherwise). The index must equal the float64 reference
wherever the float64 cosine margin exceeds 1e-5 (fp32), 5e-3 (fp16: tensor-core products of fp16-rounded normalised
features) or 3e-2 (bf16); similarity max abs error 1e-5 / 5e-3 / 3e-2. fp64 must match the reference exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import golden_case

from sschsr_deploy.ops import patch_match_reference

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_extension")]




PM_MARGIN = {torch.float64: 0.0, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
PM_SIM_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def margins64(feat, ref, p):
    fi = F.normalize(feat.double().cpu(), dim=1, eps=1e-12)
    fr = F.normalize(ref.double().cpu(), dim=1, eps=1e-12)
    win, pat = F.unfold(fi, p), F.unfold(fr, p)
    pat = pat / (pat.norm(dim=1, keepdim=True) + 1e-5)
    top = (pat.transpose(1, 2) @ win).topk(2, dim=1).values
    b, _, h, w = feat.shape
    return ((top[:, 0] - top[:, 1]) / (win.norm(dim=1) + 1e-5)).reshape(b, h - p + 1, w - p + 1)


PM_SHAPES = [
    (1, 16, 9, 11, 3),
    (2, 7, 6, 5, 2),  # C not a multiple of the K step (zero-padded channels)
    (1, 256, 20, 23, 3),  # network channels, several patch tiles
    (1, 64, 40, 37, 3),  # > 1 split of patch tiles, partial last tiles
    (1, 3, 7, 19, 4),
]


@pytest.mark.parametrize("shape", PM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_match_cuda(shape, dtype):
    b, c, h, w, p = shape
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    feat = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    ref = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    idx, sim = torch.ops.sschsr.patch_match(feat.cuda(), ref.cuda(), p)
    assert idx.dtype == torch.int64 and sim.dtype == dtype and idx.device.type == "cuda"
    ridx, rsim = patch_match_reference(feat.double(), ref.double(), p)
    idx, sim = idx.cpu(), sim.cpu()
    gap = margins64(feat, ref, p)
    assert not ((idx != ridx) & (gap > PM_MARGIN[dtype])).any()
    same = idx == ridx
    assert (sim.double() - rsim)[same].abs().max() <= PM_SIM_TOL[dtype]


def test_patch_match_cuda_ties_and_shift():
    g = torch.Generator().manual_seed(3)
    tile = torch.randn(1, 32, 3, 3, generator=g)
    ref = tile.repeat(1, 1, 6, 7)
    feat = torch.roll(ref, shifts=(1, 2), dims=(2, 3)) + 0.01 * torch.randn(1, 32, 18, 21, generator=g)
    for dtype in (torch.float64, torch.float32):
        idx, _ = torch.ops.sschsr.patch_match(feat.to(dtype).cuda(), ref.to(dtype).cuda(), 3)
        ridx, _ = patch_match_reference(feat.to(dtype), ref.to(dtype), 3)
        assert torch.equal(idx.cpu(), ridx)
    ref2 = torch.randn(1, 48, 20, 22, generator=g)
    feat2 = torch.randn(1, 48, 20, 22, generator=g)
    feat2[:, :, :18, 3:] = ref2[:, :, 2:, :19]  # shift (2, −3)
    idx, sim = torch.ops.sschsr.patch_match(feat2.cuda(), ref2.cuda(), 3)
    idx, sim = idx.cpu(), sim.cpu()
    cpu_idx, cpu_sim = torch.ops.sschsr.patch_match(feat2, ref2, 3)
    assert not ((idx != cpu_idx) & (margins64(feat2, ref2, 3) > 1e-5)).any()
    assert (sim - cpu_sim)[idx == cpu_idx].abs().max() <= 1e-5
    ys, xs = torch.meshgrid(torch.arange(16), torch.arange(3, 20), indexing="ij")  # windows inside the copy
    assert torch.equal(idx[0, ys, xs], (ys + 2) * 20 + (xs - 3))
    assert (sim[0, ys, xs] - 1).abs().max() < 1e-4


def test_patch_match_on_a_side_stream():
    g = torch.Generator().manual_seed(4)
    feat = torch.randn(1, 256, 34, 30, generator=g)
    ref = torch.randn(1, 256, 34, 30, generator=g)
    want_idx, want_sim = torch.ops.sschsr.patch_match(feat, ref, 3)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        fd, rd = feat.cuda(non_blocking=True), ref.cuda(non_blocking=True)
        idx, sim = torch.ops.sschsr.patch_match(fd, rd, 3)
        idx_h, sim_h = idx.cpu(), sim.cpu()
    side.synchronize()
    gap = margins64(feat, ref, 3)
    assert not ((idx_h != want_idx) & (gap > 1e-5)).any()
    assert (sim_h - want_sim)[idx_h == want_idx].abs().max() <= 1e-5


def test_golden_case_on_cuda():
    z = golden_case("A")
    d1 = torch.from_numpy(z["eval.extractor.D1"]).cuda()
    d2 = torch.from_numpy(z["eval.extractor.D2"]).cuda()
    want = torch.from_numpy(z["eval.match.index"]).long()
    idx, _ = torch.ops.sschsr.patch_match(d1, d2, 3)
    assert torch.equal(idx[0].cpu(), want)
