"""Tiled inference runtime: tile planner, blender, backends, GPU stream executor and the pipeline that joins them.

Typical use::

    from sschsr_deploy.runtime import Pipeline, load_model

    model, info = load_model("tiny-x4")                 # or a .safetensors / official .pth file
    pipe = Pipeline(model, device="cuda", tile=256, batch=4, model_info=info)
    hr = pipe.run(lr_hwc, rgb_hwc)                      # numpy H x W x C in, numpy out; the model's scale
    pipe.run_files("lr.mat", "rgb.png", None, "hr.npy")  # lazy read, streamed atomic write + hr.npy.json
"""

from ..scene import REF_SIZE_TOLERANCE, PreparedScene, match_reference_size
from ..weights import load_model
from .backends import BACKENDS, Backend, TorchBackend, create_backend, state_dict_sha256
from .blender import StreamingBlender, blend
from .pipeline import Pipeline
from .planner import (
    DEFAULT_MARGIN,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    TilePlan,
    Window,
    axis_weights,
    choose_tile,
    estimate_forward_bytes,
    padded_size,
    plan_tiles,
)
from .streams import HostBatch, TileExecutor

__all__ = [
    "BACKENDS",
    "DEFAULT_MARGIN",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "REF_SIZE_TOLERANCE",
    "Backend",
    "HostBatch",
    "Pipeline",
    "PreparedScene",
    "StreamingBlender",
    "TileExecutor",
    "TilePlan",
    "TorchBackend",
    "Window",
    "axis_weights",
    "blend",
    "choose_tile",
    "create_backend",
    "estimate_forward_bytes",
    "load_model",
    "match_reference_size",
    "padded_size",
    "plan_tiles",
    "state_dict_sha256",
]
