"""The plain-PyTorch patch matching (the ground truth of every kernel) against brute force."""

from __future__ import annotations

import importlib

import pytest
import torch

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.ops import patch_match_reference


def _patch_match_brute(fi, fr, p=3):
    fi = fi / fi.norm(dim=0, keepdim=True).clamp_min(1e-12)
    fr = fr / fr.norm(dim=0, keepdim=True).clamp_min(1e-12)
    c, h, w = fi.shape
    hp, wp = h - p + 1, w - p + 1
    best_i = torch.zeros(hp, wp, dtype=torch.long)
    best_s = torch.zeros(hp, wp, dtype=fi.dtype)
    pats = [fr[:, y:y + p, x:x + p] for y in range(hp) for x in range(wp)]
    pats = [q / (q.norm() + 1e-5) for q in pats]
    for y in range(hp):
        for x in range(wp):
            win = fi[:, y:y + p, x:x + p]
            scores = torch.stack([(q * win).sum() for q in pats])
            i = int(torch.argmax(scores))  # first maximum
            best_i[y, x] = i
            best_s[y, x] = scores[i] / (win.norm() + 1e-5)
    return best_i, best_s


@pytest.mark.parametrize(("c", "h", "w"), [(5, 7, 9), (3, 6, 5)])
def test_patch_match_matches_brute_force(c, h, w):
    g = torch.Generator().manual_seed(h * w)
    fi = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    fr = fi.roll(shifts=(1, -2), dims=(2, 3)) + 0.3 * torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    idx, sim = patch_match_reference(fi, fr)
    for b in range(2):
        bi, bs = _patch_match_brute(fi[b], fr[b])
        assert torch.equal(idx[b], bi)
        assert torch.allclose(sim[b], bs, atol=1e-12)
    assert (sim.abs() <= 1 + 1e-9).all()


def test_patch_match_ties_go_to_lowest_index(monkeypatch):
    # A reference made of one repeated patch: every reference patch ties, so the first one must win — also across
    # chunks, which the tiny chunk size here forces.
    pm = importlib.import_module("sschsr_deploy.ops.patch_match")  # the package re-exports a function of that name

    monkeypatch.setattr(pm, "_CHUNK_ELEMENTS", 7)
    g = torch.Generator().manual_seed(0)
    fi = torch.randn(1, 4, 6, 8, generator=g)
    fr = torch.ones(1, 4, 6, 8)
    idx, sim = pm.patch_match_reference(fi, fr)
    assert (idx == 0).all()
    # A unique exact copy of the window is found with similarity 1.
    fr2 = torch.randn(1, 4, 6, 8, generator=g)
    idx2, sim2 = pm.patch_match_reference(fr2, fr2)
    assert torch.equal(idx2.flatten(), torch.arange(idx2.numel()))
    assert torch.allclose(sim2, torch.ones_like(sim2), atol=1e-4)


def test_patch_match_errors():
    with pytest.raises(InputValidationError, match="smaller than the 3×3 patch"):
        patch_match_reference(torch.randn(1, 2, 2, 5), torch.randn(1, 2, 2, 5))
    with pytest.raises(InputValidationError, match="share one"):
        patch_match_reference(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 6))
