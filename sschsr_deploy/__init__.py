"""sschsr-deploy: production deployment of SSC-HSR (unaligned-RGB-guided hyperspectral super-resolution).

``import sschsr_deploy`` registers the custom operators (``torch.ops.sschsr.*``), as ``import torchvision`` does for
its own, so exported programs and scripted code that name them load. The entry points::

    from sschsr_deploy import Pipeline
    pipe = Pipeline.from_pretrained("tiny-x4", device="cpu", tile=256)   # or a .safetensors / .pth / .onnx file
    hr = pipe.run(lr_hwc, rgb_hwc)                                       # numpy in, numpy out (torch in, torch out)

``Pipeline`` and ``load_model`` are imported on first use (the runtime pulls in the I/O stack).
"""

from typing import Any

from . import ops  # noqa: F401 - registers torch.ops.sschsr.* (reference, native and Triton implementations)
from ._version import __version__

__all__ = ["Pipeline", "__version__", "load_model", "ops"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from .runtime.pipeline import Pipeline

        return Pipeline
    if name == "load_model":
        from .weights import load_model

        return load_model
    raise AttributeError(f"module 'sschsr_deploy' has no attribute {name!r}")
