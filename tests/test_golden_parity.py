"""Golden parity: with the fixtures' deterministic weights, our network reproduces the official model.

Covers both cases (128×128 sf4, 128×192 sf8) in both batch-norm modes, every stored intermediate and the per-channel
statistics of the intermediates that are stored as statistics only. Tolerances are the fixtures' own
(``suggested_tolerances_fp32`` in tests/data/golden/manifest.json and reference/golden/README.md §7).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from conftest import BASE_SEEDS, golden_array_info, golden_case, golden_manifest, golden_torch_state_dict

from sschsr_deploy.model import INPUT_NAMES, SSCHSR

MODES = ("eval", "train")
INTEGER_ARRAYS = ("match.flow_", "match.offset_", "match.index")


@cache
def run_official(case: str, mode: str) -> dict[str, np.ndarray]:
    """Forward the official preset on a golden case; returns every traced tensor as float64 numpy."""
    model = SSCHSR.from_preset("official", batchnorm_mode="batch" if mode == "train" else "running").eval()
    report = model.load_official_state_dict(golden_torch_state_dict(BASE_SEEDS[case]))
    assert not report.missing and not report.unexpected
    z = golden_case(case)
    inputs = [torch.from_numpy(z["in." + k]) for k in INPUT_NAMES]
    trace: dict = {}
    with torch.no_grad():
        res = model(*inputs, return_all=True, trace=trace)
    trace.update({k: res[k] for k in ("out", "ref_warpnet", "ref_warp", "flow")})
    trace["match.index"] = trace["match.index"][0]
    return {k: v.detach().double().numpy() for k, v in trace.items()}


def _stored_arrays(case: str, mode: str) -> list[str]:
    z = golden_case(case)
    return sorted(n for n in z if n.startswith(mode + ".") and ".stats." not in n and not n.endswith(".match.gap"))


def _tolerance(case: str, name: str, key: str) -> float:
    tol = golden_manifest()["suggested_tolerances_fp32"]
    info = golden_array_info(case)[name]
    if key in ("out", "ref_warp", "ref_warpnet", "flow"):
        return tol[key]["max_abs"]
    if info["dtype"] == "float16":
        return 1e-3 * info["absmax"]
    return max(20 * info["f32_vs_f64_maxabs"], 1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["A", "B"])
def test_final_output_matches(case, mode):
    ours = run_official(case, mode)["out"]
    ref = golden_case(case)[f"{mode}.out"].astype(np.float64)
    tol = golden_manifest()["suggested_tolerances_fp32"]["out"]
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert np.abs(ours - ref).max() <= tol["max_abs"]
    assert rel <= tol["rel_l2"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["A", "B"])
def test_every_stored_intermediate_matches(case, mode):
    ours = run_official(case, mode)
    z = golden_case(case)
    failures = []
    checked = 0
    for name in _stored_arrays(case, mode):
        key = name[len(mode) + 1 :]
        assert key in ours, f"the model does not expose {key}"
        ref = z[name].astype(np.float64)
        got = ours[key]
        assert got.shape == ref.shape, (key, got.shape, ref.shape)
        if key.startswith(INTEGER_ARRAYS):
            # Exact; the cases were chosen so that every arg-max margin is ≥ 1.6e-6 (10× the float32 score noise).
            if not np.array_equal(got, ref):
                failures.append(f"{key}: {int((got != ref).sum())} entries differ")
        else:
            err = np.abs(got - ref).max()
            if err > _tolerance(case, name, key):
                failures.append(f"{key}: max |Δ| {err:.3g} > {_tolerance(case, name, key):.3g}")
        checked += 1
    assert checked >= 10
    assert not failures, failures


def _channel_stats(t: np.ndarray, key: str) -> np.ndarray:
    if key.startswith(("match.flow_", "match.offset_")):  # (..., 2): per (x, y) component
        flat = t.reshape(-1, 2).T
    elif key == "raft.flow_lowres_iters":  # (iters, B, 2, h, w)
        flat = np.moveaxis(t, 2, 0).reshape(t.shape[2], -1)
    else:  # (B, C, h, w)
        flat = np.moveaxis(t, 1, 0).reshape(t.shape[1], -1)
    return np.stack([flat.mean(1), flat.std(1), flat.min(1), flat.max(1)], axis=1)


def _stats_tolerance(mode: str, key: str, scale: float) -> float:
    """A statistic moves by at most the element-wise error: use the intermediates' rule (20× the float32-vs-float64
    noise recorded for that tensor in either case) where the manifest has it, else 2e-5 of the tensor's scale."""
    noise = [
        a["f32_vs_f64_maxabs"]
        for c in golden_manifest()["cases"]
        for a in c["arrays"]
        if a["name"] == f"{mode}.{key}" and "f32_vs_f64_maxabs" in a
    ]
    return max([20 * n for n in noise] + [2e-5 * scale, 1e-6])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["A", "B"])
def test_statistics_of_every_intermediate_match(case, mode):
    """Locates a discrepancy to a stage even where the fixture stores only per-channel statistics."""
    ours = run_official(case, mode)
    z = golden_case(case)
    prefix = f"{mode}.stats."
    names = sorted(n for n in z if n.startswith(prefix))
    assert len(names) >= 20
    failures = []
    for name in names:
        key = name[len(prefix) :]
        assert key in ours, f"the model does not expose {key}"
        ref = z[name]
        got = _channel_stats(ours[key], key)
        scale = np.abs(ref).max()
        err = np.abs(got - ref).max()
        if err > _stats_tolerance(mode, key, scale):
            failures.append(f"{key}: max |Δ| {err:.3g} (scale {scale:.3g})")
    assert not failures, failures


def test_modes_really_differ():
    """Guards the batch-norm switch: the two modes must give clearly different outputs (README §6)."""
    a = run_official("A", "eval")["out"]
    b = run_official("A", "train")["out"]
    assert np.abs(a - b).max() > 0.1
