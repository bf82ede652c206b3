"""The pipeline: whole-image preprocessing parity, tiling exactness, streaming outputs, input checks, GPU streams."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from sschsr_deploy.data import make_scene
from sschsr_deploy.errors import InputValidationError, NonFiniteOutputError
from sschsr_deploy.io import as_cube, load_hsi, read_hsi, write_hsi, write_rgb
from sschsr_deploy.model import SSCHSR
from sschsr_deploy.runtime import Backend, Pipeline, PreparedScene, TileExecutor, create_backend
from sschsr_deploy.scene import prepare_inputs


class PointwiseBackend(Backend):
    """A stand-in network whose output at a pixel depends only on that pixel: tiling must then be exact."""

    name = "pointwise"

    def __init__(self, bands: int = 31, fail_at: int | None = None) -> None:
        self.device = torch.device("cpu")
        self.bands = bands
        self.calls = 0
        self.fail_at = fail_at

    def run(self, hsi_sr, hsi_rgb_sr, ref_hr, hsi_rgb_sr_flow, ref_hr_flow):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated failure mid-run")
        return hsi_sr * 2.0 - hsi_rgb_sr.mean(1, keepdim=True) + ref_hr_flow[:, :1] / 255.0


def _expected_pointwise(mi):
    return (mi.hsi_sr[0] * 2.0 - mi.hsi_rgb_sr[0].mean(0, keepdims=True) + mi.ref_hr_flow[0, :1] / 255.0)


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=1, size=(200, 264), scale=4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SSCHSR.from_preset("tiny").eval()


def test_prepared_scene_equals_prepare_inputs(scene):
    mi = prepare_inputs(scene.lr_hsi, scene.ref_rgb, 4)
    prepared = PreparedScene(as_cube(scene.lr_hsi), scene.ref_rgb, 4)
    for y0, y1, x0, x1 in [(0, 200, 0, 264), (64, 192, 40, 168), (8, 136, 136, 264)]:
        for full, win in zip(mi.as_tuple(), prepared.window(y0, y1, x0, x1), strict=True):
            np.testing.assert_array_equal(win, full[0][:, y0:y1, x0:x1])
    # windows beyond the image are reflect-padded
    pad = prepared.window(128, 256, 0, 128)[0]
    assert pad.shape == (31, 128, 128)
    np.testing.assert_array_equal(pad[:, 72], mi.hsi_sr[0][:, 198, :128])  # padded row 200 reflects to 198
    np.testing.assert_array_equal(pad[:, 75], mi.hsi_sr[0][:, 195, :128])


@pytest.mark.parametrize(
    "size,tile,overlap,margin,batch",
    [((200, 264), 128, 32, 8, 1), ((200, 264), 128, 16, 0, 3), ((96, 112), 256, 32, 8, 2), ((200, 264), None, 0, 0, 1)],
)
def test_tiling_is_exact_for_a_pointwise_network(size, tile, overlap, margin, batch):
    s = make_scene(seed=2, size=size, scale=4)
    backend = PointwiseBackend()
    pipe = Pipeline(backend, tile=tile, overlap=overlap, margin=margin, batch=batch, quiet=True, output_scale="unit")
    out = pipe.run(s.lr_hsi, s.ref_rgb, 4)
    expected = _expected_pointwise(prepare_inputs(s.lr_hsi, s.ref_rgb, 4)).transpose(1, 2, 0)
    assert out.shape == (*size, 31) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert backend.calls == -(-len(pipe.last_plan) // batch)


def test_output_scale_and_layouts(scene):
    pipe = Pipeline(PointwiseBackend(), tile=128, overlap=32, quiet=True)
    out = pipe.run(scene.lr_hsi, scene.ref_rgb, 4)
    unit = Pipeline(PointwiseBackend(), tile=128, overlap=32, quiet=True, output_scale="unit").run(
        scene.lr_hsi, scene.ref_rgb, 4)
    lo, hi = float(scene.lr_hsi.min()), float(scene.lr_hsi.max())
    np.testing.assert_allclose(out, unit * (hi - lo) + lo, rtol=1e-5, atol=1e-6)
    # torch in -> torch out, C x H x W (and 1 x C x H x W accepted); numpy C x H x W with layout="chw"
    t_out = pipe.run(torch.from_numpy(scene.lr_hsi.transpose(2, 0, 1))[None], torch.from_numpy(scene.ref_rgb)
                     .permute(2, 0, 1), 4)
    assert isinstance(t_out, torch.Tensor) and t_out.shape == (31, 200, 264)
    np.testing.assert_allclose(t_out.numpy(), out.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    c_out = pipe.run(np.ascontiguousarray(scene.lr_hsi.transpose(2, 0, 1)), scene.ref_rgb, 4, layout="chw")
    np.testing.assert_allclose(c_out, out.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_whole_image_mode_equals_the_model_on_prepare_inputs(tiny):
    s = make_scene(seed=5, size=(128, 128), scale=4)
    mi = prepare_inputs(s.lr_hsi, s.ref_rgb, 4)
    with torch.inference_mode():
        expected = tiny(*mi.to_torch())[0].numpy().transpose(1, 2, 0)
    out = Pipeline(tiny, tile=None, quiet=True, output_scale="unit").run(s.lr_hsi, s.ref_rgb, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_memmap_and_file_outputs_equal_the_in_memory_result(tiny, tmp_path):
    s = make_scene(seed=6, size=(128, 192), scale=4)
    pipe = Pipeline(tiny, tile=128, overlap=32, batch=2, quiet=True)
    in_memory = pipe.run(s.lr_hsi, s.ref_rgb, 4)
    assert len(pipe.last_plan) == 2
    mm = np.lib.format.open_memmap(tmp_path / "mm.npy", mode="w+", dtype=np.float32, shape=in_memory.shape)
    assert pipe.run(s.lr_hsi, s.ref_rgb, 4, out=mm) is mm
    mm.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "mm.npy"), in_memory)
    # the file path: lazy input (memory-mapped .npy), streamed atomic output + sidecar
    write_hsi(tmp_path / "lr.npy", s.lr_hsi)
    write_rgb(tmp_path / "ref.png", s.ref_rgb)
    with read_hsi(tmp_path / "lr.npy") as cube:
        assert cube.lazy
    out_path = pipe.run_files(tmp_path / "lr.npy", tmp_path / "ref.png", 4, tmp_path / "out.h5", out_layout="chw")
    np.testing.assert_array_equal(load_hsi(out_path, layout="chw"), in_memory)
    import json

    meta = json.loads((tmp_path / "out.h5.json").read_text())
    assert meta["backend"]["backend"] == "torch" and meta["tiling"]["plan"]["windows"] == 2
    assert meta["model"]["preset"] == "tiny" and len(meta["model"]["weights_sha256"]) == 64
    assert {"preprocess_s", "inference_s", "total_s"} <= set(meta["timings"])


def test_failure_mid_run_leaves_no_output(scene, tmp_path):
    write_hsi(tmp_path / "lr.npy", scene.lr_hsi)
    write_rgb(tmp_path / "ref.png", scene.ref_rgb)
    pipe = Pipeline(PointwiseBackend(fail_at=3), tile=128, overlap=32, quiet=True)
    with pytest.raises(RuntimeError, match="simulated"):
        pipe.run_files(tmp_path / "lr.npy", tmp_path / "ref.png", 4, tmp_path / "out.npy")
    assert sorted(os.listdir(tmp_path)) == ["lr.npy", "ref.png"]


def test_reference_size_tolerance(scene, caplog):
    pipe = Pipeline(PointwiseBackend(), tile=None, quiet=True)
    ref = np.pad(scene.ref_rgb, ((0, 2), (0, 3), (0, 0)), mode="edge")  # ~1 % too large
    with caplog.at_level(logging.WARNING):
        out = pipe.run(scene.lr_hsi, ref, 4)
    assert out.shape == (200, 264, 31) and "resized to fit" in caplog.text
    with pytest.raises(InputValidationError, match="more than the 2% tolerance"):
        pipe.run(scene.lr_hsi, scene.ref_rgb[:180], 4)
    with pytest.raises(InputValidationError, match="more than the 2% tolerance"):
        pipe.run(scene.lr_hsi, scene.ref_rgb, 2)  # wrong scale


def test_input_errors(scene):
    pipe = Pipeline(PointwiseBackend(), tile=None, quiet=True)
    with pytest.raises(InputValidationError, match="has 30 bands but the model expects 31"):
        pipe.run(scene.lr_hsi[..., :30], scene.ref_rgb, 4)
    bad = scene.lr_hsi.copy()
    bad[3, 4, 5] = np.nan
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputValidationError, match="2 non-finite"):
        pipe.run(bad, scene.ref_rgb, 4)
    with pytest.raises(InputValidationError, match="constant"):
        pipe.run(np.ones_like(scene.lr_hsi), scene.ref_rgb, 4)
    with pytest.raises(InputValidationError, match="scale must be a positive integer"):
        pipe.run(scene.lr_hsi, scene.ref_rgb, 4.0)
    with pytest.raises(InputValidationError, match="rgb_bands"):
        Pipeline(PointwiseBackend(bands=8), quiet=True).run(scene.lr_hsi[..., :8], scene.ref_rgb, 4)
    with pytest.raises(InputValidationError, match="multiple of 8"):
        Pipeline(PointwiseBackend(), tile=200, overlap=12)


def test_backend_factory():
    with pytest.raises(InputValidationError, match="needs a path to an .onnx file"):
        create_backend("onnxruntime", None)
    with pytest.raises(InputValidationError, match="unknown backend"):
        create_backend("jax", None)
    with pytest.raises(InputValidationError, match="nn.Module"):
        create_backend("torch", "weights.pth")


def test_batch_statistics_mode_runs_one_window_per_batch(scene):
    torch.manual_seed(0)
    model = SSCHSR.from_preset("tiny", batchnorm_mode="batch")
    pipe = Pipeline(model, tile=128, batch=4, quiet=True)
    assert not pipe.backend.batch_independent and pipe._effective_batch() == 1


def test_auto_tile_uses_the_memory_budget(scene):
    model = SSCHSR.from_preset("tiny")
    from sschsr_deploy.runtime.planner import estimate_forward_bytes

    assert Pipeline(model, tile="auto", memory_budget=1 << 40, quiet=True).plan(1000, 1000).whole_image
    small = Pipeline(model, tile="auto", memory_budget=estimate_forward_bytes("tiny", 256, 256), quiet=True)
    assert small.plan(1000, 1000).tile_h == 256


def test_cpu_executor_is_synchronous_and_ordered():
    from sschsr_deploy.runtime import HostBatch

    backend = PointwiseBackend(bands=2)
    batches = [HostBatch(tuple(np.full((1, c, 8, 8), i, np.float32) for c in (2, 3, 3, 3, 3)), i) for i in range(4)]
    outs = list(TileExecutor(backend).map(batches))
    assert [m for m, _ in outs] == [0, 1, 2, 3]
    assert backend.calls == 4


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny):
    """torch.compile through the backend (several minutes of compilation on 2 CPU cores)."""
    s = make_scene(seed=5, size=(128, 128), scale=4)
    eager = Pipeline(tiny, tile=None, quiet=True).run(s.lr_hsi, s.ref_rgb, 4)
    compiled = Pipeline(tiny, tile=None, quiet=True, compile=True).run(s.lr_hsi, s.ref_rgb, 4)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_streams_match_cpu(tiny):
    """Pinned buffers + upload / compute / download streams give the CPU result (needs a GPU; unverified here)."""
    s = make_scene(seed=7, size=(256, 320), scale=4)
    cpu = Pipeline(tiny, tile=128, overlap=32, batch=2, quiet=True).run(s.lr_hsi, s.ref_rgb, 4)
    torch.manual_seed(0)
    gpu_model = SSCHSR.from_preset("tiny").eval()
    gpu_model.load_state_dict(tiny.state_dict())
    gpu = Pipeline(gpu_model, device="cuda", tile=128, overlap=32, batch=2, depth=3, quiet=True).run(
        s.lr_hsi, s.ref_rgb, 4)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


class NaNForWindowSize(PointwiseBackend):
    """Pointwise, but NaN for windows of one size (one scene of a call can be made to fail); records batch sizes."""

    def __init__(self, nan_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.nan_size = nan_size
        self.batches: list[tuple[int, int, int]] = []

    def run(self, *inputs):
        b, _, h, w = inputs[0].shape
        self.batches.append((int(b), int(h), int(w)))
        out = super().run(*inputs)
        return torch.full_like(out, float("nan")) if (h, w) == self.nan_size else out


def test_execute_many_batches_windows_across_scenes():
    """Scenes run together: windows of equal size from different scenes share forward passes, each scene's rows
    reach its own sink and equal a run alone; windows of other sizes run in their own batches; a scene whose output
    is non-finite gets its error without touching the others."""
    # tile 256: (64, 72) and (96, 104) pad to 128 x 128 windows, (160, 168) is one whole-image window, (400, 520)
    # is cut into 256 x 256 windows
    sizes = [(64, 72), (160, 168), (96, 104), (400, 520)]
    scenes = [make_scene(seed=10 + k, size=size, scale=4) for k, size in enumerate(sizes)]
    alone = [Pipeline(PointwiseBackend(), tile=256, batch=4, quiet=True, output_scale="unit")
             .run(s.lr_hsi, s.ref_rgb, 4) for s in scenes]
    backend = NaNForWindowSize()
    pipe = Pipeline(backend, tile=256, batch=4, quiet=True, output_scale="unit")
    prepared = [pipe.prepare(as_cube(s.lr_hsi, "hwc"), s.ref_rgb, 4) for s in scenes]

    def sinks():
        outs = [np.full((*size, 31), np.nan, np.float32) for size in sizes]

        def sink_for(out):
            def sink(y0, block):
                out[y0:y0 + block.shape[1]] = block.transpose(1, 2, 0)
            return sink

        return outs, [sink_for(o) for o in outs]

    outs, sink_list = sinks()
    outcomes = pipe.execute_many(prepared, sink_list)
    assert [o.error for o in outcomes] == [None] * 4
    big = len(outcomes[3].plan)
    assert [o.windows for o in outcomes] == [1, 1, 1, big] and big > 4
    for out, ref in zip(outs, alone, strict=True):
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # the two 128 x 128 windows in one pass, the 160 x 168 one alone, the 256 x 256 ones in passes of <= 4
    assert backend.batches[:2] == [(2, 128, 128), (1, 160, 168)]
    assert [b for b, h, _ in backend.batches[2:] if h == 256] == [min(4, big - i) for i in range(0, big, 4)]
    assert pipe.last_batches == len(backend.batches) == 2 + -(-big // 4)

    backend.nan_size = (160, 168)  # only scene 1's window turns NaN: only it fails, the others are complete
    outs, sink_list = sinks()
    outcomes = pipe.execute_many(prepared, sink_list)
    assert isinstance(outcomes[1].error, NonFiniteOutputError) and "160x168x31" in str(outcomes[1].error)
    for k in (0, 2, 3):
        assert outcomes[k].error is None
        np.testing.assert_allclose(outs[k], alone[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(NonFiniteOutputError):  # execute (one scene) raises it
        pipe.execute(prepared[1], sink_list[1])
    with pytest.raises(ValueError, match="sink"):
        pipe.execute_many(prepared, [])
