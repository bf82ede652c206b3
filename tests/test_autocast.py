"""Under torch.autocast the custom ops run as float32 islands (the fp16 ONNX export's policy) instead of failing on
mixed dtypes; the whole network then runs in reduced precision with a small, bounded deviation."""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.model import SSCHSR
from sschsr_deploy.ops import modulated_deform_conv2d, patch_match, spectral_attention
from sschsr_deploy.ops.deform_conv import modulated_deform_conv2d_reference
from sschsr_deploy.ops.patch_match import patch_match_reference
from sschsr_deploy.ops.spectral_attention import spectral_attention_reference


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _native_built() -> bool:
    from sschsr_deploy.ops import _backend

    return _backend.native() is not None


@pytest.mark.parametrize("backend", [
    "reference",  # the plain-PyTorch ops would be lowered by autocast again without the float32 island
    pytest.param("cpu", marks=pytest.mark.skipif(not _native_built(), reason="native extension not built")),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ops_accept_low_precision_activations_under_autocast(dtype, backend, monkeypatch):
    for var in ("SSCHSR_DEFORM_CONV_BACKEND", "SSCHSR_SPECTRAL_ATTENTION_BACKEND", "SSCHSR_PATCH_MATCH_BACKEND"):
        monkeypatch.setenv(var, backend)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 11, 13, generator=g)
    offset = torch.randn(2, 2 * 9, 11, 13, generator=g) * 3  # some samples land outside the image
    mask = torch.rand(2, 9, 11, 13, generator=g)
    w, b = torch.randn(6, 8, 3, 3, generator=g), torch.randn(6, generator=g)
    want = modulated_deform_conv2d_reference(x, offset, mask, w, b, (1, 1), (1, 1), (1, 1), 1, 1)
    with torch.autocast("cpu", dtype=dtype):
        got = modulated_deform_conv2d(x.to(dtype), offset, mask.to(dtype), w, b, 1, 1, 1, 1, 1)
    assert got.dtype == torch.float32
    assert _rel(got, want) < 1e-2  # only the activations' rounding to `dtype` differs

    q, k, v = (torch.randn(1, 12, 9, 10, generator=g) for _ in range(3))
    t = torch.rand(2, 1, 1, generator=g) + 0.5
    want = spectral_attention_reference(q, k, v, t, 2)
    with torch.autocast("cpu", dtype=dtype):
        got = spectral_attention(q.to(dtype), k.to(dtype), v.to(dtype), t, 2)
    assert got.dtype == torch.float32 and _rel(got, want) < 2e-2

    f, r = torch.randn(1, 16, 9, 9, generator=g), torch.randn(1, 16, 9, 9, generator=g)
    with torch.autocast("cpu", dtype=dtype):
        idx, sim = patch_match(f.to(dtype), r.to(dtype), 3)
    want_idx, want_sim = patch_match_reference(f.to(dtype).float(), r.to(dtype).float(), 3)
    assert sim.dtype == torch.float32 and torch.equal(idx, want_idx)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_tiny_network_under_cpu_autocast(dtype, tol):
    torch.manual_seed(0)
    model = SSCHSR.from_preset("tiny").eval()
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(128, 128), mode="bicubic")
    rgb = base.clamp(0, 1)
    hsi = torch.nn.functional.interpolate(torch.rand(1, 31, 32, 32, generator=g), size=(128, 128)).clamp(0, 1)
    inputs = (hsi, rgb, torch.roll(rgb, 2, dims=3), rgb * 255, torch.roll(rgb, 2, dims=3) * 255)
    with torch.inference_mode():
        want = model(*inputs)
        with torch.autocast("cpu", dtype=dtype):
            got = model(*inputs)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < tol  # measured (random weights): bf16 ~1e-2, fp16 ~2e-3


def test_one_island_marker_for_autocast_and_the_fp16_export():
    """The same float32_island marker decides both: under autocast the warp runs float32 (result float32); in export
    mode (a float16 model traced inside export_islands) it computes in float32 and returns the input's float16."""
    from sschsr_deploy.model.warp import warp_reference_exact
    from sschsr_deploy.precision import export_islands

    g = torch.Generator().manual_seed(0)
    img, flow = torch.rand(1, 3, 8, 8, generator=g), torch.randn(1, 2, 8, 8, generator=g)
    want = warp_reference_exact(img, flow)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp_reference_exact(img.bfloat16(), flow.bfloat16())
    assert out.dtype == torch.float32
    with export_islands():
        half = warp_reference_exact(img.half(), flow.half())
    assert half.dtype == torch.float16
    assert (half.float() - want).abs().max() < 1e-2


def _conv_output_dtypes(model: torch.nn.Module) -> tuple[dict, list, list]:
    """Hooks recording every convolution's output dtype and the dtypes of the arguments RAFT's update block gets."""
    seen: dict[str, torch.dtype] = {}
    update_args: list[torch.dtype] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            hooks.append(mod.register_forward_hook(lambda m, a, out, name=name: seen.update({name: out.dtype})))
    hooks.append(model.flownet.update_block.register_forward_pre_hook(
        lambda m, a: update_args.extend(t.dtype for t in a)))
    return seen, update_args, hooks


