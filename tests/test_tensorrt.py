"""TensorRT engines: build from the exported tiny graph, parity against PyTorch, sidecar refusal, timing cache.

Needs TensorRT and a CUDA GPU; every test here is skipped cleanly without them (marker ``tensorrt``). Written
against the documented TensorRT Python API and unverified until a machine with TensorRT runs it.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

TILE = (128, 128)


@pytest.fixture(scope="module")
def tiny():
    from sschsr_deploy.engine.onnx import build_model

    return build_model("tiny", raft_iters=2, seed=0)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, tiny):
    from sschsr_deploy.engine.onnx import export_onnx

    d = tmp_path_factory.mktemp("trt")
    out = {}
    for precision, ops in (("fp32", "standard"), ("fp16", "standard"), ("fp32", "custom")):
        path = d / f"tiny_{precision}_{ops}.onnx"
        export_onnx(tiny, path, tile=TILE, batch_range=(1, 2), precision=precision, ops=ops, preset="tiny")
        out[(precision, ops)] = path
    return out


@pytest.mark.parametrize(
    "precision, ops, deform_conv",
    [("fp32", "standard", "stock"), ("fp32", "standard", "plugin"), ("fp16", "standard", "stock"),
     ("fp32", "custom", "plugin")],
)
def test_build_and_parity(onnx_files, tiny, tmp_path, precision, ops, deform_conv):
    from sschsr_deploy.engine.tensorrt import build_engine, engine_parity

    engine = tmp_path / "tiny.engine"
    result = build_engine(onnx_files[(precision, ops)], engine, deform_conv=deform_conv,
                          timing_cache=tmp_path / "trt.cache")
    assert engine.exists() and result.sidecar_path.exists()
    side = json.loads(result.sidecar_path.read_text())
    assert side["onnx"]["precision"] == precision and side["build"]["deform_conv"] == deform_conv
    for batch in (1, 2):
        parity = engine_parity(engine, tiny, batch=batch)
        print(f"\nTensorRT {precision}/{ops}/{deform_conv} batch {batch}: rel {parity['rel_l2']:.2e}")


def test_timing_cache_is_written_and_reused(onnx_files, tmp_path):
    from sschsr_deploy.engine.tensorrt import build_engine

    cache = tmp_path / "trt.cache"
    first = build_engine(onnx_files[("fp32", "standard")], tmp_path / "a.engine", timing_cache=cache)
    assert cache.exists() and cache.stat().st_size > 0
    second = build_engine(onnx_files[("fp32", "standard")], tmp_path / "b.engine", timing_cache=cache)
    print(f"\nbuild {first.build_seconds:.1f} s, with cache {second.build_seconds:.1f} s")


def test_load_refuses_tampered_engine_and_foreign_sidecar(onnx_files, tmp_path):
    from sschsr_deploy.engine.sidecar import EngineCompatibilityError, sidecar_path
    from sschsr_deploy.engine.tensorrt import build_engine, load_engine

    engine = tmp_path / "tiny.engine"
    build_engine(onnx_files[("fp32", "standard")], engine)
    load_engine(engine, expect={"precision": "fp32"})
    with pytest.raises(EngineCompatibilityError, match="expected 'fp16'"):
        load_engine(engine, expect={"precision": "fp16"})
    side = json.loads(sidecar_path(engine).read_text())
    side["compute_capability"] = "1.0"
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(EngineCompatibilityError, match="compute capability"):
        load_engine(engine)
    side["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    sidecar_path(engine).write_text(json.dumps(side))
    with open(engine, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(EngineCompatibilityError, match="engine file sha256"):
        load_engine(engine)
