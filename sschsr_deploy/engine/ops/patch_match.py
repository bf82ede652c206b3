"""Export rules of ``sschsr::PatchMatch`` (best cosine-matching reference patch per window; the torch op
``torch.ops.sschsr.patch_match``, kernel ``kernels/triton/patch_match.py``): its ONNX schema, its onnxscript
reference body (standard ops; the ``"standard"`` translation and the function attached for ONNX Runtime), its
``"custom"`` translation (one ``sschsr`` node, → ``(index int64, similarity)``) and its TensorRT plugin, **JIT only**.

No AOT implementation yet: the Triton implementation is several launches with torch glue between them
(normalisation and unfold → score/arg-max kernel), and an AOT plugin is one kernel. The plugin's JIT implementation
calls the Triton wrapper on TensorRT's stream, so engines containing it need Python, torch and triton at run time.

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
    _torch_views,
    plugin_schema_attributes,
    register_schema,
    script_opsets,
)

NAME = "PatchMatch"


# ---------------------------------------------------------------------------------------------------------------------
# ONNX

def schema():
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    return OpSchema(
        NAME, CUSTOM_DOMAIN, 1,
        doc="best cosine-matching reference patch for every input window (see ops/patch_match.py)",
        inputs=[fp("feat", "T"), fp("ref_feat", "T")],
        outputs=[fp("index", "I"), fp("similarity", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors"),
                          ("I", ["tensor(int64)"], "patch index")],
        attributes=[OpSchema.Attribute("patch_size", OpSchema.AttrType.INT, "patch size p"),
                    *plugin_schema_attributes()],
    )


@functools.cache
def _script() -> dict:
    import onnxscript

    register_schema(schema())
    op, custom, body_domain = script_opsets()

    @onnxscript.script(body_domain, default_opset=op)
    def PatchMatch(feat, ref_feat, patch_size: int):
        # per-pixel L2 normalisation (norm clamped at 1e-12)
        eps_px = op.CastLike(op.Constant(value_float=1e-12), feat)
        eps_patch = op.CastLike(op.Constant(value_float=1e-5), feat)
        ch_axis = op.Constant(value_ints=[1])
        fi = op.Div(feat, op.Max(op.ReduceL2(feat, ch_axis, keepdims=1), eps_px))
        fr = op.Div(ref_feat, op.Max(op.ReduceL2(ref_feat, ch_axis, keepdims=1), eps_px))
        shape = op.Shape(feat)
        b = op.Slice(shape, [0], [1])
        c = op.Slice(shape, [1], [2])
        h = op.Slice(shape, [2], [3])
        w = op.Slice(shape, [3], [4])
        p = op.Reshape(op.Constant(value_int=patch_size), op.Constant(value_ints=[1]))
        one = op.Constant(value_ints=[1])
        hp = op.Add(op.Sub(h, p), one)
        wp = op.Add(op.Sub(w, p), one)
        # unfold p×p windows by a gather: index (tap, position) into the flattened h·w pixels
        zero = op.Constant(value_int=0)
        step = op.Constant(value_int=1)
        ys = op.Range(zero, op.Squeeze(hp), step)
        xs = op.Range(zero, op.Squeeze(wp), step)
        taps = op.Range(zero, op.Squeeze(op.Mul(p, p)), step)
        ti = op.Div(taps, op.Squeeze(p))
        tj = op.Mod(taps, op.Squeeze(p))
        tap_off = op.Add(op.Mul(ti, op.Squeeze(w)), tj)  # (p·p,)
        pos = op.Reshape(
            op.Add(op.Unsqueeze(op.Mul(ys, op.Squeeze(w)), [1]), op.Unsqueeze(xs, [0])), op.Constant(value_ints=[-1])
        )  # (P,), row-major over (y, x)
        idx = op.Add(op.Unsqueeze(tap_off, [1]), op.Unsqueeze(pos, [0]))  # (p·p, P)
        flat = op.Concat(b, c, op.Constant(value_ints=[-1]), axis=0)
        cols = op.Concat(b, op.Constant(value_ints=[-1]), op.Reshape(op.Mul(hp, wp), [1]), axis=0)
        win = op.Reshape(op.Gather(op.Reshape(fi, flat), idx, axis=2), cols)  # (B, C·p·p, P), c major
        pat = op.Reshape(op.Gather(op.Reshape(fr, flat), idx, axis=2), cols)  # (B, C·p·p, N)
        pat = op.Div(pat, op.Add(op.ReduceL2(pat, ch_axis, keepdims=1), eps_patch))
        win_norm = op.Add(op.ReduceL2(win, ch_axis, keepdims=0), eps_patch)  # (B, P)
        scores = op.MatMul(op.Transpose(pat, perm=[0, 2, 1]), win)  # (B, N, P)
        best = op.ReduceMax(scores, ch_axis, keepdims=0)
        index = op.ArgMax(scores, axis=1, keepdims=0, select_last_index=0)  # ties -> lowest patch index
        out_shape = op.Concat(b, hp, wp, axis=0)
        return op.Reshape(index, out_shape), op.Reshape(op.Div(best, win_norm), out_shape)

    def patch_match_standard(feat, ref_feat, patch_size):
        return PatchMatch.function(feat, ref_feat, int(patch_size))

    def patch_match_custom(feat, ref_feat, patch_size):
        return custom.PatchMatch(feat, ref_feat, patch_size=int(patch_size))

    return {"function": PatchMatch, "standard": patch_match_standard, "custom": patch_match_custom}


def translation(ops: str):
    return _script()[ops]


def reference_function():
    return _script()["function"]


# ---------------------------------------------------------------------------------------------------------------------
# shape / type logic

def patch_match_output_shapes(feat_shape: Sequence, patch_size: int) -> tuple[tuple, tuple]:
    """(index shape, similarity shape) = (B, h−p+1, w−p+1) twice."""
    b, _, h, w = feat_shape
    p = int(patch_size)
    shape = (b, h + (1 - p), w + (1 - p))
    return shape, shape


def output_dtypes(input_dtypes: Sequence[str]) -> list[str]:
    if len(set(input_dtypes)) != 1 or input_dtypes[0] not in FLOATS:
        raise ValueError(f"PatchMatch: feat and ref_feat must share one float dtype, got {list(input_dtypes)}")
    return ["int64", input_dtypes[0]]


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT registration (JIT; unverified: no TensorRT available)

def register_plugin(trtp, ctx: PluginContext) -> None:
    """Register ``sschsr::PatchMatch`` (descriptor, autotune, JIT implementation)."""
    dtype_name, trt_dtype = ctx.dtype_name, ctx.trt_dtype
    pm_id = EXPORT.plugin_id

    @trtp.register(pm_id)
    def _pm_desc(feat: trtp.TensorDesc, ref_feat: trtp.TensorDesc,
                 patch_size: int) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        dts = output_dtypes([dtype_name(feat.dtype), dtype_name(ref_feat.dtype)])
        idx_shape, sim_shape = patch_match_output_shapes(tuple(feat.shape_expr), patch_size)
        return (trtp.from_shape_expr(idx_shape, dtype=trt_dtype(dts[0])),
                trtp.from_shape_expr(sim_shape, dtype=trt_dtype(dts[1])))

    @trtp.autotune(pm_id)
    def _pm_autotune(feat, ref_feat, outputs) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, INT64, FP32|FP16")]

    @trtp.impl(pm_id)
    def _pm_impl(feat, ref_feat, patch_size, outputs, stream) -> None:
        from ...kernels.triton import patch_match_triton

        f, r, idx_out, sim_out = _torch_views(feat, ref_feat, *outputs)
        with _on_stream(f.device, stream):
            idx, sim = patch_match_triton(f, r, int(patch_size))
            idx_out.copy_(idx)
            sim_out.copy_(sim)


EXPORT = OpExport(
    name=NAME, torch_op="patch_match", schema=schema, translation=translation,
    reference_function=reference_function, register_plugin=register_plugin, output_dtypes=output_dtypes, aot=False,
    source=__file__, kernel_sources=("patch_match.py",),
)
