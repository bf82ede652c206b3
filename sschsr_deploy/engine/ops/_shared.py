"""What every ``sschsr`` op's export rules share: the registry entry (:class:`OpExport`), the ONNX schema and
onnxscript helpers, and the TensorRT plugin helpers (shape-expression constants, buffer views, streams, PTX entries).

Imported by the per-op modules (:mod:`.deform_conv`, :mod:`.spectral_attention`, :mod:`.patch_match`); it imports
none of them, nor :mod:`sschsr_deploy.engine.onnx` / :mod:`sschsr_deploy.engine.plugins` (no import cycle).

No ``from __future__ import annotations`` in the modules that define plugins (TensorRT validates the raw
annotations); kept out of this one too, for uniformity.
"""

import contextlib
import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CUSTOM_DOMAIN = "sschsr"  # the ONNX domain of our nodes
PLUGIN_NAMESPACE = "sschsr"  # the TensorRT plugin namespace (``sschsr::<op>``)
FLOATS = ("float32", "float16")


@dataclass(frozen=True)
class OpExport:
    """The export rules of one ``sschsr`` op, defined in the op's module under :mod:`sschsr_deploy.engine.ops`.

    - ``name``: the ONNX node / TensorRT plugin op type (``sschsr::<name>``);
    - ``torch_op``: the op's name under ``torch.ops.sschsr`` (the traced node the translation replaces);
    - ``schema()``: its ``onnx.defs.OpSchema`` (domain ``sschsr``, version 1);
    - ``translation(ops_mode)``: the onnxscript translation for ``torch.onnx.export`` in ``"standard"`` / ``"custom"``;
    - ``reference_function()``: the onnxscript function computing the custom node with standard ops, or ``None``
      (an op whose custom-mode node is a standard ONNX op needs none);
    - ``register_plugin(trtp, ctx)``: registers the TensorRT plugin with ``tensorrt.plugin`` (``ctx``:
      :class:`PluginContext`);
    - ``output_dtypes(input_dtypes)``: the plugin's output dtypes by name, validating the inputs;
    - ``aot``: whether the plugin has an AOT implementation (``tensorrt.plugin.aot_impl``);
    - ``source``: the op's module file, ``kernel_sources``: its Triton kernel files under ``kernels/triton``
      (both hashed into the engine sidecar, :func:`sschsr_deploy.engine.plugins.plugin_hashes`).
    """

    name: str
    torch_op: str
    schema: Callable[[], Any]
    translation: Callable[[str], Callable]
    reference_function: Callable[[], Any] | None
    register_plugin: Callable[[Any, "PluginContext"], None]
    output_dtypes: Callable[[list[str]], list[str]]
    aot: bool
    source: str
    kernel_sources: tuple[str, ...]

    @property
    def plugin_id(self) -> str:
        return f"{PLUGIN_NAMESPACE}::{self.name}"


# ---------------------------------------------------------------------------------------------------------------------
# ONNX: schemas and onnxscript

def plugin_schema_attributes() -> list:
    """The optional node attributes TensorRT's ONNX parser reads to route a node to a Python plugin (see
    ``engine/graph.py``)."""
    from onnx.defs import OpSchema

    return [
        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
        OpSchema.Attribute("aot", OpSchema.AttrType.INT, "prefer the plugin's AOT implementation", required=False),
    ]


def register_schema(schema) -> None:
    """Register an ``sschsr`` op schema with ``onnx.defs`` unless it is registered already."""
    import onnx

    try:
        onnx.defs.get_schema(schema.name, 1, CUSTOM_DOMAIN)
    except onnx.defs.SchemaError:
        onnx.defs.register_schema(schema)


@functools.cache
def script_opsets() -> tuple:
    """(the standard opset, the ``sschsr`` opset of the custom nodes, the domain the reference functions are scripted
    in — renamed to ``sschsr`` when attached), built lazily: onnxscript is only needed for export."""
    from onnxscript import opset20 as op
    from onnxscript.values import Opset

    return op, Opset(CUSTOM_DOMAIN, 1), Opset("sschsr_reference", 1)


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT: shape expressions, buffers, streams

def _static(value, what: str, required: bool = True) -> int | None:
    """An int from an int or a TensorRT shape expression that is a build-time constant; ``None`` for TensorRT's fake
    expressions (its first pass over a register function, which only reads dtypes) and, unless ``required``, for a
    dynamic one. ``ShapeExpr`` has no ``__int__``: its documented accessors are ``is_fake``, ``is_constant`` and
    ``constant_value()``."""
    if not hasattr(type(value), "is_constant"):  # on the class: reading the property of a fake expression raises
        return int(value)
    if value.is_fake:
        return None
    if not value.is_constant:
        if required:
            raise ValueError(f"{what} must be a build-time constant (a weight dimension), got a dynamic one")
        return None
    return int(value.constant_value())


