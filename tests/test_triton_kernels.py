"""Triton kernel infrastructure shared by the three ops: the interpreter still works when triton was imported
before ``TRITON_INTERPRET`` was set, and the int32 extent guard. The per-op kernel checks are in
``test_<op>_triton.py``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton_checks  # noqa: F401 - sets TRITON_INTERPRET (no GPU) before any kernel is imported

from sschsr_deploy.errors import InputValidationError


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter")
def test_interpreter_works_when_triton_was_imported_first():
    # torch._dynamo (hence torchvision, torch.compile) imports triton; if that happens before TRITON_INTERPRET is set,
    # triton's own @jit library (tl.sum, tl.zeros, ...) stays compiled-only and kernels calling it fail. Ours avoid it.
    code = (
        "import os, triton, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from sschsr_deploy.kernels.triton import deform_conv2d_triton, patch_match_triton, spectral_attention_triton\n"
        "from sschsr_deploy.ops import modulated_deform_conv2d_reference, patch_match_reference, "
        "spectral_attention_reference\n"
        "torch.manual_seed(0)\n"
        "x, w, off = torch.randn(1, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(1, 18, 6, 6)\n"
        "d = deform_conv2d_triton(x, off, None, w, None, 1, 1, 1, 1, 1)\n"
        "assert torch.allclose(d, modulated_deform_conv2d_reference(x, off, None, w, None, 1, 1), atol=1e-4)\n"
        "q = torch.randn(1, 4, 5, 5)\n"
        "a = spectral_attention_triton(q, q * 2, q + 1, torch.ones(2), 2)\n"
        "assert torch.allclose(a, spectral_attention_reference(q, q * 2, q + 1, torch.ones(2), 2), atol=1e-5)\n"
        "i, s = patch_match_triton(q, q.flip(3))\n"
        "assert torch.equal(i, patch_match_reference(q, q.flip(3))[0])\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_int32_extent_guard():
    # per-sample offsets are int32 in the kernels: a larger sample must be refused, not silently wrapped
    from sschsr_deploy.kernels import check_int32_extent

    check_int32_extent("op", torch.empty(4, 2**15, 2**15, 1, device="meta"))  # 2**30 elements: fine
    with pytest.raises(InputValidationError, match="int32"):
        check_int32_extent("op", torch.empty(1, 2**16, 2**16, 2, device="meta"))
