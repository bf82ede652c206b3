"""Our TensorRT plugins against a stand-in of TensorRT's documented plugin contract (``tests/trt_standin.py``).

TensorRT cannot be installed here, so the plugin definitions (one module per op under
:mod:`sschsr_deploy.engine.ops`, registered by :mod:`sschsr_deploy.engine.plugins`) go through a
stand-in of ``tensorrt.plugin`` that validates them the way TensorRT does: registration, the shape functions on fake
and symbolic expressions, the autotune combinations, the AOT launch (a real PTX kernel, symbolic grid and arguments),
the JIT implementations (run on the CPU through the Triton interpreter), and the ONNX parser's routing of our nodes.
The second half re-introduces each defect the plugin code once had and shows that the stand-in rejects it.

No ``from __future__ import annotations`` here: plugin functions defined in this module must carry real classes.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")
onnx = pytest.importorskip("onnx")
import trt_standin as S  # noqa: E402
from onnx import helper  # noqa: E402

from sschsr_deploy.engine import graph as G  # noqa: E402
from sschsr_deploy.engine import plugins as P  # noqa: E402
from sschsr_deploy.engine.ops import deform_conv as DC  # noqa: E402
from sschsr_deploy.engine.ops import patch_match as PMOD  # noqa: E402
from sschsr_deploy.engine.ops import spectral_attention as SAMOD  # noqa: E402
from sschsr_deploy.kernels import triton_interpreting  # noqa: E402

DCN, SA, PM = (f"sschsr::{op}" for op in P.PLUGIN_OP_TYPES)
DCN_ATTRS = {"stride": np.array([1, 1], np.int32), "padding": np.array([1, 1], np.int32),
             "dilation": np.array([1, 1], np.int32), "groups": 1, "offset_groups": 2}


@pytest.fixture
def trt(monkeypatch):
    """The stand-in as ``tensorrt`` / ``tensorrt.plugin``, a fresh registry, our plugins not yet registered."""
    mod, plugin = S.make_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", plugin)
    monkeypatch.setattr(P, "_REGISTERED", False)
    return S


@pytest.fixture
def registered(trt):
    P.register_plugins(compute_capability=90)
    return trt.REGISTRY


def _desc(shape, dtype=S.DataType.FLOAT):
    return S.TensorDesc(S.ShapeExprs.from_tuple(tuple(shape)), dtype)


def _dcn_descs(c=16, o=8, groups=2):
    """Symbolic (batch, height, width); channels and the weight constant, as in an exported tile graph."""
    b, h, w = S.dim("b"), S.dim("h"), S.dim("w")
    return [_desc((b, c, h, w)), _desc((b, 2 * groups * 9, h, w)), _desc((b, groups * 9, h, w)),
            _desc((o, c, 3, 3)), _desc((o,))]


# ---- the contract, passed -------------------------------------------------------------------------------------------

def test_every_plugin_registers_with_its_implementations(registered):
    assert set(registered.plugins) == {DCN, SA, PM}
    for pid, plugin in registered.plugins.items():
        assert plugin.impl_fn is not None and plugin.autotune_fn is not None
        assert (plugin.aot_fn is not None) == (pid.split("::")[1] in P.AOT_PLUGINS)
    assert list(registered.plugins[DCN].attrs) == ["stride", "padding", "dilation", "groups", "offset_groups"]
    assert registered.plugins[PM].num_outputs == 2


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_deform_conv_shape_function_on_symbolic_and_fake_expressions(registered, stride, padding, dilation):
    attrs = {**DCN_ATTRS, "stride": np.array([stride] * 2, np.int32), "padding": np.array([padding] * 2, np.int32),
             "dilation": np.array([dilation] * 2, np.int32)}
    (out,) = S.output_descs(registered.plugins[DCN], _dcn_descs(), attrs)  # the fake pass runs first
    assert out.dtype == S.DataType.FLOAT
    for b, h, w in [(1, 128, 128), (3, 37, 20), (2, 9, 64)]:
        x = torch.zeros(b, 16, h, w)
        want = torch.nn.functional.conv2d(x, torch.zeros(8, 16, 3, 3), stride=stride, padding=padding,
                                          dilation=dilation).shape
        env = {"b": b, "h": h, "w": w}
        assert tuple(e.value(env) for e in out.shape_expr) == tuple(want)


def test_spectral_attention_and_patch_match_shape_functions(registered):
    b, h, w = S.dim("b"), S.dim("h"), S.dim("w")
    q = _desc((b, 32, h, w), S.DataType.HALF)
    (sa,) = S.output_descs(registered.plugins[SA], [q, q, q, _desc((4, 1, 1), S.DataType.HALF)], {"heads": 4})
    assert sa.dtype == S.DataType.HALF and [e.value({"b": 2, "h": 5, "w": 7}) for e in sa.shape_expr] == [2, 32, 5, 7]
    feat = _desc((b, 32, h, w))
    idx, sim = S.output_descs(registered.plugins[PM], [feat, feat], {"patch_size": 3})
    assert (idx.dtype, sim.dtype) == (S.DataType.INT64, S.DataType.FLOAT)
    env = {"b": 2, "h": 16, "w": 11}
    assert [e.value(env) for e in idx.shape_expr] == [e.value(env) for e in sim.shape_expr] == [2, 14, 9]
    with pytest.raises(ValueError, match="not divisible"):
        S.output_descs(registered.plugins[SA], [_desc((b, 30, h, w))] * 3 + [_desc((4, 1, 1))], {"heads": 4})


def test_autotune_combinations_cover_every_input_and_output(registered):
    for pid, n_in in ((DCN, 5), (SA, 4), (PM, 2)):
        plugin = registered.plugins[pid]
        inputs = [_desc((1, 8, 4, 4))] * n_in
        outputs = [_desc((1, 8, 4, 4))] * plugin.num_outputs
        attrs = {**DCN_ATTRS, "heads": 2, "patch_size": 3}
        combos = S.autotune_combinations(plugin, inputs, outputs, attrs)
        assert combos and all(len(c) == n_in + plugin.num_outputs for c in combos)
        floats = {c[0] for c in combos}
        assert floats == {S.DataType.FLOAT, S.DataType.HALF}
        if pid == PM:
            assert all(c[2] == S.DataType.INT64 for c in combos)


@pytest.mark.parametrize("dtype", [S.DataType.FLOAT, S.DataType.HALF])
def test_deform_conv_aot_implementation_gives_a_launchable_kernel(registered, dtype):
    plugin = registered.plugins[DCN]
    inputs = [S.TensorDesc(d.shape_expr, dtype) for d in _dcn_descs()]
    outputs = S.output_descs(plugin, inputs, DCN_ATTRS)
    name, ptx, params, extra = S.aot_launch(plugin, inputs, outputs, DCN_ATTRS)
    assert P.ptx_entry_params(ptx.decode(), name.decode()) and ptx.startswith(b"//")
    n_params = len(P.ptx_entry_params(ptx.decode(), name.decode()))
    assert n_params == len(inputs) + len(extra) + len(outputs)  # what TensorRT passes: inputs, extra args, outputs
    for b, h, w in [(1, 128, 128), (4, 33, 17)]:
        env = {"b": b, "h": h, "w": w}
        want = P.deform_conv_launch((b, 16, h, w), (8,), (b, 8, h, w), groups=1)
        assert tuple(e.value(env) for e in (params.grid_x, params.grid_y, params.grid_z)) == want.grid
        assert [e.value(env) for e in extra] == [16, h, w, h, w, 8]
        assert params.block_x.value(env) == want.block_x and params.shared_mem.value(env) <= 48 * 1024


def _cpu_tensor(t):
    return S.Tensor(t)


@pytest.mark.skipif(not triton_interpreting(), reason="runs the Triton kernels on CPU tensors (interpreter only)")
def test_jit_implementations_compute_the_reference(registered):
    """TensorRT's JIT path: the impl functions on TensorRT-owned buffers (here CPU tensors shared through DLPack,
    outputs written in place), against the plain-PyTorch references."""
    from sschsr_deploy.ops import modulated_deform_conv2d_reference
    from sschsr_deploy.ops.patch_match import patch_match_reference
    from sschsr_deploy.ops.spectral_attention import spectral_attention_reference

    g = torch.Generator().manual_seed(0)
    x, off = torch.randn(2, 16, 9, 7, generator=g), torch.randn(2, 36, 9, 7, generator=g) * 2
    mask, wt, bias = torch.rand(2, 18, 9, 7, generator=g), torch.randn(8, 16, 3, 3, generator=g) * 0.2, torch.randn(8)
    y = torch.full((2, 8, 9, 7), float("nan"))
    S.run_impl(registered.plugins[DCN], [_cpu_tensor(t) for t in (x, off, mask, wt, bias)], [_cpu_tensor(y)],
               DCN_ATTRS)
    ref = modulated_deform_conv2d_reference(x, off, mask, wt, bias, 1, 1, 1, 1, 2)
    assert (y - ref).norm() / ref.norm() < 1e-5

    q, k, v = (torch.randn(1, 8, 6, 5, generator=g) for _ in range(3))
    tau = torch.rand(2, 1, 1, generator=g) + 0.5
    out = torch.full_like(q, float("nan"))
    S.run_impl(registered.plugins[SA], [_cpu_tensor(t) for t in (q, k, v, tau)], [_cpu_tensor(out)], {"heads": 2})
    ref = spectral_attention_reference(q, k, v, tau, 2)
    assert (out - ref).norm() / ref.norm() < 1e-5

    f, r = torch.randn(1, 4, 8, 9, generator=g), torch.randn(1, 4, 8, 9, generator=g)
    idx, sim = torch.full((1, 6, 7), -1, dtype=torch.long), torch.full((1, 6, 7), float("nan"))
    S.run_impl(registered.plugins[PM], [_cpu_tensor(f), _cpu_tensor(r)], [_cpu_tensor(idx), _cpu_tensor(sim)],
               {"patch_size": 3})
    ref_idx, ref_sim = patch_match_reference(f, r, 3)
    assert torch.equal(idx, ref_idx) and torch.allclose(sim, ref_sim, atol=1e-5)


def _custom_graph(sa_attrs=None):
    """A prepared graph with our three plugin nodes (shapes do not matter to the parser's routing)."""
    x = helper.make_tensor_value_info("x", 1, [1, 16, 8, 8])
    nodes = [
        helper.make_node("DeformConv", ["x", "w", "off", "b", "m"], ["y"], name="dcn", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1, offset_group=2),
        helper.make_node("SpectralAttention", ["y", "y", "y", "t"], ["z"], name="sa", domain="sschsr", heads=4,
                         **(sa_attrs or {})),
        helper.make_node("PatchMatch", ["z", "z"], ["i", "s"], name="pm", domain="sschsr", patch_size=3),
    ]
    ins = [x] + [helper.make_tensor_value_info(n, 1, None) for n in ("w", "off", "b", "m", "t")]
    outs = [helper.make_tensor_value_info("i", 7, None), helper.make_tensor_value_info("s", 1, None)]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("sschsr", 1)])
    return G.prepare_for_tensorrt(model, "plugin")


