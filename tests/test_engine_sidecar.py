"""Engine sidecar: atomic writes, round trip, and the compatibility check refusing every kind of mismatch.

Also the TensorRT-free parts of the engine builder (optimisation profile shapes, the missing-TensorRT error).
"""

from __future__ import annotations

import json
import os

import pytest

from sschsr_deploy.engine import sidecar as sc
from sschsr_deploy.engine.sidecar import EngineCompatibilityError, SystemInfo

PLUGINS = {"sschsr::ModulatedDeformConv2d": "a" * 64}
SYSTEM = SystemInfo("10.15.1", "NVIDIA H100 80GB HBM3", "9.0", PLUGINS)
META = {"preset": "tiny", "precision": "fp32", "tile_height": "128", "tile_width": "128", "batch_max": "8"}


def _sidecar(engine_sha="e" * 64, system=SYSTEM):
    return sc.make_sidecar(onnx_metadata=META, onnx_sha256="o" * 64, engine_sha256=engine_sha, system=system,
                           build={"workspace_bytes": 1 << 30})


def test_round_trip_and_atomic_write(tmp_path):
    engine = tmp_path / "m.engine"
    sc.atomic_write_bytes(engine, b"ENGINE")
    side = sc.write_sidecar(engine, _sidecar(sc.sha256_file(engine)))
    assert side == tmp_path / "m.engine.json"
    data = sc.read_sidecar(engine)
    assert data["onnx"] == META and data["tensorrt_version"] == "10.15.1" and data["plugins"] == PLUGINS
    assert data["engine_sha256"] == sc.sha256_bytes(b"ENGINE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]  # no temp files left
    sc.check_compatible(data, SYSTEM, engine_sha256=sc.sha256_file(engine), expect={"precision": "fp32"})


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    sc.atomic_write_json(target, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        sc.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    "system, needle",
    [
        (SystemInfo("10.15.1", "NVIDIA L40S", "8.9", PLUGINS), "compute capability 9.0"),
        (SystemInfo("10.15.1", "NVIDIA H200", "9.0", PLUGINS), "GPU 'NVIDIA H100 80GB HBM3'"),
        (SystemInfo("11.0.0", "NVIDIA H100 80GB HBM3", "9.0", PLUGINS), "TensorRT 10.15.1"),
        (SystemInfo("10.15.1", "NVIDIA H100 80GB HBM3", "9.0", {"sschsr::ModulatedDeformConv2d": "b" * 64}),
         "plugin 'sschsr::ModulatedDeformConv2d' differs"),
        (SystemInfo("10.15.1", "NVIDIA H100 80GB HBM3", "9.0", {}), "is not available here"),
    ],
)
def test_refuses_mismatch(system, needle):
    with pytest.raises(EngineCompatibilityError, match="rebuild it here") as info:
        sc.check_compatible(_sidecar(), system)
    assert needle in str(info.value)


def test_refuses_everything_at_once_and_engine_hash_and_expectation():
    other = SystemInfo("11.0.0", "NVIDIA A100", "8.0", {})
    with pytest.raises(EngineCompatibilityError) as info:
        sc.check_compatible(_sidecar(), other, engine_sha256="f" * 64, expect={"precision": "fp16"})
    msg = str(info.value)
    for needle in ("TensorRT 11.0.0", "this GPU is 8.0", "NVIDIA A100", "not available", "engine file sha256",
                   "precision is 'fp32', expected 'fp16'"):
        assert needle in msg


def test_accepts_identical_system():
    sc.check_compatible(_sidecar(), SystemInfo("10.15.1", "NVIDIA H100 80GB HBM3", "9.0", dict(PLUGINS)))


def test_missing_or_broken_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(EngineCompatibilityError, match="missing"):
        sc.read_sidecar(engine)
    sc.sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineCompatibilityError, match="not a readable JSON"):
        sc.read_sidecar(engine)
    sc.sidecar_path(engine).write_text(json.dumps({"format": 99}))
    with pytest.raises(EngineCompatibilityError, match="sidecar format 99"):
        sc.check_compatible(sc.read_sidecar(engine), SYSTEM)


def test_system_current_without_tensorrt():
    from sschsr_deploy.engine.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EngineCompatibilityError, match="TensorRT is not installed"):
        SystemInfo.current()


# ---- TensorRT-free parts of engine/tensorrt.py ---------------------------------------------------------------------

def test_profile_shapes():
    from sschsr_deploy.engine.tensorrt import profile_shapes

    inputs = [("hsi_sr", ["batch", 31, 128, 128]), ("ref_hr", ["batch", 3, 128, 128])]
    shapes = profile_shapes(inputs, (1, 4, 8))
    assert shapes["hsi_sr"] == ((1, 31, 128, 128), (4, 31, 128, 128), (8, 31, 128, 128))
    assert shapes["ref_hr"][2] == (8, 3, 128, 128)
    dyn = profile_shapes([("x", ["batch", 3, "height", "width"])], (1, 1, 2),
                         {"height": (128, 256, 512), "width": (128, 128, 256)})
    assert dyn["x"] == ((1, 3, 128, 128), (1, 3, 256, 128), (2, 3, 512, 256))
    with pytest.raises(ValueError, match="no range"):
        profile_shapes([("x", ["batch", 3, "height", 8])], (1, 1, 1))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_shapes(inputs, (4, 2, 8))


def test_tile_dims_from_metadata():
    from sschsr_deploy.engine.tensorrt import _tile_dims

    assert _tile_dims({"dynamic_tile": "False", "tile_min": "128x128", "tile_max": "128x128"}) == {}
    meta = {"dynamic_tile": "True", "tile_min": "128x160", "tile_max": "512x384", "tile_height": "256",
            "tile_width": "256"}
    assert _tile_dims(meta) == {"height": (128, 256, 512), "width": (160, 256, 384)}


def test_missing_tensorrt_error_is_clear():
    from sschsr_deploy.engine.tensorrt import TensorRTUnavailableError, require_tensorrt, tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        require_tensorrt()


def test_build_engine_script_fails_cleanly_without_tensorrt(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from sschsr_deploy.engine.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    script = Path(__file__).resolve().parents[1] / "export" / "build_engine.py"
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    proc = subprocess.run([sys.executable, str(script), str(onnx_file), "--out", str(tmp_path / "m.engine")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TensorRT is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr
