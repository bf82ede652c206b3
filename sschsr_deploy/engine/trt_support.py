"""Static check that TensorRT's ONNX parser can import every node of a graph, before any build is attempted.

The list of supported operators is data kept in the repository,
``sschsr_deploy/resources/onnx_tensorrt_operators.json``: the onnx-tensorrt operator support matrix
(https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md, TensorRT 10.15, opsets 9–24), with each operator's
supported types and restrictions. Nodes in our own custom domain (``sschsr``) count as supported when a TensorRT plugin
for them is defined in :mod:`sschsr_deploy.engine.plugins`.

What this catches: an operator the parser does not import at all (e.g. ``Col2Im``, ``Unique``), a node of an unknown
custom domain (e.g. ``mmcv``), an opset outside the parser's range, and element types outside an operator's
supported list (e.g. a ``DeformConv`` in bf16). What it cannot catch: restrictions that depend on values or shapes
(``axes`` must be initializers, ``pads`` symmetric, …) — those are listed in the report as notes for the nodes
concerned, and the build itself is the final check.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CUSTOM_DOMAIN",
    "SupportReport",
    "check_tensorrt_support",
    "supported_operators",
]

CUSTOM_DOMAIN = "sschsr"
_DATA = Path(__file__).resolve().parent.parent / "resources" / "onnx_tensorrt_operators.json"
_DEFAULT_DOMAINS = ("", "ai.onnx")

# onnx TensorProto element type -> the type names used by the support matrix
_ELEM_TYPE_NAMES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE", 16: "BF16",
    17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4", 23: "FP4",
}


@functools.cache
def supported_operators() -> dict:
    """The support matrix as stored in the repository (``operators``, ``source_url``, ``tensorrt_version``, …)."""
    return json.loads(_DATA.read_text())


@dataclass
class SupportReport:
    """Result of :func:`check_tensorrt_support`. ``ok`` is False when any node cannot be imported by the parser."""

    tensorrt_version: str
    source_url: str
    op_counts: dict[str, int] = field(default_factory=dict)  # "domain::Op" or "Op" -> count
    unsupported: dict[str, str] = field(default_factory=dict)  # op -> reason
    type_problems: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # op -> restriction to keep in mind (not checked statically)
    plugin_ops: list[str] = field(default_factory=list)  # custom-domain ops served by our plugins

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.type_problems

    def summary(self) -> str:
        head = (
            f"TensorRT {self.tensorrt_version} ONNX parser support ({self.source_url}): "
            f"{sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types"
        )
        lines = [head]
        if self.plugin_ops:
            lines.append("  served by sschsr plugins: " + ", ".join(self.plugin_ops))
        for op, why in sorted(self.unsupported.items()):
            lines.append(f"  UNSUPPORTED {op}: {why}")
        lines.extend(f"  TYPE {p}" for p in self.type_problems)
        if self.ok:
            lines.append("  every node is importable")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "tensorrt_version": self.tensorrt_version, "source_url": self.source_url,
            "op_counts": self.op_counts, "unsupported": self.unsupported, "type_problems": self.type_problems,
            "notes": self.notes, "plugin_ops": self.plugin_ops,
        }


def _value_types(model) -> dict[str, int]:
    """Element type of every named value whose type is known (inputs, outputs, value_info, initializers)."""
    g = model.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def check_tensorrt_support(model, plugin_ops: set[str] | None = None, infer_shapes: bool = True) -> SupportReport:
    """Check every node of ``model`` (an ``onnx.ModelProto`` or a path) against the parser's support matrix.

    ``plugin_ops``: custom-domain op types we provide plugins for (default: the ones defined in
    :mod:`sschsr_deploy.engine.plugins`). Nodes in functions of the model are checked as well; a node calling a local
    function counts as supported when the function's body is.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if infer_shapes:
        model = onnx.shape_inference.infer_shapes(model)
    if plugin_ops is None:
        from .plugins import PLUGIN_OP_TYPES

        plugin_ops = set(PLUGIN_OP_TYPES)
    data = supported_operators()
    table = data["operators"]
    lo, hi = data["opset_range"]
    report = SupportReport(tensorrt_version=data["tensorrt_version"], source_url=data["source_url"])

    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS and not lo <= imp.version <= hi:
            report.unsupported[f"opset {imp.version}"] = f"the parser imports opsets {lo}–{hi}"

    local_functions = {(f.domain, f.name) for f in model.functions}
    types = _value_types(model)
    counts: Counter[str] = Counter()
    plugins_seen: set[str] = set()

    nodes = list(model.graph.node)
    for f in model.functions:
        nodes.extend(f.node)
    for node in nodes:
        domain = node.domain
        key = node.op_type if domain in _DEFAULT_DOMAINS else f"{domain}::{node.op_type}"
        counts[key] += 1
        if (domain, node.op_type) in local_functions:
            continue  # its body is in model.functions and checked there
        if domain not in _DEFAULT_DOMAINS:
            if domain == CUSTOM_DOMAIN and node.op_type in plugin_ops:
                plugins_seen.add(key)
            else:
                report.unsupported[key] = (
                    f"custom domain {domain!r} has no TensorRT plugin here"
                    if domain != CUSTOM_DOMAIN else f"no sschsr plugin is defined for {node.op_type}"
                )
            continue
        entry = table.get(node.op_type)
        if entry is None:
            report.unsupported[key] = "not in the parser's operator list"
            continue
        if not entry["supported"]:
            report.unsupported[key] = "listed as not supported by the parser"
            continue
        if entry.get("restrictions"):
            report.notes[key] = entry["restrictions"]
        allowed = set(entry.get("types", ()))
        if node.op_type in ("Cast", "CastLike", "Shape", "Size"):
            continue  # type-changing or type-agnostic: checked through their neighbours
        for name in node.input[:1]:  # the data input decides the kernel type
            t = types.get(name)
            if t is None or not allowed:
                continue
            tname = _ELEM_TYPE_NAMES.get(t, f"type {t}")
            if tname not in allowed and not (tname == "DOUBLE"):  # DOUBLE is cast down by the parser
                report.type_problems.append(f"{key} node {node.name or '?'}: input {tname} not in {sorted(allowed)}")
    report.type_problems.extend(_nonzero_zero_points(model))
    report.op_counts = dict(sorted(counts.items()))
    report.plugin_ops = sorted(plugins_seen)
    return report


def _nonzero_zero_points(model) -> list[str]:
    """Q/DQ nodes whose zero point is not all zeros: TensorRT quantizes symmetrically only ("TRT only supports
    symmetric quantization - zeroPt must be all zeros", its parser's assertion; NVIDIA's "Working with Quantized
    Types"). Only zero points stored as initializers or Constant nodes are checked."""
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    problems = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = consts.get(node.input[2])
            if zp is not None and numpy_helper.to_array(zp).any():
                problems.append(f"{node.op_type} node {node.name or '?'}: non-zero zero point (TensorRT quantizes "
                                "symmetrically only: export --precision int8 --int8-target tensorrt)")
    return problems