def test_parser_routes_every_node_to_an_implementation_it_has(registered):
    """As ``build_engine`` builds (PREFER_AOT_PYTHON_PLUGINS): the DCN runs its AOT kernel, the others their JIT
    implementation; attributes reach the plugin with the registered types."""
    parsed = {n.op_type: S.parse_plugin_node(n, prefer="aot") for n in G.custom_nodes(_custom_graph())}
    assert {op: p.implementation for op, p in parsed.items()} == {
        "ModulatedDeformConv2d": "aot", "SpectralAttention": "jit", "PatchMatch": "jit"}
    dcn = parsed["ModulatedDeformConv2d"].attrs
    assert dcn["stride"].dtype == np.int32 and list(dcn["padding"]) == [1, 1] and dcn["offset_groups"] == 2
    assert parsed["SpectralAttention"].attrs == {"heads": 4}


# ---- each defect re-introduced is rejected ------------------------------------------------------------------------

def _mutant(module: types.ModuleType, old: str, new: str, monkeypatch) -> types.ModuleType:
    """``module`` re-executed from its source with ``old`` replaced by ``new`` (which must occur exactly once)."""
    src = Path(module.__file__).read_text()
    if old:
        assert src.count(old) == 1, f"mutation anchor not found once in {module.__file__}: {old!r}"
        src = src.replace(old, new)
    else:
        src = new + src
    mutant = types.ModuleType(module.__name__ + "_mutant")
    mutant.__file__, mutant.__package__ = module.__file__, module.__package__
    monkeypatch.setitem(sys.modules, mutant.__name__, mutant)
    # dont_inherit: this test module's own ``from __future__ import annotations`` must not leak into the mutant
    exec(compile(src, module.__file__, "exec", dont_inherit=True), mutant.__dict__)
    return mutant


