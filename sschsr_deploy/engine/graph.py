"""ONNX graph rewrites with plain ``onnx``: deformable-conv node swaps, custom-function handling, metadata, dim names.

The deformable convolution has two TensorRT paths:

- ``"stock"`` (baseline): the ONNX ``DeformConv`` node as exported; TensorRT's ONNX parser imports it natively
  (``DeformConv`` is in its operator list since TensorRT 10.x, backed by its ``ModulatedDeformConv2d`` implementation).
- ``"plugin"``: each ``DeformConv`` becomes an ``sschsr::ModulatedDeformConv2d`` node with the torch op's input order
  (input, offset, mask, weight, bias) and attributes (``stride``, ``padding``, ``dilation``, ``groups``,
  ``offset_groups``), plus ``plugin_namespace="sschsr"``, ``plugin_version="1"`` and ``aot=1`` — the attributes
  TensorRT's ONNX parser reads to hand a node to a Python (QDP) plugin and to use its AOT implementation.

``aot`` is not a preference: onnx-tensorrt turns ``aot=1`` into a *strict* AOT request (``aot=0`` into strict JIT),
and TensorRT then refuses a plugin without that implementation. So ``aot=1`` goes only on ops listed in
:data:`sschsr_deploy.engine.plugins.AOT_PLUGINS`; the JIT-only ops (SpectralAttention, PatchMatch) carry no ``aot``
attribute, which leaves the choice to TensorRT (their only implementation is JIT). :func:`check_plugin_nodes` checks a
prepared graph for exactly that before it goes to the parser.

:func:`use_deform_conv` switches between the two (both directions); :func:`prepare_for_tensorrt` applies the choice
and removes any ``sschsr`` function bodies so that the parser sends our custom nodes to the plugins.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping

import onnx
from onnx import helper

__all__ = [
    "CUSTOM_DOMAIN",
    "DCN_PLUGIN_OP",
    "PLUGIN_NODE_ATTRS",
    "attach_functions",
    "check_plugin_nodes",
    "custom_nodes",
    "op_counts",
    "plugin_node_attrs",
    "prepare_for_tensorrt",
    "rename_dynamic_dims",
    "set_metadata",
    "strip_functions",
    "use_deform_conv",
]

CUSTOM_DOMAIN = "sschsr"
DCN_PLUGIN_OP = "ModulatedDeformConv2d"
PLUGIN_NODE_ATTRS = ("plugin_namespace", "plugin_version", "aot")  # read by the parser, not by the plugin
PLUGIN_VERSION = "1"


def _plugin_tables() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every plugin op, the ops with an AOT implementation), from the plugin module: one list, kept there."""
    from .plugins import AOT_PLUGINS, PLUGIN_OP_TYPES

    return PLUGIN_OP_TYPES, AOT_PLUGINS


