"""Export rules of ``sschsr::ModulatedDeformConv2d`` (modulated deformable convolution, DCNv2; the torch op
``torch.ops.sschsr.modulated_deform_conv2d``, kernel ``kernels/triton/deform_conv.py``): its ONNX schema, its
translation (the ONNX ``DeformConv`` node in both ops modes; :mod:`sschsr_deploy.engine.graph` swaps it for our plugin
node on request) and its TensorRT plugin, **AOT**: the PTX of the Triton kernel through the entry kernel below (also
JIT).

An AOT implementation (``tensorrt.plugin.aot_impl``) returns **one** kernel: its name, its PTX, launch parameters
(grid/block/shared memory as symbolic expressions of the I/O shapes) and the extra scalar arguments; TensorRT embeds
the PTX in the engine and launches it without Python. TensorRT passes the kernel's arguments in the order
*input pointers, extra int32 scalars, output pointers*; our Triton kernels take (inputs, output, scalars, strides), so
the plugin compiles a small **entry kernel** defined here with TensorRT's order, which derives the contiguous
strides from the shapes and calls the operator's ``@triton.jit`` kernel body (inlined by Triton). Triton (≥ 3.3)
appends scratch-pointer parameters to every kernel; :func:`fit_ptx_params` checks that the kernel needs no scratch
memory and drops those trailing parameters from the PTX entry, so the parameter list is exactly what TensorRT passes.

No ``from __future__ import annotations`` here (see :mod:`sschsr_deploy.engine.plugins`).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Tuple, Union  # noqa: UP035 - TensorRT's validation is written against these forms

import numpy as np
import numpy.typing as npt

from ._shared import (
    CUSTOM_DOMAIN,
    FLOATS,
    CompiledKernel,
    OpExport,
    PluginContext,
    _as_jit,
    _cdiv,
    _on_stream,
    _static,
    _torch_views,
    fit_ptx_params,
    plugin_schema_attributes,
    register_schema,
    script_opsets,
)

NAME = "ModulatedDeformConv2d"
DCN_BLOCKS = {"BLOCK_P": 64, "BLOCK_O": 64, "BLOCK_K": 32}  # one AOT configuration (no autotuning inside TensorRT)
DCN_NUM_WARPS = 4
DCN_NUM_STAGES = 1  # keeps shared memory at 16 KiB (fp32): under the 48 KiB a launch gets without opt-in


# ---------------------------------------------------------------------------------------------------------------------
# ONNX

def schema():
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    return OpSchema(
        NAME, CUSTOM_DOMAIN, 1,
        doc="DCNv2 (see ops/deform_conv.py); inputs in the torch op's order",
        inputs=[fp("input", "T"), fp("offset", "T"), fp("mask", "T"), fp("weight", "T"), fp("bias", "T")],
        outputs=[fp("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[
            OpSchema.Attribute("stride", OpSchema.AttrType.INTS, "stride (h, w)"),
            OpSchema.Attribute("padding", OpSchema.AttrType.INTS, "padding (h, w)"),
            OpSchema.Attribute("dilation", OpSchema.AttrType.INTS, "dilation (h, w)"),
            OpSchema.Attribute("groups", OpSchema.AttrType.INT, "conv groups"),
            OpSchema.Attribute("offset_groups", OpSchema.AttrType.INT, "offset groups"),
            *plugin_schema_attributes(),
        ],
    )


@functools.cache
def _script() -> dict:
    register_schema(schema())
    op, _, _ = script_opsets()

    def deform_conv(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        return op.DeformConv(
            input, weight, offset, bias, mask,
            dilations=[int(d) for d in dilation], group=int(groups), offset_group=int(offset_groups),
            pads=[int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
            strides=[int(s) for s in stride], kernel_shape=[kh, kw],
        )

    return {"standard": deform_conv, "custom": deform_conv}


def translation(ops: str):
    return _script()[ops]


# ---------------------------------------------------------------------------------------------------------------------
# shape / type logic (plain functions: ints here, TensorRT shape expressions inside the plugin descriptors)

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


def output_dtypes(input_dtypes: Sequence[str]) -> list[str]:
    x, offset, mask, weight, bias = input_dtypes
    if x not in FLOATS or weight != x or bias != x or offset not in FLOATS or mask not in FLOATS:
        raise ValueError(f"ModulatedDeformConv2d: unsupported dtypes {list(input_dtypes)}")
    return [x]


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


_ENTRY_CACHE: dict = {}


def _dcn_entry():
    """The DCN entry kernel in TensorRT's argument order, with the Triton DCN body bound."""
    global _DCN_BODY, _DCN_STRIDES
    if triton is None:
        raise RuntimeError("triton is not installed: the AOT plugin kernels cannot be compiled")
    if "dcn" not in _ENTRY_CACHE:
        from ...kernels.triton.deform_conv import _deform_conv2d_kernel

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


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT registration (unverified: no TensorRT available)

def register_plugin(trtp, ctx: PluginContext) -> None:
    """Register ``sschsr::ModulatedDeformConv2d`` (descriptor, autotune, AOT and JIT implementations)."""
    dtype_name, cc = ctx.dtype_name, ctx.cc
    dcn_id = EXPORT.plugin_id

    @trtp.register(dcn_id)
    def _dcn_desc(input: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
                  bias: trtp.TensorDesc, stride: npt.NDArray[np.int32], padding: npt.NDArray[np.int32],
                  dilation: npt.NDArray[np.int32], groups: int, offset_groups: int) -> trtp.TensorDesc:
        output_dtypes([dtype_name(t.dtype) for t in (input, offset, mask, weight, bias)])
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
        from ...kernels.triton import deform_conv2d_triton

        t = _torch_views(input, offset, mask, weight, bias, *outputs)
        with _on_stream(t[0].device, stream):
            y = deform_conv2d_triton(*t[:5], tuple(int(s) for s in stride), tuple(int(p) for p in padding),
                                     tuple(int(d) for d in dilation), int(groups), int(offset_groups))
            t[5].copy_(y)


EXPORT = OpExport(
    name=NAME, torch_op="modulated_deform_conv2d", schema=schema, translation=translation,
    reference_function=None,  # the custom-mode node is the standard DeformConv
    register_plugin=register_plugin, output_dtypes=output_dtypes, aot=True, source=__file__,
    kernel_sources=("deform_conv.py",),
)
