"""Small valid model files for the fault tests (``test_faults_checkpoints.py``, ``test_faults_fuzz_models.py``): a
state dict saved as a zip-format and a legacy-format ``.pth`` and as ``.safetensors``, a tiny ONNX tile network that
the ONNX Runtime backend accepts, and an engine sidecar. Everything is built in the test's own directory."""

from __future__ import annotations

import json
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

TILE = 8
BANDS = 31


def small_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A few tensors of the kinds real checkpoints hold: conv weights, a view, batch-norm buffers, an int counter."""
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["conv.weight"] = torch.randn(8, 3, 3, 3, generator=g)
    sd["conv.bias"] = torch.randn(8, generator=g)
    sd["bn.running_mean"] = torch.randn(8, generator=g)
    sd["bn.running_var"] = torch.rand(8, generator=g) + 0.5
    sd["bn.num_batches_tracked"] = torch.tensor(12)
    sd["half"] = torch.randn(4, 4, generator=g).half()
    sd["view"] = sd["conv.weight"][1]
    return sd


def training_checkpoint(sd: OrderedDict[str, torch.Tensor]) -> dict:
    """The torchlight-style wrapper the official checkpoints come in (model + optimizer state + counters)."""
    return {"epoch": 3, "iteration": 120, "module": {"model": sd, "optimizer": {
        "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(8)}},
        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}}}


def save_pth(obj: object, path: Path, zip_format: bool = True) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def save_safetensors_file(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path), metadata=metadata or {"format": "pt"})
    return path


def rewrite_zip_record(src: Path, dst: Path, suffix: str, data: bytes) -> Path:
    """Copy a zip-format checkpoint, replacing the record whose name ends with ``suffix`` (e.g. ``data.pkl``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename.endswith(suffix) else zin.read(info.filename))
    return dst


def onnx_metadata(**overrides: str) -> dict[str, str]:
    meta = {"part": "tile", "preset": "tiny", "bands": str(BANDS), "scale": "4", "rgb_bands": "20,10,2",
            "batchnorm_mode": "running", "tile_height": str(TILE), "tile_width": str(TILE), "batch_min": "1",
            "batch_max": "2", "weights_sha256": "0" * 64, "weights_source": "test", "precision": "fp32",
            "ops": "standard", "opset": "17"}
    meta.update(overrides)
    return meta


def tiny_onnx(path: Path, bias: torch.Tensor | None = None, **meta: str) -> Path:
    """A five-input tile network (output = hsi_sr + bias) with the export metadata: the ORT backend loads it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sschsr_deploy.model import INPUT_NAMES

    inputs = [helper.make_tensor_value_info(INPUT_NAMES[0], TensorProto.FLOAT, ["batch", BANDS, TILE, TILE])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, TILE, TILE]) for n in INPUT_NAMES[1:]]
    out = helper.make_tensor_value_info("hsi_hr", TensorProto.FLOAT, ["batch", BANDS, TILE, TILE])
    b = (bias if bias is not None else torch.linspace(-0.1, 0.1, BANDS)).reshape(1, BANDS, 1, 1)
    init = numpy_helper.from_array(np.ascontiguousarray(b.numpy(), dtype=np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Add", [INPUT_NAMES[0], "bias"], ["hsi_hr"])], "tile", inputs, [out],
                              [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, onnx_metadata(**meta))
    onnx.save(model, str(path))
    return path


def engine_sidecar() -> dict:
    """A sidecar as build_engine writes it (the engine itself needs TensorRT, which is not installed)."""
    return {"format": 1, "created_utc": "2026-12-04T00:00:00Z", "onnx": onnx_metadata(), "onnx_sha256": "a" * 64,
            "engine_sha256": "b" * 64, "tensorrt_version": "10.0.0", "gpu_name": "NVIDIA H100",
            "compute_capability": "9.0", "plugins": {}, "build": {"batch_profiles": [[1, 2, 2]],
                                                                  "dims": {"height": [8, 8, 8], "width": [8, 8, 8]}}}


def write_engine(path: Path, payload: bytes = b"serialized engine bytes") -> Path:
    """An engine file and its sidecar (the sidecar's engine hash matches the payload)."""
    import hashlib

    path.write_bytes(payload)
    side = engine_sidecar()
    side["engine_sha256"] = hashlib.sha256(payload).hexdigest()
    path.with_name(path.name + ".json").write_text(json.dumps(side))
    return path
