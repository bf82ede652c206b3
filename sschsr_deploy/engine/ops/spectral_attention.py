"""Export rules of ``sschsr::SpectralAttention`` (channel attention per head; the torch op
``torch.ops.sschsr.spectral_attention``, kernel ``kernels/triton/spectral_attention.py``): its ONNX schema, its
onnxscript reference body (standard ops; the ``"standard"`` translation and the function attached for ONNX Runtime),
its ``"custom"`` translation (one ``sschsr`` node) and its TensorRT plugin, **JIT only**.

No AOT implementation yet: the Triton implementation is several launches with torch glue between them (Gram + norms →
softmax on the c×c matrix → A·V), and an AOT plugin is one kernel. The plugin's JIT implementation calls the Triton
wrapper on TensorRT's stream, so engines containing it need Python, torch and triton at run time. A single fused
kernel (requested from the kernels work) turns it into an AOT plugin the same way as the DCN.

No ``from __future__ import annotations`` here (see :mod:`sschsr_deploy.engine.plugins`).
"""

import functools
from collections.abc import Sequence

from ._shared import (
    CUSTOM_DOMAIN,
    FLOATS,
    OpExport,
    PluginContext,
    _on_stream,
    _static,
    _torch_views,
    plugin_schema_attributes,
    register_schema,
    script_opsets,
)

NAME = "SpectralAttention"


# ---------------------------------------------------------------------------------------------------------------------
# ONNX

def schema():
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    return OpSchema(
        NAME, CUSTOM_DOMAIN, 1,
        doc="softmax((q̂ k̂ᵀ)·τ) v per head (channel attention); q̂, k̂: channel rows divided by max(‖·‖₂, 1e-12)",
        inputs=[fp("q", "T"), fp("k", "T"), fp("v", "T"), fp("temperature", "T")],
        outputs=[fp("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[OpSchema.Attribute("heads", OpSchema.AttrType.INT, "number of heads"),
                    *plugin_schema_attributes()],
    )


@functools.cache
def _script() -> dict:
    import onnxscript

    register_schema(schema())
    op, custom, body_domain = script_opsets()

    @onnxscript.script(body_domain, default_opset=op)
    def SpectralAttention(q, k, v, temperature, heads: int):
        shape = op.Shape(q)
        b = op.Slice(shape, [0], [1])
        c = op.Slice(shape, [1], [2])
        hd = op.Reshape(op.Constant(value_int=heads), op.Constant(value_ints=[1]))
        per_head = op.Concat(b, hd, op.Div(c, hd), op.Constant(value_ints=[-1]), axis=0)
        qh = op.Reshape(q, per_head)
        kh = op.Reshape(k, per_head)
        eps = op.CastLike(op.Constant(value_float=1e-12), q)
        qn = op.Div(qh, op.Max(op.ReduceL2(qh, op.Constant(value_ints=[-1]), keepdims=1), eps))
        kn = op.Div(kh, op.Max(op.ReduceL2(kh, op.Constant(value_ints=[-1]), keepdims=1), eps))
        tau = op.Reshape(temperature, op.Constant(value_ints=[1, -1, 1, 1]))
        attn = op.Softmax(op.Mul(op.MatMul(qn, op.Transpose(kn, perm=[0, 1, 3, 2])), tau), axis=-1)
        out = op.MatMul(attn, op.Reshape(v, per_head))
        return op.Reshape(out, shape)

    def attention_standard(q, k, v, temperature, heads):
        return SpectralAttention.function(q, k, v, temperature, int(heads))

    def attention_custom(q, k, v, temperature, heads):
        return custom.SpectralAttention(q, k, v, temperature, heads=int(heads))

    return {"function": SpectralAttention, "standard": attention_standard, "custom": attention_custom}


def translation(ops: str):
    return _script()[ops]


def reference_function():
    return _script()["function"]


# ---------------------------------------------------------------------------------------------------------------------
# shape / type logic

def spectral_attention_output_shape(q_shape: Sequence, heads: int) -> tuple:
    """Spectral attention keeps q's shape; channels must split evenly over the heads (checked when constant)."""
    c = _static(q_shape[1], "the channel count", required=False)
    if c is not None and c % int(heads):
        raise ValueError(f"spectral attention: {c} channels are not divisible by {heads} heads")
    return tuple(q_shape)


def output_dtypes(input_dtypes: Sequence[str]) -> list[str]:
    if len(set(input_dtypes)) != 1 or input_dtypes[0] not in FLOATS:
        raise ValueError(f"SpectralAttention: q, k, v, temperature must share one float dtype, got "
                         f"{list(input_dtypes)}")
    return [input_dtypes[0]]


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT registration (JIT; unverified: no TensorRT available)

def register_plugin(trtp, ctx: PluginContext) -> None:
    """Register ``sschsr::SpectralAttention`` (descriptor, autotune, JIT implementation)."""
    dtype_name = ctx.dtype_name
    sa_id = EXPORT.plugin_id

    @trtp.register(sa_id)
    def _sa_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, temperature: trtp.TensorDesc,
                 heads: int) -> trtp.TensorDesc:
        output_dtypes([dtype_name(t.dtype) for t in (q, k, v, temperature)])
        spectral_attention_output_shape(tuple(q.shape_expr), heads)
        return q.like()

    @trtp.autotune(sa_id)
    def _sa_autotune(q, k, v, temperature, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16")]

    @trtp.impl(sa_id)
    def _sa_impl(q, k, v, temperature, heads, outputs, stream) -> None:
        from ...kernels.triton import spectral_attention_triton

        t = _torch_views(q, k, v, temperature, *outputs)
        with _on_stream(t[0].device, stream):
            t[4].copy_(spectral_attention_triton(*t[:4], int(heads)))


EXPORT = OpExport(
    name=NAME, torch_op="spectral_attention", schema=schema, translation=translation,
    reference_function=reference_function, register_plugin=register_plugin, output_dtypes=output_dtypes, aot=False,
    source=__file__, kernel_sources=("spectral_attention.py",),
)
