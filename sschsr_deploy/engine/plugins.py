"""TensorRT plugins for our ``sschsr`` nodes through TensorRT's Python plugin API, with AOT-compiled Triton kernels.

Nodes (see :mod:`sschsr_deploy.engine.onnx` and :mod:`sschsr_deploy.engine.graph`):

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

Everything TensorRT-specific is in :func:`register_plugins` and is **unverified: no TensorRT available** (written
against the documented ``tensorrt.plugin`` API of TensorRT ≥ 10.9: ``register``, ``impl``, ``aot_impl``, ``autotune``,
``KernelLaunchParams``, ``SymIntExprs``, ``SymInt32``, ``cdiv``). The shape and type logic is in plain functions
(:func:`deform_conv_output_shape`, :func:`spectral_attention_output_shape`, :func:`patch_match_output_shapes`,
:func:`output_dtypes`, :func:`deform_conv_launch`) that work on ints and on TensorRT's symbolic expressions alike, and
the AOT compilation (:func:`compile_deform_conv_ptx`, Triton → PTX for a given compute capability, no GPU needed) is
tested here without TensorRT. The registrations themselves run in CI against ``tests/trt_standin.py``, a stand-in of
the documented ``tensorrt.plugin`` contract with TensorRT's validation (see ``tests/test_trt_plugin_contract.py``).

What ``tensorrt.plugin`` demands of this file, each a bug once:

- **no** ``from __future__ import annotations``: TensorRT checks ``issubclass(param.annotation, TensorDesc)`` on the raw
  signature, and a string annotation raises ``TypeError`` at the first registration;
- every ``aot_impl`` has its return annotation (``Tuple[Union[str, bytes], Union[str, bytes], KernelLaunchParams,
  SymIntExprs]``) and takes every attribute in registration order (TensorRT passes all of them, positionally);
- shape expressions have no ``__int__``: constants are read with :func:`_static` (``is_constant`` /
  ``constant_value()``), and the register functions also run once with *fake* expressions (dtypes only);
- expressions support ``+ - * //`` with the int on the right only; extra AOT arguments are ``SymInt32``.
"""

import contextlib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

PLUGIN_NAMESPACE = "sschsr"
PLUGIN_OP_TYPES = ("ModulatedDeformConv2d", "SpectralAttention", "PatchMatch")
AOT_PLUGINS = ("ModulatedDeformConv2d",)
DCN_BLOCKS = {"BLOCK_P": 64, "BLOCK_O": 64, "BLOCK_K": 32}  # one AOT configuration (no autotuning inside TensorRT)
DCN_NUM_WARPS = 4
DCN_NUM_STAGES = 1  # keeps shared memory at 16 KiB (fp32): under the 48 KiB a launch gets without opt-in


# ---------------------------------------------------------------------------------------------------------------------
# shape / type logic (plain functions: ints here, TensorRT shape expressions inside the plugin descriptors)

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


def _out_extent(size, pad: int, dil: int, k: int, stride: int):
    """Conv output extent; avoids division when stride is 1 (the symbolic case TensorRT must evaluate)."""
    span = dil * (k - 1) + 1
    if stride == 1:
        return size + (2 * pad - span + 1)
    return (size + (2 * pad - span)) // stride + 1


def deform_conv_output_shape(input_shape: Sequence, weight_shape: Sequence, stride: Sequence[int],
                             padding: Sequence[int], dilation: Sequence[int]) -> tuple:
    """(B, O, Ho, Wo) of a modulated deformable conv with input (B, C, H, W) and weight (O, C/groups, kh, kw)."""
    b, _, h, w = input_shape
    o, _, kh, kw = weight_shape
    kh, kw = _static(kh, "the kernel height"), _static(kw, "the kernel width")
    if kh is None or kw is None:  # TensorRT's fake pass: only the dtypes are read
        return (b, o, h, w)
    ho = _out_extent(h, int(padding[0]), int(dilation[0]), kh, int(stride[0]))
    wo = _out_extent(w, int(padding[1]), int(dilation[1]), kw, int(stride[1]))
    return (b, o, ho, wo)