def test_autocast_and_the_export_follow_the_same_marks():
    """One policy: every convolution computes in the same precision under eager autocast as in the export-mode copy
    (float32 in the islands, e.g. the deformable aggregations' offset convolutions; the
    low dtype elsewhere), and RAFT's correlation reaches the update block in float32 in both modes."""
    from sschsr_deploy.precision import convert_for_export, export_islands

    torch.manual_seed(0)
    model = SSCHSR.from_preset("tiny").eval()
    g = torch.Generator().manual_seed(2)
    rgb = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(128, 128), mode="bicubic")
    rgb = rgb.clamp(0, 1)
    hsi = torch.rand(1, 31, 128, 128, generator=g)
    inputs = (hsi, rgb, torch.roll(rgb, 1, dims=2), rgb * 255, torch.roll(rgb, 1, dims=2) * 255)

    eager, eager_update, hooks = _conv_output_dtypes(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(*inputs)
    for h in hooks:
        h.remove()

    low = convert_for_export(model, torch.bfloat16)
    exported, export_update, _ = _conv_output_dtypes(low)
    with torch.inference_mode(), export_islands(torch.bfloat16):
        out = low(*(x.bfloat16() for x in inputs[:3]), *inputs[3:])

    assert torch.isfinite(out.float()).all()
    assert eager and eager == exported
    assert set(eager.values()) == {torch.float32, torch.bfloat16}  # both kinds present, so the test can fail
    assert eager["decoder.up_small_dyn_agg.conv_offset_mask"] == torch.float32  # reduced region: float32 out
    assert eager["flownet.fnet.conv1"] == torch.bfloat16
    # (net, inp, corr, flow): the update block's arguments come from the float32 island in both modes
    assert set(eager_update) == set(export_update) == {torch.float32}


def test_convert_for_export_follows_the_marks():
    from sschsr_deploy.precision import convert_for_export

    model = SSCHSR.from_preset("tiny")
    model.flownet.cnet.norm1.running_mean.add_(1.0)  # a buffer that must survive the round trip exactly
    low = convert_for_export(model, torch.float16)
    dt = {k: v.dtype for k, v in low.state_dict().items()}
    assert dt["hsi_encoder.pool1.weight"] == torch.float16  # unmarked: the low dtype
    assert dt["decoder.up_small_dyn_agg.weight"] == torch.float32  # float32_module
    assert dt["decoder.up_small_dyn_agg.conv_offset_mask.weight"] == torch.float16  # reduced inside the island
    assert dt["flownet.fnet.conv1.weight"] == torch.float16  # reduced_precision_module inside the RAFT island
    assert dt["flownet.update_block.mask.2.weight"] == torch.float16
    assert dt["flownet.cnet.norm1.running_mean"] == torch.float32  # a norm island inside a reduced region
    assert torch.equal(low.flownet.cnet.norm1.running_mean, model.flownet.cnet.norm1.running_mean)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


def test_offset_predictor_runs_reduced_inside_the_deformable_island():
    """The deformable aggregation is a float32 island, but its offset / mask predictor convolution computes in the
    autocast dtype (its output enters through a bounded tanh and a sigmoid) and hands float32 on; the sampling and
    the aggregation's own convolution stay float32."""
    from sschsr_deploy.model.decoder import DeformableAggregation

    torch.manual_seed(4)
    agg = DeformableAggregation(16, offset_groups=2).eval()
    torch.nn.init.normal_(agg.conv_offset_mask.weight, std=0.2)
    torch.nn.init.normal_(agg.conv_offset_mask.bias, std=0.2)
    feat, offset_feat = torch.randn(1, 16, 9, 11), torch.randn(1, 16, 9, 11)
    pre = torch.randn(1, 9, 9, 11, 2) * 3
    sim = torch.rand(1, 1, 9, 11)
    conv = agg.conv_offset_mask
    fp32 = torch.nn.functional.conv2d(offset_feat, conv.weight, conv.bias, padding=1)
    bf16 = torch.nn.functional.conv2d(offset_feat.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(),
                                      padding=1).float()
    trace: dict = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = agg(feat, offset_feat, pre, sim, trace=trace, tag="x")
    t = trace["decoder.Tx"]
    assert t.dtype == torch.float32 and out.dtype == torch.float32
    assert float((t - bf16).norm() / bf16.norm()) < 1e-6  # computed in bf16
    assert float((t - fp32).norm() / fp32.norm()) > 1e-4  # ... which differs from float32, so the test can fail
    with torch.no_grad():  # no autocast: float32, unchanged
        agg(feat, offset_feat, pre, sim, trace=trace, tag="y")
    assert float((trace["decoder.Ty"] - fp32).norm() / fp32.norm()) < 1e-6