def _cdiv(a, b: int):
    if isinstance(a, int):
        return -(-a // b)
    import tensorrt.plugin as trtp  # symbolic: TensorRT's ceiling division

    return trtp.cdiv(a, b)


class PluginContext:
    """What the register functions share: the ``tensorrt`` module, the target compute capability, dtype names."""

    def __init__(self, trt, compute_capability: int | None = None) -> None:
        self.trt = trt
        self.compute_capability = compute_capability

    def cc(self) -> int:
        if self.compute_capability is not None:
            return int(self.compute_capability)
        import torch

        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor

    def dtype_name(self, dt) -> str:
        trt = self.trt
        return {trt.float32: "float32", trt.float16: "float16", trt.int64: "int64"}[dt]

    def trt_dtype(self, name: str):
        trt = self.trt
        return {"float32": trt.float32, "float16": trt.float16, "int64": trt.int64}[name]


def _torch_views(*tensors) -> list:
    """Torch tensors over TensorRT's buffers, where the buffers are: ``torch.as_tensor`` without ``device=`` keeps the
    device of the pointer (``device="cuda"`` would copy a ``cuda:1`` buffer to the current device, and the outputs
    written into that copy would be lost). Refuses a view that is a copy."""
    import torch

    views = [torch.as_tensor(t) for t in tensors]
    for t, v in zip(tensors, views, strict=True):
        if v.data_ptr() != int(t.data_ptr):
            raise RuntimeError("a TensorRT plugin buffer was copied instead of viewed; the output would be lost")
    return views


@contextlib.contextmanager
def _on_stream(device, stream: int):
    """Make the buffers' GPU current and TensorRT's stream torch's current stream, so the Triton launches (which go
    to the current device and stream) run where TensorRT expects; nothing to switch for CPU buffers (tests)."""
    import torch

    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.ExternalStream(stream, device=device)):
        yield


# ---------------------------------------------------------------------------------------------------------------------
# AOT: compiled kernels and their PTX entries

@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    target: str  # "cuda:90"
    params: int  # parameters of the PTX entry after fitting

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.ptx.encode()).hexdigest()


_ENTRY_RE = r"\.visible\s+\.entry\s+{name}\s*\(([^)]*)\)"


def ptx_entry_params(ptx: str, name: str) -> list[str]:
    m = re.search(_ENTRY_RE.format(name=re.escape(name)), ptx)
    if m is None:
        raise ValueError(f"kernel entry {name!r} not found in the PTX")
    return [p.strip() for p in m.group(1).split(",") if p.strip()]


def fit_ptx_params(ptx: str, name: str, expected: int, metadata: Any = None) -> str:
    """Drop the trailing scratch-pointer parameters Triton appends, so the entry takes exactly ``expected`` params.

    Refuses when the kernel needs global or profile scratch memory (``metadata``) or when a dropped parameter is read
    in the body: TensorRT would not pass those pointers.
    """
    for key in ("global_scratch_size", "profile_scratch_size"):
        size = getattr(metadata, key, 0) if metadata is not None else 0
        if size:
            raise ValueError(f"kernel {name} needs {key}={size}: TensorRT's AOT plugins cannot provide scratch memory")
    params = ptx_entry_params(ptx, name)
    if len(params) < expected:
        raise ValueError(f"kernel {name} has {len(params)} PTX parameters, fewer than the {expected} TensorRT passes")
    extra = params[expected:]
    for p in extra:
        pname = p.split()[-1]
        if re.search(rf"\[{re.escape(pname)}\]", ptx):
            raise ValueError(f"kernel {name}: trailing parameter {pname} is used by the kernel body")
    if not extra:
        return ptx
    m = re.search(_ENTRY_RE.format(name=re.escape(name)), ptx)
    assert m is not None
    kept = ",\n\t".join(params[:expected])
    return ptx[: m.start(1)] + "\n\t" + kept + "\n" + ptx[m.end(1):]


def _as_jit(kernel):
    """A compilable ``JITFunction`` of a kernel, also when it was defined under ``TRITON_INTERPRET=1`` (the
    interpreter wraps kernels in objects ``triton.compile`` cannot take) or wrapped by ``@triton.autotune``."""
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
        fn = fn.fn  # Autotuner -> JITFunction / InterpretedFunction -> python function
    if isinstance(fn, JITFunction) and type(fn) is JITFunction:
        return fn
    return JITFunction(getattr(fn, "fn", fn))