def plugin_node_attrs(op_type: str) -> dict[str, object]:
    """The parser-facing attributes of an ``sschsr`` node: namespace, version and ``aot=1`` only for AOT plugins."""
    _, aot_ops = _plugin_tables()
    attrs: dict[str, object] = {"plugin_namespace": CUSTOM_DOMAIN, "plugin_version": PLUGIN_VERSION}
    if op_type in aot_ops:
        attrs["aot"] = 1
    return attrs


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (``domain::Op`` outside the default domain), top-level graph only."""
    c = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    return dict(sorted(c.items()))


def custom_nodes(model: onnx.ModelProto, domain: str = CUSTOM_DOMAIN) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == domain]


def set_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> onnx.ModelProto:
    """Set (add or replace) ``metadata_props`` entries in place; values are stored as strings."""
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = str(k), str(v)
    return model


def rename_dynamic_dims(model: onnx.ModelProto, axes: Mapping[int, str]) -> onnx.ModelProto:
    """Give the symbolic dims at ``axes`` of the graph inputs readable names (e.g. ``{0: "batch"}``), everywhere.

    The exporter names symbols ``s0``, ``s39``…; every occurrence of a renamed symbol (inputs, outputs, value_info)
    is renamed so that the graph stays consistent.
    """
    rename: dict[str, str] = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        for axis, name in axes.items():
            if axis < len(dims) and dims[axis].dim_param:
                rename[dims[axis].dim_param] = name
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    return model


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return default


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _ensure_opset(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def _deform_to_plugin(node: onnx.NodeProto) -> onnx.NodeProto:
    x, w, offset = node.input[0], node.input[1], node.input[2]
    bias = node.input[3] if len(node.input) > 3 else ""
    mask = node.input[4] if len(node.input) > 4 else ""
    if not bias or not mask:
        raise ValueError(f"DeformConv node {node.name!r}: the plugin needs both bias and mask inputs")
    pads = _ints(node, "pads", [0, 0, 0, 0])
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise ValueError(f"DeformConv node {node.name!r}: asymmetric pads {pads} are not supported by the plugin")
    return helper.make_node(
        DCN_PLUGIN_OP, [x, offset, mask, w, bias], list(node.output), name=node.name or None, domain=CUSTOM_DOMAIN,
        stride=_ints(node, "strides", [1, 1]), padding=[pads[0], pads[1]], dilation=_ints(node, "dilations", [1, 1]),
        groups=_int(node, "group", 1), offset_groups=_int(node, "offset_group", 1),
        **plugin_node_attrs(DCN_PLUGIN_OP),
    )


def _plugin_to_deform(node: onnx.NodeProto, weight_shapes: Mapping[str, list[int]]) -> onnx.NodeProto:
    x, offset, mask, w, bias = node.input
    pad = _ints(node, "padding", [0, 0])
    attrs = dict(
        strides=_ints(node, "stride", [1, 1]), dilations=_ints(node, "dilation", [1, 1]),
        pads=[pad[0], pad[1], pad[0], pad[1]], group=_int(node, "groups", 1),
        offset_group=_int(node, "offset_groups", 1),
    )
    if w in weight_shapes:
        attrs["kernel_shape"] = list(weight_shapes[w][2:])
    return helper.make_node("DeformConv", [x, w, offset, bias, mask], list(node.output), name=node.name or None,
                            **attrs)


def use_deform_conv(model: onnx.ModelProto, impl: str) -> onnx.ModelProto:
    """A copy of ``model`` with its deformable convolutions as ``impl``: ``"stock"`` (ONNX ``DeformConv``) or
    ``"plugin"`` (``sschsr::ModulatedDeformConv2d``). Converts in either direction; other nodes are untouched."""
    if impl not in ("stock", "plugin"):
        raise ValueError(f"impl must be 'stock' or 'plugin', got {impl!r}")
    out = copy.deepcopy(model)
    weight_shapes = {i.name: list(i.dims) for i in out.graph.initializer}
    nodes = []
    changed = False
    for n in out.graph.node:
        if impl == "plugin" and n.op_type == "DeformConv" and n.domain in ("", "ai.onnx"):
            nodes.append(_deform_to_plugin(n))
            changed = True
        elif impl == "stock" and n.op_type == DCN_PLUGIN_OP and n.domain == CUSTOM_DOMAIN:
            nodes.append(_plugin_to_deform(n, weight_shapes))
            changed = True
        else:
            nodes.append(n)
    if changed:
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        if impl == "plugin":
            _ensure_opset(out, CUSTOM_DOMAIN)
    return out


def strip_functions(model: onnx.ModelProto, domain: str = CUSTOM_DOMAIN) -> onnx.ModelProto:
    """A copy without the model-local functions of ``domain`` (so TensorRT's parser falls back to plugins)."""
    out = copy.deepcopy(model)
    keep = [f for f in out.functions if f.domain != domain]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def attach_functions(model: onnx.ModelProto, functions: Iterable[onnx.FunctionProto]) -> onnx.ModelProto:
    """A copy with ``functions`` added as model-local functions (existing ones with the same key are kept)."""
    out = copy.deepcopy(model)
    have = {(f.domain, f.name) for f in out.functions}
    for f in functions:
        if (f.domain, f.name) not in have:
            out.functions.append(f)
            for imp in f.opset_import:
                _ensure_opset(out, imp.domain, imp.version)
    return out


def prepare_for_tensorrt(model: onnx.ModelProto, deform_conv: str = "stock") -> onnx.ModelProto:
    """The graph TensorRT should parse: deformable convs as ``deform_conv`` (``"stock"``/``"plugin"``), no ``sschsr``
    function bodies, and on every ``sschsr`` node the parser attributes of :func:`plugin_node_attrs` (any ``aot``
    already there is replaced: an older export put ``aot=1`` on every node). Checked by :func:`check_plugin_nodes`."""
    out = strip_functions(use_deform_conv(model, deform_conv))
    for n in out.graph.node:
        if n.domain != CUSTOM_DOMAIN:
            continue
        keep = [a for a in n.attribute if a.name not in PLUGIN_NODE_ATTRS]
        del n.attribute[:]
        n.attribute.extend(keep)
        n.attribute.extend(helper.make_attribute(k, v) for k, v in plugin_node_attrs(n.op_type).items())
    problems = check_plugin_nodes(out)
    if problems:
        raise ValueError("graph prepared for TensorRT is inconsistent:\n" + "\n".join(problems))
    return out


def check_plugin_nodes(model: onnx.ModelProto) -> list[str]:
    """What TensorRT's parser would refuse in our ``sschsr`` nodes (empty when fine): an op without a plugin, a
    wrong namespace / version, ``aot=1`` on an op without an AOT implementation (strict AOT fails the build)."""
    ops, aot_ops = _plugin_tables()
    problems = []
    for n in custom_nodes(model):
        label = f"{n.op_type} node {n.name!r}"
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type not in ops:
            problems.append(f"{label}: no sschsr plugin implements {n.op_type}")
            continue
        if attrs.get("plugin_namespace") != CUSTOM_DOMAIN.encode():
            problems.append(f"{label}: plugin_namespace must be {CUSTOM_DOMAIN!r}")
        if attrs.get("plugin_version") != PLUGIN_VERSION.encode():
            problems.append(f"{label}: plugin_version must be {PLUGIN_VERSION!r}")
        if attrs.get("aot") == 1 and n.op_type not in aot_ops:
            problems.append(f"{label}: aot=1 requests a strict AOT implementation, but {n.op_type} has JIT only")
    return problems
