"""ONNX graph rewrites (stock DeformConv <-> our plugin node) and the TensorRT plugins' TensorRT-free parts:
shape/type logic, launch parameters, and AOT compilation of the Triton DCN kernel to PTX for sm_90 without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sschsr_deploy.engine import graph as g  # noqa: E402
from sschsr_deploy.engine import plugins as P  # noqa: E402
from sschsr_deploy.engine.ops import deform_conv as DC  # noqa: E402

B, C, H, W, O, G = 1, 16, 12, 10, 8, 2


def _dcn_model(pads=(1, 1, 1, 1)):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((O, C, 3, 3)).astype(np.float32) * 0.1, "w"),
        numpy_helper.from_array(rng.standard_normal(O).astype(np.float32), "b"),
    ]
    node = helper.make_node("DeformConv", ["x", "w", "off", "b", "mask"], ["y"], name="dcn0", kernel_shape=[3, 3],
                            pads=list(pads), strides=[1, 1], dilations=[1, 1], group=1, offset_group=G)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C, H, W]),
              helper.make_tensor_value_info("off", TensorProto.FLOAT, [B, 2 * G * 9, H, W]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, [B, G * 9, H, W])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, O, H, W])]
    graph = helper.make_graph([node], "dcn", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _feeds():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((B, C, H, W)).astype(np.float32),
            "off": (2 * rng.standard_normal((B, 2 * G * 9, H, W))).astype(np.float32),
            "mask": rng.random((B, G * 9, H, W)).astype(np.float32)}


def test_deform_conv_to_plugin_and_back():
    from sschsr_deploy.engine.onnx import _register_schemas

    _register_schemas()
    model = _dcn_model()
    plug = g.use_deform_conv(model, "plugin")
    (node,) = plug.graph.node
    assert (node.domain, node.op_type) == ("sschsr", "ModulatedDeformConv2d")
    assert list(node.input) == ["x", "off", "mask", "w", "b"]  # the torch op's order
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["padding"] == [1, 1] and attrs["offset_groups"] == G and attrs["stride"] == [1, 1]
    assert attrs["plugin_namespace"] == b"sschsr" and attrs["aot"] == 1
    assert any(o.domain == "sschsr" for o in plug.opset_import)
    onnx.checker.check_model(plug, full_check=True)  # our registered schema validates the node
    assert model.graph.node[0].op_type == "DeformConv"  # the input model is untouched

    back = g.use_deform_conv(plug, "stock")
    (node,) = back.graph.node
    assert node.op_type == "DeformConv" and list(node.input) == ["x", "w", "off", "b", "mask"]

    ort = pytest.importorskip("onnxruntime")
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
           for m in (model, back)]
    np.testing.assert_array_equal(run[0], run[1])


def test_plugin_rewrite_refuses_asymmetric_pads():
    with pytest.raises(ValueError, match="asymmetric pads"):
        g.use_deform_conv(_dcn_model(pads=(1, 1, 0, 0)), "plugin")
    with pytest.raises(ValueError, match="'stock' or 'plugin'"):
        g.use_deform_conv(_dcn_model(), "cuda")


def test_prepare_for_tensorrt_strips_bodies_and_marks_nodes():
    from sschsr_deploy.engine.onnx import reference_functions

    node = helper.make_node("SpectralAttention", ["x", "x", "x", "t"], ["y"], domain="sschsr", heads=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 4, 8, 8]),
                                            helper.make_tensor_value_info("t", 1, [2, 1, 1])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("sschsr", 1)])
    with_bodies = g.attach_functions(model, reference_functions())
    assert {f.name for f in with_bodies.functions} == {"SpectralAttention", "PatchMatch"}
    prepared = g.prepare_for_tensorrt(with_bodies, "stock")
    assert not [f for f in prepared.functions if f.domain == "sschsr"]
    attrs = {a.name for a in prepared.graph.node[0].attribute}
    assert {"plugin_namespace", "plugin_version", "heads"} <= attrs
    # SpectralAttention has a JIT implementation only: aot=1 would be a strict AOT request TensorRT refuses
    assert "aot" not in attrs
    assert g.check_plugin_nodes(prepared) == []


def test_aot_attribute_only_on_plugins_with_an_aot_implementation():
    """Defect: ``aot=1`` went on every sschsr node; onnx-tensorrt makes it strict AOT, which JIT-only plugins fail."""
    sa = helper.make_node("SpectralAttention", ["x", "x", "x", "t"], ["y"], name="sa", domain="sschsr", heads=2,
                          aot=1)  # as an older export / the old rewrite left it
    pm = helper.make_node("PatchMatch", ["y", "y"], ["i", "s"], name="pm", domain="sschsr", patch_size=3)
    graph = helper.make_graph([sa, pm], "g", [helper.make_tensor_value_info("x", 1, [1, 4, 8, 8]),
                                              helper.make_tensor_value_info("t", 1, [2, 1, 1])],
                              [helper.make_tensor_value_info("i", 7, [1, 6, 6]),
                               helper.make_tensor_value_info("s", 1, [1, 6, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("sschsr", 1)])
    problems = g.check_plugin_nodes(model)
    assert any("'sa'" in p and "aot=1" in p for p in problems)
    prepared = g.prepare_for_tensorrt(g.attach_functions(_dcn_model(), []), "plugin")
    dcn = {a.name: helper.get_attribute_value(a) for a in prepared.graph.node[0].attribute}
    assert dcn["aot"] == 1 and P.AOT_PLUGINS == ("ModulatedDeformConv2d",)
    fixed = g.prepare_for_tensorrt(model, "stock")
    assert g.check_plugin_nodes(fixed) == []
    for node in fixed.graph.node:
        assert "aot" not in {a.name for a in node.attribute}
        assert {a.name for a in node.attribute} >= {"plugin_namespace", "plugin_version"}


def test_metadata_and_dim_names():
    model = _dcn_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "s39"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "s39"
    g.rename_dynamic_dims(model, {0: "batch"})
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    g.set_metadata(model, {"precision": "fp32", "tile_height": 128})
    g.set_metadata(model, {"precision": "fp16"})
    assert {p.key: p.value for p in model.metadata_props} == {"precision": "fp16", "tile_height": "128"}
    assert g.op_counts(model) == {"DeformConv": 1}


# ---- plugins: shape / type logic ---------------------------------------------------------------------------------

def test_plugin_shape_logic_matches_torch():
    import torch

    from sschsr_deploy.ops import modulated_deform_conv2d_reference, patch_match_reference

    x = torch.randn(2, 8, 11, 9)
    for stride, pad, dil in (((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 2), (1, 2))):
        w = torch.randn(4, 8, 3, 3)
        shape = P.deform_conv_output_shape(x.shape, w.shape, stride, pad, dil)
        ho, wo = shape[2], shape[3]
        off = torch.zeros(2, 2 * 9, ho, wo)
        y = modulated_deform_conv2d_reference(x, off, None, w, None, stride, pad, dil, 1, 1)
        assert tuple(y.shape) == shape
    idx_shape, sim_shape = P.patch_match_output_shapes((2, 8, 11, 9), 3)
    idx, sim = patch_match_reference(torch.randn(2, 8, 11, 9), torch.randn(2, 8, 11, 9), 3)
    assert idx_shape == tuple(idx.shape) and sim_shape == tuple(sim.shape)
    assert P.spectral_attention_output_shape((1, 48, 32, 32), 4) == (1, 48, 32, 32)
    with pytest.raises(ValueError, match="not divisible"):
        P.spectral_attention_output_shape((1, 48, 32, 32), 5)


def test_plugin_type_logic():
    assert P.output_dtypes("PatchMatch", ["float16", "float16"]) == ["int64", "float16"]
    assert P.output_dtypes("SpectralAttention", ["float32"] * 4) == ["float32"]
    assert P.output_dtypes("ModulatedDeformConv2d", ["float16", "float32", "float32", "float16", "float16"]) == [
        "float16"]
    with pytest.raises(ValueError):
        P.output_dtypes("ModulatedDeformConv2d", ["float16", "float32", "float32", "float32", "float16"])
    with pytest.raises(ValueError):
        P.output_dtypes("SpectralAttention", ["float32", "float16", "float32", "float32"])
    with pytest.raises(ValueError, match="unknown"):
        P.output_dtypes("Nope", [])


def test_deform_conv_launch_parameters():
    launch = P.deform_conv_launch((2, 64, 32, 40), (64, 64, 3, 3), (2, 64, 32, 40), groups=1)
    assert launch.grid == (-(-32 * 40 // P.DCN_BLOCKS["BLOCK_P"]), 1, 2)
    assert launch.block_x == P.DCN_NUM_WARPS * 32
    assert launch.extra_args == (64, 32, 40, 32, 40, 64)


# ---- plugins: AOT PTX ----------------------------------------------------------------------------------------------

def test_fit_ptx_params_drops_only_unused_trailing_params():
    ptx = (".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n\t.param .u32 k_param_1,\n"
           "\t.param .u64 .ptr .global .align 1 k_param_2,\n\t.param .u64 .ptr .global .align 1 k_param_3\n)\n"
           "{\n\tld.param.b64 %rd1, [k_param_0];\n\tld.param.b32 %r1, [k_param_1];\n}\n")
    fitted = P.fit_ptx_params(ptx, "k", 2)
    assert P.ptx_entry_params(fitted, "k") == [".param .u64 .ptr .global .align 1 k_param_0",
                                               ".param .u32 k_param_1"]
    with pytest.raises(ValueError, match="used by the kernel body"):
        P.fit_ptx_params(ptx, "k", 1)
    with pytest.raises(ValueError, match="fewer than"):
        P.fit_ptx_params(ptx, "k", 5)

    class Meta:
        global_scratch_size = 128
        profile_scratch_size = 0

    with pytest.raises(ValueError, match="scratch"):
        P.fit_ptx_params(ptx, "k", 2, Meta())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_deform_conv_kernel_compiles_to_ptx_for_sm90_without_gpu(dtype):
    pytest.importorskip("triton")
    k = P.compile_deform_conv_ptx(dtype, offset_groups=8, compute_capability=90)
    assert ".target sm_90" in k.ptx
    params = P.ptx_entry_params(k.ptx, k.name)
    assert len(params) == k.params == 12  # 5 inputs + 6 int32 scalars + 1 output: what TensorRT passes
    assert all(".u64" in p for p in params[:5]) and all(".u32" in p for p in params[5:11]) and ".u64" in params[11]
    assert k.shared_mem <= 48 * 1024  # launchable without a dynamic shared-memory opt-in
    assert k.num_warps == P.DCN_NUM_WARPS


def test_deform_conv_entry_kernel_is_correct_under_the_interpreter(monkeypatch):
    """The AOT entry kernel (TensorRT's argument order, strides derived from shapes) computes the reference DCN:
    run through the Triton interpreter on the CPU, launched with the grid and scalars the plugin gives TensorRT."""
    pytest.importorskip("triton")
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from sschsr_deploy.kernels.triton.deform_conv import _deform_conv2d_kernel
    from sschsr_deploy.ops import modulated_deform_conv2d_reference

    body = _deform_conv2d_kernel
    while not hasattr(body, "__code__"):
        body = body.fn  # Autotuner -> JITFunction / InterpretedFunction -> python function
    # the entry kernel reads its body and strides from the globals of the DCN's export module
    monkeypatch.setattr(DC, "_DCN_BODY", InterpretedFunction(body))
    monkeypatch.setattr(DC, "_DCN_STRIDES", InterpretedFunction(DC._dcn_entry_strides))
    entry = InterpretedFunction(DC._dcn_trt_entry)
    torch.manual_seed(0)
    b, c, h, w, o, g = 2, 16, 9, 7, 8, 2
    x, wt, bias = torch.randn(b, c, h, w), torch.randn(o, c, 3, 3) * 0.2, torch.randn(o)
    off, mask = torch.randn(b, 2 * g * 9, h, w) * 2, torch.rand(b, g * 9, h, w)
    y = torch.full((b, o, h, w), float("nan"))
    launch = P.deform_conv_launch(x.shape, wt.shape, y.shape, groups=1)
    entry[launch.grid](x, off, mask, wt, bias, *launch.extra_args, y, KH=3, KW=3, SH=1, SW=1, PH=1, PW=1, DH=1,
                       DW=1, GROUPS=1, OFFSET_GROUPS=g, DOT_PRECISION="ieee", **P.DCN_BLOCKS)
    ref = modulated_deform_conv2d_reference(x, off, mask, wt, bias, 1, 1, 1, 1, g)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_plugin_hashes_cover_every_plugin():
    hashes = P.plugin_hashes()
    assert set(hashes) == {f"sschsr::{op}" for op in P.PLUGIN_OP_TYPES}
    assert all(len(h) == 64 for h in hashes.values())
    assert len(set(hashes.values())) == 3


def test_each_plugin_hash_covers_its_op_export_module(monkeypatch, tmp_path):
    """An op's hash changes with its own export module (engine/ops/<op>.py), and only that op's hash."""
    import dataclasses
    from pathlib import Path

    from sschsr_deploy.engine.ops import REGISTRY

    before = P.plugin_hashes()
    for entry in REGISTRY:
        assert Path(entry.source).name == f"{entry.kernel_sources[0]}"  # ops/<op>.py next to kernels/triton/<op>.py
        edited = tmp_path / Path(entry.source).name
        edited.write_bytes(Path(entry.source).read_bytes() + b"\n# edited\n")
        monkeypatch.setattr(P, "REGISTRY", tuple(dataclasses.replace(e, source=str(edited)) if e is entry else e
                                                 for e in REGISTRY))
        after = P.plugin_hashes()
        assert {k for k in before if before[k] != after[k]} == {entry.plugin_id}


def _strides_probe(out_ptr, C, H, W, Ho, Wo, O, G, K):
    """Stores the AOT entry's per-sample strides (``P._dcn_entry_strides``) for the interpreter test below."""
    for i, value in enumerate(_STRIDES(C, H, W, Ho, Wo, O, G, K)):
        _TL.store(out_ptr + i, value)


_STRIDES = _TL = None


def test_deform_conv_entry_strides_do_not_wrap_in_int32(monkeypatch):
    """Defect: the AOT entry computed C·H·W, 2·G·K·Ho·Wo, O·Ho·Wo as int32 products of TensorRT's int32 scalars, so a
    large layer wrapped round and read the wrong memory. The strides are int64: checked under the interpreter with
    extents past 2**31 (no tensor that large is allocated; only the arithmetic runs)."""
    pytest.importorskip("triton")
    import torch
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    monkeypatch.setitem(globals(), "_STRIDES", InterpretedFunction(P._dcn_entry_strides))
    monkeypatch.setitem(globals(), "_TL", tl)
    c, h, w, ho, wo, o, g, k = 256, 3000, 3000, 3000, 3000, 64, 8, 9
    out = torch.zeros(6, dtype=torch.int64)
    InterpretedFunction(_strides_probe)[(1,)](out, c, h, w, ho, wo, o, g, k)
    want = [c * h * w, h * w, 2 * g * k * ho * wo, g * k * ho * wo, o * ho * wo, ho * wo]
    assert max(want) > 2**31 and out.tolist() == want
