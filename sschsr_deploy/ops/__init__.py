"""The three heavy operators of SSC-HSR, each behind one function the model calls.

Each module holds the operator's plain-PyTorch reference (the ground truth for every kernel) and the dispatching entry
point the network uses; custom C++/CUDA/Triton kernels plug in behind these entry points.
"""

from .deform_conv import modulated_deform_conv2d, modulated_deform_conv2d_reference
from .patch_match import patch_match, patch_match_reference
from .spectral_attention import (
    attention_from_stats,
    gram_and_norms,
    gram_and_norms_reference,
    spectral_attention,
    spectral_attention_reference,
)

__all__ = [
    "attention_from_stats",
    "gram_and_norms",
    "gram_and_norms_reference",
    "modulated_deform_conv2d",
    "modulated_deform_conv2d_reference",
    "patch_match",
    "patch_match_reference",
    "spectral_attention",
    "spectral_attention_reference",
]