def _register_mutant(mutant: types.ModuleType) -> None:
    """Register the plugin of a re-executed op module (its own ``EXPORT`` entry, so the mutant's code runs)."""
    assert mutant.EXPORT.register_plugin.__module__ == mutant.__name__
    P.register_plugins(compute_capability=90, ops=[mutant.EXPORT])


@pytest.mark.parametrize("op_module", [DC, SAMOD, PMOD], ids=lambda m: m.__name__.rpartition(".")[2])
def test_defect_1_postponed_annotations_fail_registration(trt, monkeypatch, op_module):
    mutant = _mutant(op_module, "", "from __future__ import annotations\n", monkeypatch)
    with pytest.raises(TypeError, match="issubclass"):
        _register_mutant(mutant)


def test_defect_2_aot_impl_without_return_annotation_fails_registration(trt, monkeypatch):
    line = ("                 ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, "
            "trtp.SymIntExprs]:  # noqa: UP006,UP007\n")
    mutant = _mutant(DC, line, "                 ):\n", monkeypatch)
    with pytest.raises(ValueError, match="No return annotation found for aot_impl"):
        _register_mutant(mutant)


def test_defect_3_int_on_a_shape_expression_fails_the_shape_function(trt, monkeypatch):
    mutant = _mutant(DC, 'kh, kw = _static(kh, "the kernel height"), _static(kw, "the kernel width")',
                     "kh, kw = int(kh), int(kw)", monkeypatch)
    _register_mutant(mutant)
    with pytest.raises(TypeError):
        S.output_descs(S.REGISTRY.plugins[DCN], _dcn_descs(), DCN_ATTRS)


