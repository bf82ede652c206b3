"""One home per ``sschsr`` op's export rules: its ONNX schema and translations and its TensorRT plugin.

============================  =====================================  ==============================================
op (``sschsr::``, module)     inputs → outputs                        TensorRT plugin
============================  =====================================  ==============================================
``ModulatedDeformConv2d``     input, offset, mask, weight, bias → y   **AOT**: PTX of ``kernels/triton/deform_conv``
(:mod:`.deform_conv`)                                                 through an entry kernel; also JIT
``SpectralAttention``         q, k, v, temperature → out              JIT only (Python at run time)
(:mod:`.spectral_attention`)
``PatchMatch``                feat, ref_feat → index (int64), sim     JIT only (Python at run time)
(:mod:`.patch_match`)
============================  =====================================  ==============================================

Each module defines ``EXPORT``, an :class:`OpExport` (schema, translation per ops mode, reference function body,
plugin registration, AOT or not, sources); :data:`REGISTRY` lists them in plugin order. :mod:`sschsr_deploy.engine.onnx`
and :mod:`sschsr_deploy.engine.plugins` iterate over the registry; a new op is a new module here plus its line below.
Shared helpers are in :mod:`._shared`.
"""

from . import deform_conv, patch_match, spectral_attention
from ._shared import CUSTOM_DOMAIN, PLUGIN_NAMESPACE, OpExport, PluginContext

__all__ = ["CUSTOM_DOMAIN", "PLUGIN_NAMESPACE", "REGISTRY", "OpExport", "PluginContext", "by_name"]

REGISTRY: tuple[OpExport, ...] = (deform_conv.EXPORT, spectral_attention.EXPORT, patch_match.EXPORT)


def by_name(name: str) -> OpExport:
    """The registry entry of op type ``name``; ``ValueError`` for an unknown op."""
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown sschsr op {name!r}")
