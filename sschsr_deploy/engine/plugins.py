"""TensorRT plugins for our ``sschsr`` nodes through TensorRT's Python plugin API, with AOT-compiled Triton kernels.

Nodes (see :mod:`sschsr_deploy.engine.ops`, :mod:`sschsr_deploy.engine.onnx` and :mod:`sschsr_deploy.engine.graph`):

============================  =====================================  ==============================================
plugin (``sschsr::``)         inputs → outputs                        implementation
============================  =====================================  ==============================================
``ModulatedDeformConv2d``     input, offset, mask, weight, bias → y   **AOT**: PTX of ``kernels/triton/deform_conv``
                                                                      through the entry kernel below; also JIT
``SpectralAttention``         q, k, v, temperature → out              JIT only (Python at run time), see below
``PatchMatch``                feat, ref_feat → index (int64), sim     JIT only (Python at run time), see below
============================  =====================================  ==============================================

An AOT implementation (``tensorrt.plugin.aot_impl``) returns **one** kernel: its name, its PTX, launch parameters
(grid/block/shared memory as symbolic expressions of the I/O shapes) and the extra scalar arguments; TensorRT embeds
the PTX in the engine and launches it without Python. TensorRT passes the kernel's arguments in the order
*input pointers, extra int32 scalars, output pointers*; our Triton kernels take (inputs, output, scalars, strides), so
each AOT plugin compiles a small **entry kernel** defined here with TensorRT's order, which derives the contiguous
strides from the shapes and calls the operator's ``@triton.jit`` kernel body (inlined by Triton). Triton (≥ 3.3)
appends scratch-pointer parameters to every kernel; :func:`fit_ptx_params` checks that the kernel needs no scratch
memory and drops those trailing parameters from the PTX entry, so the parameter list is exactly what TensorRT passes.

Spectral attention and patch matching have no AOT implementation yet: their Triton implementations are several
launches with torch glue between them (Gram + norms → softmax on the c×c matrix → A·V; normalisation and unfold →
score/arg-max kernel), and an AOT plugin is one kernel. Their plugins have JIT implementations that call the Triton
wrappers on TensorRT's stream, so engines containing them need Python, torch and triton at run time. A single fused
kernel per op (requested from the kernels work) turns them into AOT plugins the same way as the DCN.

Each plugin is defined in its op's module under :mod:`sschsr_deploy.engine.ops` (with the op's ONNX schema and
translations): :mod:`~sschsr_deploy.engine.ops.deform_conv` (shape/type functions, the AOT entry kernel and the PTX
compile), :mod:`~sschsr_deploy.engine.ops.spectral_attention`, :mod:`~sschsr_deploy.engine.ops.patch_match`; this
module registers the ops of :data:`sschsr_deploy.engine.ops.REGISTRY`, hashes their sources, and re-exports the
plain functions under their old names.

Everything TensorRT-specific is in the ``register_plugin`` functions of those modules and is **unverified: no
TensorRT available** (written against the documented ``tensorrt.plugin`` API of TensorRT ≥ 10.9: ``register``,
``impl``, ``aot_impl``, ``autotune``, ``KernelLaunchParams``, ``SymIntExprs``, ``SymInt32``, ``cdiv``). The shape
and type logic is in plain functions (:func:`deform_conv_output_shape`, :func:`spectral_attention_output_shape`,
:func:`patch_match_output_shapes`, :func:`output_dtypes`, :func:`deform_conv_launch`) that work on ints and on
TensorRT's symbolic expressions alike, and the AOT compilation (:func:`compile_deform_conv_ptx`, Triton → PTX for a
given compute capability, no GPU needed) is tested without TensorRT. The registrations themselves run in CI against
``tests/trt_standin.py``, a stand-in of the documented ``tensorrt.plugin`` contract with TensorRT's validation (see
``tests/test_trt_plugin_contract.py``).

What ``tensorrt.plugin`` demands of the modules that define plugins, each a bug once:

- **no** ``from __future__ import annotations``: TensorRT checks ``issubclass(param.annotation, TensorDesc)`` on the raw
  signature, and a string annotation raises ``TypeError`` at the first registration;
- every ``aot_impl`` has its return annotation (``Tuple[Union[str, bytes], Union[str, bytes], KernelLaunchParams,
  SymIntExprs]``) and takes every attribute in registration order (TensorRT passes all of them, positionally);
- shape expressions have no ``__int__``: constants are read with :func:`_static` (``is_constant`` /
  ``constant_value()``), and the register functions also run once with *fake* expressions (dtypes only);
- expressions support ``+ - * //`` with the int on the right only; extra AOT arguments are ``SymInt32``.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

from .ops import PLUGIN_NAMESPACE, REGISTRY, OpExport, PluginContext, by_name
from .ops._shared import (  # noqa: F401 - re-exported under their old names
    CompiledKernel,
    _as_jit,
    _cdiv,
    _on_stream,
    _static,
    _torch_views,
    fit_ptx_params,
    ptx_entry_params,
)
from .ops.deform_conv import (  # noqa: F401 - re-exported under their old names
    DCN_BLOCKS,
    DCN_NUM_STAGES,
    DCN_NUM_WARPS,
    Launch,
    _dcn_entry,
    compile_deform_conv_ptx,
    deform_conv_launch,
    deform_conv_output_shape,
)
from .ops.patch_match import patch_match_output_shapes
from .ops.spectral_attention import spectral_attention_output_shape

try:  # the DCN entry kernels exist only with triton installed
    from .ops.deform_conv import _dcn_entry_strides, _dcn_trt_entry  # noqa: F401
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    pass

__all__ = [
    "AOT_PLUGINS",
    "PLUGIN_NAMESPACE",
    "PLUGIN_OP_TYPES",
    "CompiledKernel",
    "compile_deform_conv_ptx",
    "deform_conv_launch",
    "deform_conv_output_shape",
    "fit_ptx_params",
    "output_dtypes",
    "patch_match_output_shapes",
    "plugin_hashes",
    "register_plugins",
    "spectral_attention_output_shape",
]

PLUGIN_OP_TYPES = tuple(op.name for op in REGISTRY)
AOT_PLUGINS = tuple(op.name for op in REGISTRY if op.aot)


def output_dtypes(op_type: str, input_dtypes: Sequence[str]) -> list[str]:
    """Output dtypes by name ("float32", "float16", "int64") from the input dtypes; validates the combination."""
    return by_name(op_type).output_dtypes(input_dtypes)


def plugin_hashes() -> dict[str, str]:
    """sha256 per plugin of the code it runs (the op's export module with its plugin and entry kernels, the shared
    helpers and this module, the Triton kernel sources, triton version): recorded in the engine sidecar and compared
    before an engine is loaded."""
    here = Path(__file__).resolve().parent
    kernels = here.parent / "kernels" / "triton"
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    out = {}
    for op in REGISTRY:
        h = hashlib.sha256(f"triton={tv}".encode())
        files = [Path(op.source).resolve(), here / "ops" / "_shared.py", here / "plugins.py",
                 *(kernels / n for n in op.kernel_sources)]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
        out[op.plugin_id] = h.hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT registration (unverified: no TensorRT available)

_REGISTERED = False


def register_plugins(compute_capability: int | None = None, ops: Sequence[OpExport] | None = None) -> list[str]:
    """Register the ``sschsr`` plugins with ``tensorrt.plugin`` (idempotent). Returns the plugin ids.

    Unverified: no TensorRT available. Must run before parsing a graph with ``sschsr`` nodes *and* before
    deserializing an engine that uses the JIT plugins (SpectralAttention, PatchMatch). ``ops``: the registry entries
    to register (default: all of :data:`sschsr_deploy.engine.ops.REGISTRY`, once); given explicitly, they are
    registered on every call (tests register a re-executed op module this way).
    """
    global _REGISTERED
    entries = tuple(REGISTRY if ops is None else ops)
    ids = [op.plugin_id for op in entries]
    if ops is None and _REGISTERED:
        return ids
    import tensorrt as trt
    import tensorrt.plugin as trtp

    ctx = PluginContext(trt, compute_capability)
    for op in entries:
        op.register_plugin(trtp, ctx)
    if ops is None:
        _REGISTERED = True
    return ids