def test_defect_4_aot_on_every_node_is_refused_by_the_parser(registered, monkeypatch):
    mutant = _mutant(G, '    if op_type in aot_ops:\n        attrs["aot"] = 1\n', '    attrs["aot"] = 1\n', monkeypatch)
    node = helper.make_node("SpectralAttention", ["q", "k", "v", "t"], ["o"], domain="sschsr", heads=4,
                            **mutant.plugin_node_attrs("SpectralAttention"))
    with pytest.raises(ValueError, match="AOT implementation requested, but not defined"):
        S.parse_plugin_node(node, prefer="aot")
    # and our own check refuses such a graph before TensorRT sees it
    assert G.check_plugin_nodes(helper.make_model(helper.make_graph([node], "g", [], [])))


def test_standin_rejects_what_tensorrt_rejects(trt):
    """The stand-in's own checks can fail (so the passes above mean something)."""
    e = S.dim("h")
    with pytest.raises(TypeError):
        int(e)
    with pytest.raises(TypeError):
        _ = 2 * e  # no reflected operators in TensorRT's expressions
    with pytest.raises(RuntimeError, match="fake"):
        _ = S.ShapeExpr(fake=True).is_constant
    with pytest.raises(ValueError, match="does not have a type annotation"):
        S.register("x::a")(lambda t: t.like())
    with pytest.raises(ValueError, match="No return annotation"):
        def unannotated(t: S.TensorDesc): ...
        S.register("x::a")(unannotated)
    with pytest.raises(ValueError, match="interspersed|come first"):
        def bad(n: int, t: S.TensorDesc) -> S.TensorDesc: ...
        S.register("x::b")(bad)
    with pytest.raises(ValueError, match="entries"):
        def good(t: S.TensorDesc) -> S.TensorDesc: ...
        S.register("x::c")(good)

        def tune(t, outputs) -> list[S.AutoTuneCombination]:
            return [S.AutoTuneCombination("FP32, FP32, FP32")]
        S.autotune("x::c")(tune)
        S.autotune_combinations(S.REGISTRY.plugins["x::c"], [_desc((1,))], [_desc((1,))], {})


def _symbolic_shapes(model) -> dict[str, tuple]:
    """Every tensor's shape after ONNX shape inference, named dims as stand-in symbols, initializers constant."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else S.dim(d.dim_param)
                                         for d in dims))
    return shapes


def test_an_exported_graph_parses_and_shapes_through_the_plugins(registered, tmp_path):
    """End to end on a real export (conv → DCN → spectral attention → patch matching, ``ops="custom"``): the graph
    rewritten for TensorRT (DCN as our plugin) has every sschsr node routed to an implementation, its attributes
    arrive under the names and types the plugins registered, and each shape function gives the shape PyTorch
    computes, for two batch sizes of the dynamic batch."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from test_export_onnx import OpsNet, _ops_inputs

    from sschsr_deploy.engine import onnx as ex

    net = OpsNet().eval()
    result = ex.export_module(net, _ops_inputs(2), tmp_path / "ops.onnx", input_names=["x", "ref"],
                              output_names=["y"], ops="custom", batch_range=(1, 4), check=False)
    prepared = G.prepare_for_tensorrt(onnx.load(str(result.path)), "plugin")
    nodes = G.custom_nodes(prepared)
    assert sorted(n.op_type for n in nodes) == ["ModulatedDeformConv2d", "PatchMatch", "SpectralAttention"]
    shapes = _symbolic_shapes(prepared)
    expected = {"ModulatedDeformConv2d": [(8, 14, 12)], "SpectralAttention": [(8, 14, 12)],
                "PatchMatch": [(12, 10), (12, 10)]}
    for node in nodes:
        parsed = S.parse_plugin_node(node, prefer="aot")
        assert set(parsed.attrs) == set(parsed.plugin.attrs), f"{node.op_type}: attributes lost on the way"
        inputs = [_desc(shapes[name]) for name in node.input]
        outs = S.output_descs(parsed.plugin, inputs, parsed.attrs)
        for batch in (1, 3):
            env = {d: batch for d in ("batch",)}
            got = [tuple(e.value(env) if isinstance(e, S.SymExpr) else e for e in o.shape_expr) for o in outs]
            assert got == [(batch, *s) for s in expected[node.op_type]], node.op_type
