"""Triton kernels of the three heavy operators (the ``triton`` backend of :mod:`sschsr_deploy.ops`).

Each function takes and returns torch tensors with the semantics of the op's plain-PyTorch reference. The kernels are
defined at import: to run them on CPU tensors through the Triton interpreter, set ``TRITON_INTERPRET=1`` *before*
importing this package. Tested on the CPU interpreter only; unverified on GPU hardware. Written for triton 3.6–3.8.
"""

from .deform_conv import deform_conv2d_triton
from .patch_match import patch_match_triton
from .spectral_attention import attention_apply_triton, gram_and_norms_triton, spectral_attention_triton

__all__ = [
    "attention_apply_triton",
    "deform_conv2d_triton",
    "gram_and_norms_triton",
    "patch_match_triton",
    "spectral_attention_triton",
]