def spectral_attention_output_shape(q_shape: Sequence, heads: int) -> tuple:
    """Spectral attention keeps q's shape; channels must split evenly over the heads (checked when constant)."""
    c = _static(q_shape[1], "the channel count", required=False)
    if c is not None and c % int(heads):
        raise ValueError(f"spectral attention: {c} channels are not divisible by {heads} heads")
    return tuple(q_shape)


def patch_match_output_shapes(feat_shape: Sequence, patch_size: int) -> tuple[tuple, tuple]:
    """(index shape, similarity shape) = (B, h−p+1, w−p+1) twice."""
    b, _, h, w = feat_shape
    p = int(patch_size)
    shape = (b, h + (1 - p), w + (1 - p))
    return shape, shape


def output_dtypes(op_type: str, input_dtypes: Sequence[str]) -> list[str]:
    """Output dtypes by name ("float32", "float16", "int64") from the input dtypes; validates the combination."""
    floats = ("float32", "float16")
    if op_type == "ModulatedDeformConv2d":
        x, offset, mask, weight, bias = input_dtypes
        if x not in floats or weight != x or bias != x or offset not in floats or mask not in floats:
            raise ValueError(f"ModulatedDeformConv2d: unsupported dtypes {list(input_dtypes)}")
        return [x]
    if op_type == "SpectralAttention":
        if len(set(input_dtypes)) != 1 or input_dtypes[0] not in floats:
            raise ValueError(f"SpectralAttention: q, k, v, temperature must share one float dtype, got "
                             f"{list(input_dtypes)}")
        return [input_dtypes[0]]
    if op_type == "PatchMatch":
        if len(set(input_dtypes)) != 1 or input_dtypes[0] not in floats:
            raise ValueError(f"PatchMatch: feat and ref_feat must share one float dtype, got {list(input_dtypes)}")
        return ["int64", input_dtypes[0]]
    raise ValueError(f"unknown sschsr op {op_type!r}")


