"""Shared by the Triton kernel tests (``test_<op>_triton.py``): the interpreter switch, input makers, the fp64
reference runner, tolerances, and the base class whose checks run on the CPU interpreter or on a GPU.

On a machine without CUDA the kernels run on CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1``, set
below before the kernels are imported). On a CUDA machine the variable defaults to 0, the kernels are compiled and the
``...GPU`` test classes run the same checks on CUDA tensors (bf16 included). References are evaluated on the CPU in
fp64, so TF32 or reduced-precision library paths never leak into the ground truth.

Tolerances (relative error ‖out − ref‖ / ‖ref‖): fp32 1e-5 (tl.dot is exact fp32 under the interpreter and
``input_precision="ieee"`` on a GPU); fp16 3e-3 and bf16 2e-2 (inputs are rounded to the dtype before the reference
sees them, so the bound covers the kernel's own roundings: operands of tl.dot and the output).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' definition (their import)

import pytest  # noqa: E402

from sschsr_deploy.kernels.triton import deform_conv as _dcn_module  # noqa: E402

INTERPRETED = _dcn_module._INTERPRET  # how the kernels were defined in this process (first import wins)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().cpu().double()
    ref = ref.detach().cpu().double()
    return ((out - ref).norm() / ref.norm()).item()


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def rand(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def _ref64(fn, *args, **kwargs):
    """Run a reference on CPU fp64 copies of its tensor arguments."""
    conv = [a.detach().cpu().double() if isinstance(a, torch.Tensor) else a for a in args]
    return fn(*conv, **kwargs)


# deform conv cases:
# (B, C, H, W, O, (kh, kw), stride, padding, dilation, groups, offset_groups, has mask, has bias, offset scale)
DCN_CASES = {
    "3x3_og2_bias_mask": (2, 8, 9, 11, 6, (3, 3), 1, 1, 1, 1, 2, True, True, 2.5),
    "many_blocks": (1, 8, 13, 13, 36, (3, 3), 1, 1, 1, 1, 8, True, False, 1.0),
    "rect_kernel_strided_dilated": (2, 8, 10, 9, 4, (2, 3), (2, 1), (1, 2), (2, 1), 2, 4, False, False, 1.5),
    "groups4_1x1": (2, 8, 6, 7, 8, (1, 1), 1, 0, 1, 4, 4, True, True, 0.7),
    "odd_channels": (3, 5, 7, 6, 3, (3, 3), 1, 0, 1, 1, 1, True, True, 1.0),
    "offsets_mostly_outside": (1, 4, 6, 6, 4, (3, 3), 1, 1, 1, 1, 2, True, True, 12.0),
}


def _dcn_inputs(case, seed=0):
    b, c, h, w, o, (kh, kw), stride, padding, dilation, groups, og, has_mask, has_bias, scale = case
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    x = randn(b, c, h, w, seed=seed)
    off = randn(b, 2 * og * kh * kw, ho, wo, seed=seed + 1, scale=scale)
    mask = rand(b, og * kh * kw, ho, wo, seed=seed + 2) if has_mask else None
    weight = randn(o, c // groups, kh, kw, seed=seed + 3, scale=0.3)
    bias = randn(o, seed=seed + 4) if has_bias else None
    return x, off, mask, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                            offset_groups=og)


class KernelChecks:
    """Base of the per-op check classes; subclasses choose the device."""

    device = "cpu"

    def _dtype(self, name: str) -> torch.dtype:
        if name == "bf16" and self.device == "cpu":
            pytest.skip("bf16 is not supported by the Triton interpreter")
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            pytest.skip("this GPU has no bf16")
        return DTYPES[name]

    def _to(self, t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.to(device=self.device, dtype=dtype or t.dtype)
