"""Runtime backends: ONNX Runtime through the pipeline against the torch backend, what an exported model fixes (tile,
batch, bands), refusals (custom ops, wrong bands, missing / corrupt files), the CLI's ``infer --engine``, and TensorRT
(unavailable here: a clean error; the real runs are marked ``tensorrt`` and skip without it).

One export of the tiny network (128x128 fixed tile, dynamic batch 1..2, one RAFT iteration) is shared by the module.
The export's own parity check is skipped here (``tests/test_export_onnx.py`` covers it): the pipeline comparison
below is this module's parity check, and skipping it keeps the module within about a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from sschsr_deploy.cli import main  # noqa: E402
from sschsr_deploy.data import make_scene  # noqa: E402
from sschsr_deploy.engine import onnx as ex  # noqa: E402
from sschsr_deploy.errors import InputValidationError, SSCHSRError  # noqa: E402
from sschsr_deploy.io import load_hsi, write_hsi, write_rgb  # noqa: E402
from sschsr_deploy.model import get_preset  # noqa: E402
from sschsr_deploy.runtime import Backend, Pipeline, create_backend  # noqa: E402
from sschsr_deploy.runtime.backends import BACKENDS, ExportSpec, backend_for_path  # noqa: E402
from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend  # noqa: E402
from sschsr_deploy.runtime.planner import estimate_forward_bytes  # noqa: E402

TILE = 128
HAS_TRT = __import__("importlib.util").util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def tiny():
    return ex.build_model("tiny", raft_iters=1, seed=0)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("ort") / "tiny_128.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "check_onnx", lambda *a, **k: None)  # see the module docstring
        ex.export_onnx(tiny, path, tile=(TILE, TILE), batch_range=(1, 2), preset="tiny",
                       extra_metadata={"weights_source": "random:seed=0"})
    return path


@pytest.fixture(scope="module")
def ort_backend(onnx_path):
    return OnnxRuntimeBackend(onnx_path, "cpu", threads=2)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=3, size=(128, 192), scale=4)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _tampered(onnx_path, tmp_path, name, edit):
    model = onnx.load(str(onnx_path))
    edit(model)
    out = tmp_path / name
    onnx.save(model, str(out))
    return out


# ---- ONNX Runtime through the pipeline ----------------------------------------------------------------------------

def test_onnxruntime_pipeline_matches_torch(onnx_path, tiny, scene):
    ort_pipe = Pipeline(onnx_path, backend="onnxruntime", batch=3, quiet=True, output_scale="unit",
                        backend_options={"threads": 2})
    assert ort_pipe.tile == TILE  # the export's fixed tile, not the default 256
    assert ort_pipe._effective_batch() == 2  # capped at the export's batch_max
    got = ort_pipe.run(scene.lr_hsi, scene.ref_rgb, 4)
    want = Pipeline(tiny, tile=TILE, batch=2, quiet=True, output_scale="unit").run(scene.lr_hsi, scene.ref_rgb, 4)
    assert len(ort_pipe.last_plan) == 2 and got.shape == want.shape == (128, 192, 31)
    rel = _rel(got, want)
    # measured 2.5e-7 (max |d| 3.3e-7) on 2 CPU cores, onnxruntime 1.31.1 CPU, torch 2.14.1 native ops
    assert rel < 1e-4, rel
    print(f"\nonnxruntime vs torch through the pipeline: rel L2 {rel:.2e}, max |d| {np.abs(got - want).max():.2e}")


def test_backend_reads_the_export(ort_backend, onnx_path, tiny):
    b = ort_backend
    assert b.bands == 31 and b.tile_bounds == ((TILE, TILE), (TILE, TILE)) and b.preferred_tile == (TILE, TILE)
    assert b.max_batch == 2 and b.batch_independent and b.providers == ["CPUExecutionProvider"]
    assert b.config is not None and b.config.rgb_bands == (15, 8, 3)
    d = b.describe()
    assert d["backend"] == "onnxruntime" and d["providers"] == ["CPUExecutionProvider"]
    assert d["model_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert d["weights_sha256"] == ex.state_dict_sha256(tiny) and d["precision"] == "fp32" and d["ops"] == "standard"
    info = b.model_info()
    assert info["preset"] == "tiny" and info["random_weights"] is True and info["weights_sha256"] == d["weights_sha256"]
    # a batch below / above the export's bounds and a wrong window size, called directly
    xs = ex.example_inputs(31, 3, (TILE, TILE), seed=4)
    assert b.run(*xs).shape == (3, 31, TILE, TILE)  # split into 2 + 1
    with pytest.raises(InputValidationError, match="runs 128x128 windows only"):
        b.run(*ex.example_inputs(31, 1, (136, 128), seed=4))


def test_fixed_tile_is_forced_or_refused(ort_backend):
    assert Pipeline(ort_backend, tile="auto", quiet=True).tile == TILE
    assert Pipeline(ort_backend, tile=TILE, quiet=True).tile == TILE
    with pytest.raises(InputValidationError, match="tile 256x256 does not fit the onnxruntime model"):
        Pipeline(ort_backend, tile=256, quiet=True)
    with pytest.raises(InputValidationError, match="whole-image mode"):
        Pipeline(ort_backend, tile=None, quiet=True)
    with pytest.raises(InputValidationError, match="compile=True applies to the torch backend only"):
        Pipeline("x.onnx", backend="onnxruntime", compile=True)


def test_onnxruntime_output_sidecar_and_cli(onnx_path, tmp_path, capsys):
    small = make_scene(seed=4, size=(128, 128), scale=4)
    write_hsi(tmp_path / "lr.npy", small.lr_hsi)
    write_rgb(tmp_path / "ref.png", small.ref_rgb)
    out = tmp_path / "out.npy"
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(out), "--engine", str(onnx_path), "--quiet"])  # backend from the .onnx suffix
    assert rc == 0, capsys.readouterr().err
    hr = load_hsi(out)
    assert hr.shape == (128, 128, 31) and np.isfinite(hr).all()
    meta = json.loads((tmp_path / "out.npy.json").read_text())
    assert meta["backend"]["backend"] == "onnxruntime" and meta["backend"]["providers"] == ["CPUExecutionProvider"]
    assert meta["backend"]["model_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert meta["model"]["preset"] == "tiny" and meta["model"]["random_weights"] is True
    assert meta["model"]["weights_sha256"] == meta["backend"]["weights_sha256"]
    assert meta["tiling"]["tile"] == TILE and meta["tiling"]["plan"]["whole_image"] is True
    assert "RANDOM WEIGHTS" in capsys.readouterr().err  # the export's metadata says so


# ---- refusals -----------------------------------------------------------------------------------------------------

def test_wrong_band_count(ort_backend, onnx_path, scene, tmp_path):
    with pytest.raises(InputValidationError, match="has 20 bands but the model expects 31"):
        Pipeline(ort_backend, quiet=True).run(scene.lr_hsi[..., :20], scene.ref_rgb, 4)
    bad = _tampered(onnx_path, tmp_path, "bands.onnx",
                    lambda m: onnx.helper.set_model_props(m, {**ex.read_metadata(m), "bands": "20"}))
    with pytest.raises(InputValidationError, match="takes 31 bands but its metadata says 20"):
        OnnxRuntimeBackend(bad)
    flow = _tampered(onnx_path, tmp_path, "flow.onnx",
                     lambda m: onnx.helper.set_model_props(m, {**ex.read_metadata(m), "part": "flow"}))
    with pytest.raises(InputValidationError, match="part='tile'"):
        OnnxRuntimeBackend(flow)


def test_custom_op_graph_is_refused(onnx_path, tmp_path):
    def to_custom(m):  # what an ops="custom" export looks like: sschsr-domain nodes without function bodies
        node = next(n for n in m.graph.node if n.op_type == "ArgMax")
        node.domain, node.op_type = "sschsr", "PatchMatch"
        m.opset_import.append(onnx.helper.make_opsetid("sschsr", 1))

    custom = _tampered(onnx_path, tmp_path, "custom.onnx", to_custom)
    with pytest.raises(InputValidationError, match=r"sschsr custom-op nodes \(PatchMatch.*--ops standard"):
        OnnxRuntimeBackend(custom)


def test_missing_and_corrupt_files(onnx_path, tmp_path):
    with pytest.raises(InputValidationError, match="ONNX model not found"):
        create_backend("onnxruntime", tmp_path / "none.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    with pytest.raises(InputValidationError, match="truncated or corrupt"):
        OnnxRuntimeBackend(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not an onnx file" * 100)
    with pytest.raises(InputValidationError, match="truncated or corrupt"):
        OnnxRuntimeBackend(garbage)
    with pytest.raises(InputValidationError, match="needs a path to an .onnx file"):
        create_backend("onnxruntime", None)


def test_factory():
    assert all(BACKENDS.values())
    assert backend_for_path("m.onnx") == "onnxruntime" and backend_for_path("m.plan") == "tensorrt"
    with pytest.raises(InputValidationError, match="cannot tell the backend"):
        backend_for_path("m.bin")
    with pytest.raises(InputValidationError, match="unknown backend"):
        create_backend("jax", None)
    with pytest.raises(InputValidationError, match="backend='onnxruntime'"):
        create_backend("torch", "model.onnx")


@pytest.mark.parametrize(
    "case,expected",
    [
        ("backend_without_engine", "give --engine PATH"),
        ("engine_missing", "--engine: file not found"),
        ("engine_suffix", "cannot tell the backend"),
        ("engine_and_weights", "not both"),
        ("engine_wrong_backend", "is a file for the onnxruntime backend"),
        ("engine_torch", "--engine runs an exported model"),
        ("engine_tile", "does not fit the onnxruntime model"),
        ("cuda_graph_ort", "--cuda-graph applies to the tensorrt backend only"),
    ],
)
def test_cli_engine_errors(onnx_path, tmp_path, capsys, case, expected):
    small = make_scene(seed=4, size=(128, 128), scale=4)
    write_hsi(tmp_path / "lr.npy", small.lr_hsi)
    write_rgb(tmp_path / "ref.png", small.ref_rgb)
    extra = {
        "backend_without_engine": ["--backend", "onnxruntime"],
        "engine_missing": ["--engine", str(tmp_path / "none.onnx")],
        "engine_suffix": ["--engine", str(tmp_path / "lr.npy")],
        "engine_and_weights": ["--engine", str(onnx_path), "--weights", "w.safetensors"],
        "engine_wrong_backend": ["--engine", str(onnx_path), "--backend", "tensorrt"],
        "engine_torch": ["--engine", str(onnx_path), "--backend", "torch"],
        "engine_tile": ["--engine", str(onnx_path), "--tile", "256"],
        "cuda_graph_ort": ["--engine", str(onnx_path), "--cuda-graph"],
    }[case]
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "out.npy"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sschsr-deploy: error")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], err
    assert not (tmp_path / "out.npy").exists()


# ---- what an export fixes, without a model -------------------------------------------------------------------------

class _Pointwise(Backend):
    """A per-pixel stand-in with an export's limits: windows must be within ``bounds``."""

    name = "fake-export"
    config = None  # a ModelConfig when a test gives one (the pipeline reads it for tile="auto")

    def __init__(self, bounds, preferred=None, max_batch=None):
        self.device = torch.device("cpu")
        self.bands = 31
        self.tile_bounds = bounds
        self.preferred_tile = preferred
        self.max_batch = max_batch
        self.shapes = set()

    def run(self, hsi_sr, hsi_rgb_sr, ref_hr, hsi_rgb_sr_flow, ref_hr_flow):
        (lo_h, lo_w), (hi_h, hi_w) = self.tile_bounds
        assert lo_h <= hsi_sr.shape[2] <= hi_h and lo_w <= hsi_sr.shape[3] <= hi_w, hsi_sr.shape
        assert self.max_batch is None or hsi_sr.shape[0] <= self.max_batch
        self.shapes.add(tuple(hsi_sr.shape))
        return hsi_sr * 2.0 - hsi_rgb_sr.mean(1, keepdim=True)


def test_small_image_is_padded_up_to_a_fixed_tile(scene):
    fixed = _Pointwise(((256, 256), (256, 256)), preferred=(256, 256))
    pipe = Pipeline(fixed, quiet=True, output_scale="unit")
    out = pipe.run(scene.lr_hsi, scene.ref_rgb, 4)  # 128 x 192: one 256 x 256 window, cropped back
    assert fixed.shapes == {(1, 31, 256, 256)} and out.shape == (128, 192, 31)
    exact = Pipeline(_Pointwise(((128, 128), (512, 512))), tile=None, quiet=True, output_scale="unit")
    np.testing.assert_allclose(out, exact.run(scene.lr_hsi, scene.ref_rgb, 4), rtol=1e-6, atol=1e-6)


def test_dynamic_tile_bounds():
    dyn = _Pointwise(((128, 128), (192, 192)), max_batch=2)
    assert Pipeline(dyn, quiet=True).tile == 192  # the default 256 clamped into the bounds
    assert Pipeline(dyn, tile=136, quiet=True).tile == 136
    with pytest.raises(InputValidationError, match=r"within 128x128 \.\. 192x192"):
        Pipeline(dyn, tile=256, quiet=True)
    whole = Pipeline(dyn, tile=None, quiet=True)
    assert whole.plan(128, 184).whole_image
    with pytest.raises(InputValidationError, match="exceed the largest"):
        whole.plan(200, 264)
    assert Pipeline(dyn, tile="auto", quiet=True).plan(1000, 1000).tile_h == 192  # no config: 256, clamped
    dyn.config = get_preset("tiny")  # a known preset: the memory estimate decides
    assert Pipeline(dyn, tile="auto", memory_budget=1 << 40, quiet=True).plan(184, 184).whole_image
    auto = Pipeline(dyn, tile="auto", memory_budget=estimate_forward_bytes("tiny", 136, 136), quiet=True)
    assert auto.plan(1000, 1000).tile_h == 136  # the largest tile the budget allows, within the bounds
    assert Pipeline(dyn, batch=4, quiet=True)._effective_batch() == 2


def test_export_spec_checks_graph_against_metadata():
    meta = {"part": "tile", "bands": "31", "tile_height": "128", "tile_width": "128", "tile_min": "128x128",
            "tile_max": "256x192", "batch_min": "1", "batch_max": "4", "batchnorm_mode": "batch", "preset": "tiny"}
    spec = ExportSpec.from_export(meta, ["batch", 31, "height", "width"], 31)
    assert spec.tile_bounds == ((128, 128), (256, 192)) and not spec.fixed_tile and spec.tile == (128, 128)
    assert (spec.batch_min, spec.batch_max, spec.batch_independent) == (1, 4, False)
    with pytest.raises(InputValidationError, match="fixed height of 136 px but its metadata tile_min is 128x128"):
        ExportSpec.from_export(meta, [1, 31, 136, 128], 31)
    with pytest.raises(InputValidationError, match="outputs 30"):
        ExportSpec.from_export(meta, [1, 31, 128, 128], 30)
    bare = ExportSpec.from_export({}, [2, 16, 128, 160])  # no metadata: the graph alone
    assert bare.bands == 16 and bare.tile_bounds == ((128, 160), (128, 160)) and bare.batch_max == 2
    assert bare.config() is None


# ---- TensorRT ------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the unavailable path cannot be exercised")
def test_tensorrt_unavailable_is_a_clean_error(tmp_path, capsys):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not really an engine")
    from sschsr_deploy.engine.tensorrt import TensorRTUnavailableError

    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        create_backend("tensorrt", engine, "cuda")
    with pytest.raises(InputValidationError, match="CUDA device only"):
        create_backend("tensorrt", engine, "cpu")
    with pytest.raises(InputValidationError, match="TensorRT engine not found"):
        create_backend("tensorrt", tmp_path / "none.engine", "cuda")
    small = make_scene(seed=4, size=(128, 128), scale=4)
    write_hsi(tmp_path / "lr.npy", small.lr_hsi)
    write_rgb(tmp_path / "ref.png", small.ref_rgb)
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "out.npy"), "--engine", str(engine), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "TensorRT is not installed" in err[0], err
    assert issubclass(TensorRTUnavailableError, SSCHSRError)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_pipeline_matches_torch(onnx_path, tiny, scene, tmp_path, cuda_graph):
    """Engine built from the shared export vs the torch backend on the CPU (unverified: needs TensorRT)."""
    from sschsr_deploy.engine.tensorrt import build_engine

    engine = tmp_path / "tiny.engine"
    build_engine(onnx_path, engine)
    pipe = Pipeline(engine, backend="tensorrt", device="cuda", batch=2, quiet=True, output_scale="unit",
                    backend_options={"cuda_graph": cuda_graph})
    got = pipe.run(scene.lr_hsi, scene.ref_rgb, 4)
    want = Pipeline(tiny, tile=TILE, batch=2, quiet=True, output_scale="unit").run(scene.lr_hsi, scene.ref_rgb, 4)
    rel = _rel(got, want)
    print(f"\nTensorRT (cuda_graph={cuda_graph}) vs torch CPU: rel L2 {rel:.2e}")
    assert rel < 1e-3
    d = pipe.backend.describe()
    assert d["backend"] == "tensorrt" and d["weights_sha256"] == ex.state_dict_sha256(tiny)
    if cuda_graph:
        assert d["cuda_graph_shapes"]  # captured (a failed capture logs and falls back)


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_matches_cpu(onnx_path, scene):
    """The IO-binding path (unverified here: no GPU) against the CPU session."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    cpu = Pipeline(onnx_path, backend="onnxruntime", quiet=True, output_scale="unit").run(scene.lr_hsi,
                                                                                          scene.ref_rgb, 4)
    gpu = Pipeline(onnx_path, backend="onnxruntime", device="cuda", batch=2, quiet=True,
                   output_scale="unit").run(scene.lr_hsi, scene.ref_rgb, 4)
    assert _rel(gpu, cpu) < 1e-3


def test_onnxruntime_windows_in_flight_equal_one_session(tmp_path):
    """``in_flight=2``: a batch split over two one-thread sessions run at once gives the one-session result (same
    graph, per-window independent); the pipeline may then batch past a batch-1 export; bad values are refused."""
    pytest.importorskip("onnxruntime")
    from sschsr_deploy.engine.onnx import example_inputs, export_onnx
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend
    from sschsr_deploy.weights import load_model

    model, _ = load_model("tiny-x4")
    path = tmp_path / "t.onnx"
    export_onnx(model, path, tile=(128, 128), batch_range=(1, 1), preset="tiny")
    one = OnnxRuntimeBackend(path, threads=2)
    two = OnnxRuntimeBackend(path, in_flight=2)
    assert one.max_batch == 1 and two.max_batch == 2 and two.describe()["in_flight"] == 2
    xs = example_inputs(31, 3, (128, 128), seed=4)
    want = one.run(*xs)
    got = two.run(*xs)
    assert got.shape == want.shape == (3, 31, 128, 128)
    assert float((got - want).norm() / want.norm()) < 1e-6
    for bad in (0, True, "2"):
        with pytest.raises(InputValidationError, match="in_flight"):
            OnnxRuntimeBackend(path, in_flight=bad)