def _cdiv(a, b: int):
    if isinstance(a, int):
        return -(-a // b)
    import tensorrt.plugin as trtp  # symbolic: TensorRT's ceiling division

    return trtp.cdiv(a, b)


@dataclass(frozen=True)
class Launch:
    grid: tuple  # (x, y, z): ints or symbolic expressions
    block_x: int
    shared_mem: int
    extra_args: tuple  # the int32 scalars, in the entry kernel's order


def deform_conv_launch(input_shape: Sequence, weight_shape: Sequence, out_shape: Sequence, groups: int,
                       num_warps: int = DCN_NUM_WARPS, shared_mem: int = 0, blocks: dict | None = None) -> Launch:
    """Grid, block and extra scalar arguments of the DCN entry kernel for the given I/O shapes."""
    blocks = blocks or DCN_BLOCKS
    b, c, h, w = input_shape
    o = weight_shape[0]
    ho, wo = out_shape[2], out_shape[3]
    npix = ho * wo
    og = o // groups if isinstance(o, int) else o  # O is a weight dim: a build-time constant in practice
    grid = (_cdiv(npix, blocks["BLOCK_P"]), _cdiv(og, blocks["BLOCK_O"]), b * groups)
    return Launch(grid, num_warps * 32, shared_mem, (c, h, w, ho, wo, o))


# ---------------------------------------------------------------------------------------------------------------------
# AOT compilation (Triton → PTX), testable without a GPU or TensorRT

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


try:  # the entry kernels need triton (and, when compiled, the Triton DCN kernel); everything else does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_DCN_BODY = None  # the @triton.jit body of kernels/triton/deform_conv.py, bound on first compile
_DCN_STRIDES = None  # _dcn_entry_strides as a JITFunction, bound on first compile

if triton is not None:

    def _dcn_entry_strides(C, H, W, Ho, Wo, O, OFFSET_GROUPS: tl.constexpr, K: tl.constexpr):
        """Per-sample strides of the contiguous input, offset, mask and output, and the output pixel count, in int64:
        (C·H·W, H·W, 2·G·K·Ho·Wo, G·K·Ho·Wo, O·Ho·Wo, Ho·Wo). Bound as ``_DCN_STRIDES`` (a ``JITFunction``) on the
        first compile, like the body."""
        hw = H.to(tl.int64) * W
        npix = Ho.to(tl.int64) * Wo
        return C * hw, hw, (2 * OFFSET_GROUPS * K) * npix, (OFFSET_GROUPS * K) * npix, O * npix, npix

    def _dcn_trt_entry(
        x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr,  # TensorRT passes the input pointers first,
        C, H, W, Ho, Wo, O,  # then the extra int32 scalars,
        y_ptr,  # then the output pointers
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, GROUPS: tl.constexpr, OFFSET_GROUPS: tl.constexpr,
        DOT_PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # TensorRT's linear format: contiguous NCHW tensors, so every stride follows from the shapes. The strides are
        # products of the int32 scalars: computed in int64 (a 64×512×512 feature map already has 2**24 elements per
        # channel group; C·H·W or 2·G·K·Ho·Wo pass 2**31 long before memory runs out), so no product wraps.
        Cg = C // GROUPS
        Og = O // GROUPS
        K = KH * KW
        x_sb, x_sc, o_sb, m_sb, y_sb, npix = _DCN_STRIDES(C, H, W, Ho, Wo, O, OFFSET_GROUPS, K)
        _DCN_BODY(
            x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, y_ptr,
            H, W, Wo, npix, GROUPS, Og, Cg, Cg * K, C // OFFSET_GROUPS,
            x_sb, x_sc, W, 1,
            o_sb, npix, Wo, 1,
            m_sb, npix, Wo, 1,
            Cg * K, K, KW, 1,
            y_sb, npix, Wo, 1,
            SH, SW, PH, PW, DH, DW,
            KH, KW, True, True, DOT_PRECISION, BLOCK_P, BLOCK_O, BLOCK_K,
        )


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


_ENTRY_CACHE: dict = {}


def _dcn_entry():
    """The DCN entry kernel in TensorRT's argument order, with the Triton DCN body bound."""
    global _DCN_BODY, _DCN_STRIDES
    if triton is None:
        raise RuntimeError("triton is not installed: the AOT plugin kernels cannot be compiled")
    if "dcn" not in _ENTRY_CACHE:
        from ..kernels.triton.deform_conv import _deform_conv2d_kernel

        _DCN_BODY = _as_jit(_deform_conv2d_kernel)
        _DCN_STRIDES = _as_jit(_dcn_entry_strides)
        _ENTRY_CACHE["dcn"] = _as_jit(_dcn_trt_entry)
    return _ENTRY_CACHE["dcn"]


def compile_deform_conv_ptx(
    dtype: str = "float32",
    kernel_size: tuple[int, int] = (3, 3),
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 8,
    compute_capability: int = 90,
    num_warps: int = DCN_NUM_WARPS,
    num_stages: int = DCN_NUM_STAGES,
) -> CompiledKernel:
    """PTX of the DCN entry kernel for one layer configuration and GPU architecture (no GPU needed).

    Signature of the entry: 5 input pointers (input, offset, mask, weight, bias), 6 int32 scalars (C, H, W, Ho, Wo,
    O), 1 output pointer; the layer's constants are compile-time (``tl.constexpr``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ty = {"float32": "fp32", "float16": "fp16"}[dtype]
    ptrs = {n: f"*{ty}" for n in ("x_ptr", "off_ptr", "msk_ptr", "w_ptr", "b_ptr")}
    scalars = {n: "i32" for n in ("C", "H", "W", "Ho", "Wo", "O")}
    constexprs = {
        "KH": kernel_size[0], "KW": kernel_size[1], "SH": stride[0], "SW": stride[1], "PH": padding[0],
        "PW": padding[1], "DH": dilation[0], "DW": dilation[1], "GROUPS": groups, "OFFSET_GROUPS": offset_groups,
        "DOT_PRECISION": "ieee" if dtype == "float32" else "tf32", **DCN_BLOCKS,
    }
    signature = {**ptrs, **scalars, "y_ptr": f"*{ty}", **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=_dcn_entry(), signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", compute_capability, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    name = compiled.metadata.name
    expected = len(ptrs) + len(scalars) + 1
    ptx = fit_ptx_params(compiled.asm["ptx"], name, expected, compiled.metadata)
    return CompiledKernel(name, ptx, compiled.metadata.num_warps, compiled.metadata.shared,
                          f"cuda:{compute_capability}", expected)


def plugin_hashes() -> dict[str, str]:
    """sha256 per plugin of the code it runs (plugin module, entry kernels, the Triton kernel sources, triton
    version): recorded in the engine sidecar and compared before an engine is loaded."""
    here = Path(__file__).resolve().parent
    kernels = here.parent / "kernels" / "triton"
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    sources = {
        "ModulatedDeformConv2d": ["deform_conv.py"],
        "SpectralAttention": ["spectral_attention.py"],
        "PatchMatch": ["patch_match.py"],
    }
    out = {}
    for op, files in sources.items():
        h = hashlib.sha256(f"triton={tv}".encode())
        for f in [here / "plugins.py", *(kernels / n for n in files)]:
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
        out[f"{PLUGIN_NAMESPACE}::{op}"] = h.hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT registration (unverified: no TensorRT available)

_REGISTERED = False


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


def register_plugins(compute_capability: int | None = None) -> list[str]:
    """Register the ``sschsr`` plugins with ``tensorrt.plugin`` (idempotent). Returns the plugin ids.

    Unverified: no TensorRT available. Must run before parsing a graph with ``sschsr`` nodes *and* before
    deserializing an engine that uses the JIT plugins (SpectralAttention, PatchMatch).
    """
    global _REGISTERED
    ids = [f"{PLUGIN_NAMESPACE}::{op}" for op in PLUGIN_OP_TYPES]
    if _REGISTERED:
        return ids
    from typing import Tuple, Union  # noqa: UP035 - TensorRT's validation is written against these forms

    import numpy as np
    import numpy.typing as npt
    import tensorrt as trt
    import tensorrt.plugin as trtp
    import torch

    def cc() -> int:
        if compute_capability is not None:
            return int(compute_capability)
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor

    def dtype_name(dt) -> str:
        return {trt.float32: "float32", trt.float16: "float16", trt.int64: "int64"}[dt]

    def trt_dtype(name: str):
        return {"float32": trt.float32, "float16": trt.float16, "int64": trt.int64}[name]

    # ---- ModulatedDeformConv2d ------------------------------------------------------------------------------------
    dcn_id = f"{PLUGIN_NAMESPACE}::ModulatedDeformConv2d"

    @trtp.register(dcn_id)
    def _dcn_desc(input: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
                  bias: trtp.TensorDesc, stride: npt.NDArray[np.int32], padding: npt.NDArray[np.int32],
                  dilation: npt.NDArray[np.int32], groups: int, offset_groups: int) -> trtp.TensorDesc:
        output_dtypes("ModulatedDeformConv2d", [dtype_name(t.dtype) for t in (input, offset, mask, weight, bias)])
        shape = deform_conv_output_shape(tuple(input.shape_expr), tuple(weight.shape_expr), stride, padding,
                                         dilation)
        return trtp.from_shape_expr(shape, dtype=input.dtype)

    @trtp.autotune(dcn_id)
    def _dcn_autotune(input, offset, mask, weight, bias, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16")]

    @trtp.aot_impl(dcn_id)
    def _dcn_aot(input: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
                 bias: trtp.TensorDesc, stride: npt.NDArray[np.int32], padding: npt.NDArray[np.int32],
                 dilation: npt.NDArray[np.int32], groups: int, offset_groups: int,
                 outputs: Tuple[trtp.TensorDesc], tactic: int,  # noqa: UP006
                 ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:  # noqa: UP006,UP007
        w = weight.shape_expr
        kernel = compile_deform_conv_ptx(
            dtype_name(input.dtype), (_static(w[2], "the kernel height"), _static(w[3], "the kernel width")),
            tuple(int(s) for s in stride), tuple(int(p) for p in padding), tuple(int(d) for d in dilation),
            int(groups), int(offset_groups), cc(),
        )
        launch = deform_conv_launch(tuple(input.shape_expr), (_static(w[0], "the output channels"),),
                                    tuple(outputs[0].shape_expr), int(groups), kernel.num_warps, kernel.shared_mem)
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = launch.grid
        params.block_x = launch.block_x
        params.shared_mem = launch.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in launch.extra_args])
        return kernel.name.encode(), kernel.ptx.encode(), params, extra

    @trtp.impl(dcn_id)
    def _dcn_impl(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups, outputs,
                  stream) -> None:
        from ..kernels.triton import deform_conv2d_triton

        t = _torch_views(input, offset, mask, weight, bias, *outputs)
        with _on_stream(t[0].device, stream):
            y = deform_conv2d_triton(*t[:5], tuple(int(s) for s in stride), tuple(int(p) for p in padding),
                                     tuple(int(d) for d in dilation), int(groups), int(offset_groups))
            t[5].copy_(y)

    # ---- SpectralAttention (JIT) ------------------------------------------------------------------------------------
    sa_id = f"{PLUGIN_NAMESPACE}::SpectralAttention"

    @trtp.register(sa_id)
    def _sa_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, temperature: trtp.TensorDesc,
                 heads: int) -> trtp.TensorDesc:
        output_dtypes("SpectralAttention", [dtype_name(t.dtype) for t in (q, k, v, temperature)])
        spectral_attention_output_shape(tuple(q.shape_expr), heads)
        return q.like()

    @trtp.autotune(sa_id)
    def _sa_autotune(q, k, v, temperature, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16")]

    @trtp.impl(sa_id)
    def _sa_impl(q, k, v, temperature, heads, outputs, stream) -> None:
        from ..kernels.triton import spectral_attention_triton

        t = _torch_views(q, k, v, temperature, *outputs)
        with _on_stream(t[0].device, stream):
            t[4].copy_(spectral_attention_triton(*t[:4], int(heads)))

    # ---- PatchMatch (JIT) -------------------------------------------------------------------------------------------
    pm_id = f"{PLUGIN_NAMESPACE}::PatchMatch"

    @trtp.register(pm_id)
    def _pm_desc(feat: trtp.TensorDesc, ref_feat: trtp.TensorDesc,
                 patch_size: int) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        dts = output_dtypes("PatchMatch", [dtype_name(feat.dtype), dtype_name(ref_feat.dtype)])
        idx_shape, sim_shape = patch_match_output_shapes(tuple(feat.shape_expr), patch_size)
        return (trtp.from_shape_expr(idx_shape, dtype=trt_dtype(dts[0])),
                trtp.from_shape_expr(sim_shape, dtype=trt_dtype(dts[1])))

    @trtp.autotune(pm_id)
    def _pm_autotune(feat, ref_feat, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, INT64, FP32|FP16")]

    @trtp.impl(pm_id)
    def _pm_impl(feat, ref_feat, patch_size, outputs, stream) -> None:
        from ..kernels.triton import patch_match_triton

        f, r, idx_out, sim_out = _torch_views(feat, ref_feat, *outputs)
        with _on_stream(f.device, stream):
            idx, sim = patch_match_triton(f, r, int(patch_size))
            idx_out.copy_(idx)
            sim_out.copy_(sim)

    _REGISTERED = True
    return ids
