"""The command line through ``main([...])``: success paths, one-line errors with non-zero exits, no partial outputs."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import scipy.io

from sschsr_deploy.cli import main
from sschsr_deploy.data import make_scene
from sschsr_deploy.io import load_hsi, write_hsi, write_rgb


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 32 x 32 LR cube (128 x 128 HR at scale 4) and a 16-bit PNG reference."""
    folder = tmp_path_factory.mktemp("cli_inputs")
    s = make_scene(seed=11, size=(128, 128), scale=4)
    write_hsi(folder / "lr.npy", s.lr_hsi)
    write_rgb(folder / "ref16.png", s.ref_rgb.astype(np.uint16) * 257)
    write_rgb(folder / "ref.png", s.ref_rgb)
    return folder, s


def _infer(files, out, *extra):
    folder, _ = files
    return main(["infer", "--hsi", str(folder / "lr.npy"), "--ref", str(folder / "ref16.png"), "--scale", "4",
                 "--out", str(out), "--preset", "tiny", "--allow-random-weights", "--quiet", *extra])


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sschsr-deploy: error")]
    assert len(errors) == 1, err
    assert not any("Traceback" in line for line in err)
    return errors[0]


def _no_outputs(folder):
    return not [p for p in os.listdir(folder) if p.startswith("out") or ".partial" in p]


def test_infer_writes_output_and_sidecar(files, tmp_path, capsys):
    assert _infer(files, tmp_path / "out.mat", "--format", "mat73", "--tile", "whole") == 0
    out = load_hsi(tmp_path / "out.mat", bands=31)
    assert out.shape == (128, 128, 31) and np.isfinite(out).all()
    meta = json.loads((tmp_path / "out.mat.json").read_text())
    assert meta["model"]["random_weights"] is True and meta["output_format"] == "mat73"
    assert meta["tiling"]["plan"]["whole_image"] is True
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    with h5py.File(tmp_path / "out.mat") as f:  # MATLAB v7.3 (HDF5 with the MATLAB header)
        assert f["hsi"].shape == (31, 128, 128)
    assert (tmp_path / "out.mat").read_bytes()[:10] == b"MATLAB 7.3"


def test_infer_refuses_random_weights_without_flag(files, tmp_path, capsys):
    folder, _ = files
    rc = main(["infer", "--hsi", str(folder / "lr.npy"), "--ref", str(folder / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "out.npy")])
    assert rc == 2
    assert "--allow-random-weights" in _one_error_line(capsys)  # the official preset: no weights ship
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing_hsi", "file not found"),
        ("missing_ref", "file not found"),
        ("unknown_ext", "unknown extension"),
        ("out_dir_missing", "does not exist"),
        ("mat_variable", "variable 'cube' not found"),
        ("ambiguous", "ambiguous band order"),
        ("wrong_bands", "has 20 bands but the model expects 31"),
        ("ratio", "tolerance"),
        ("nan", "non-finite"),
        ("truncated", "truncated"),
        ("bad_tile", "multiple of 8"),
        ("backend", "give --engine PATH"),
        ("weights_missing", "weights file not found"),
    ],
)
def test_errors_are_one_line_and_leave_nothing(files, tmp_path, capsys, case, expected):
    folder, s = files
    hsi, ref, out, extra = folder / "lr.npy", folder / "ref.png", tmp_path / "out.npy", []
    if case == "missing_hsi":
        hsi = tmp_path / "nope.npy"
    elif case == "missing_ref":
        ref = tmp_path / "nope.png"
    elif case == "unknown_ext":
        out = tmp_path / "out.xyz"
    elif case == "out_dir_missing":
        out = tmp_path / "missing_dir" / "out.npy"
    elif case == "mat_variable":
        hsi = tmp_path / "in.mat"
        scipy.io.savemat(hsi, {"radiance": s.lr_hsi})
        extra = ["--variable", "cube"]
    elif case == "ambiguous":
        hsi = tmp_path / "in.npy"
        np.save(hsi, np.random.rand(32, 8, 32).astype(np.float32))
    elif case == "wrong_bands":
        hsi = tmp_path / "in.npy"
        np.save(hsi, s.lr_hsi[..., :20])
    elif case == "ratio":
        ref = tmp_path / "small.png"
        write_rgb(ref, s.ref_rgb[:100])
    elif case == "nan":
        hsi = tmp_path / "in.npy"
        bad = s.lr_hsi.copy()
        bad[1, 2, 3] = np.nan
        np.save(hsi, bad)
    elif case == "truncated":
        hsi = tmp_path / "in.npy"
        np.save(hsi, s.lr_hsi)
        hsi.write_bytes(hsi.read_bytes()[:5000])
    elif case == "bad_tile":
        extra = ["--tile", "130"]
    elif case == "backend":
        extra = ["--backend", "onnxruntime"]
    elif case == "weights_missing":
        extra = ["--weights", str(tmp_path / "w.safetensors")]
    rc = main(["infer", "--hsi", str(hsi), "--ref", str(ref), "--scale", "4", "--out", str(out), "--preset", "tiny",
               "--allow-random-weights", "--quiet", *extra])
    assert rc == 2
    assert expected in _one_error_line(capsys)
    assert _no_outputs(tmp_path)


def test_interrupted_run_leaves_no_complete_looking_file(files, tmp_path, capsys, monkeypatch):
    from sschsr_deploy.runtime import backends

    calls = {"n": 0}
    real_run = backends.TorchBackend.run

    def flaky(self, *inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the middle of the run")
        return real_run(self, *inputs)

    monkeypatch.setattr(backends.TorchBackend, "run", flaky)
    # 128 x 192 HR with 128 px tiles: two windows, the second one fails
    s = make_scene(seed=12, size=(128, 192), scale=4)
    write_hsi(tmp_path / "lr.npy", s.lr_hsi)
    write_rgb(tmp_path / "ref.png", s.ref_rgb)
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "out.npy"), "--preset", "tiny", "--allow-random-weights", "--quiet",
               "--tile", "128"])
    assert rc == 1 and calls["n"] == 2
    err = capsys.readouterr().err
    assert "simulated crash" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["lr.npy", "ref.png"]

    def interrupt(self, *inputs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends.TorchBackend, "run", interrupt)
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "4",
               "--out", str(tmp_path / "out.npy"), "--preset", "tiny", "--allow-random-weights", "--quiet"])
    assert rc == 130
    assert sorted(os.listdir(tmp_path)) == ["lr.npy", "ref.png"]


def test_debug_shows_the_traceback(files, tmp_path):
    folder, _ = files
    with pytest.raises(Exception, match="file not found"):
        main(["--debug", "infer", "--hsi", str(tmp_path / "none.npy"), "--ref", str(folder / "ref.png"),
              "--scale", "4", "--out", str(tmp_path / "o.npy"), "--allow-random-weights"])


def test_debug_and_verbose_after_the_subcommand(files, tmp_path, capsys):
    import logging

    folder, _ = files
    with pytest.raises(Exception, match="file not found"):  # --debug after the sub-command: the traceback
        main(["infer", "--hsi", str(tmp_path / "none.npy"), "--ref", str(folder / "ref.png"), "--scale", "4",
              "--out", str(tmp_path / "o.npy"), "--allow-random-weights", "--debug"])
    root = logging.getLogger("sschsr_deploy")
    for argv, level in ((["info"], logging.WARNING), (["info", "-v"], logging.INFO), (["-v", "info"], logging.INFO),
                        (["info", "--verbose"], logging.INFO), (["info", "--debug"], logging.DEBUG),
                        (["--debug", "info", "-v"], logging.DEBUG)):  # a flag before is not reset by one after
        assert main([*argv, "--json"]) == 0, argv
        assert root.level == level, argv
    capsys.readouterr()


def test_tile_option_takes_the_sizes_messages_name():
    """--tile takes what reworded messages suggest: 128, 128x96 (a non-square export's tile), auto, whole."""
    from sschsr_deploy.cli import _build_parser

    parse = _build_parser().parse_args
    base = ["infer", "--hsi", "a.npy", "--ref", "b.png", "--out", "c.npy", "--tile"]
    assert [parse([*base, t]).tile for t in ("128", "128x128", "128x96", "auto", "whole")] == \
        [128, 128, (128, 96), "auto", None]


def test_usage_errors_return_2(capsys):
    assert main(["infer", "--hsi", "x.npy"]) == 2
    assert "required" in _one_error_line(capsys)
    assert main(["bogus"]) == 2
    assert main(["--version"]) == 0


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch:" in out and "native_extension:" in out and "triton:" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "cuda_available", "native_extension", "libraries"} <= set(info)
    assert info["libraries"]["numpy"]["version"] == np.__version__


def test_info_reports_onnxruntime_by_its_module(capsys):
    """onnxruntime-gpu provides the module onnxruntime: info says it is installed, from which distribution, with
    which providers (it used to look up the distribution 'onnxruntime' and say "not installed")."""
    import importlib.metadata

    ort = pytest.importorskip("onnxruntime")
    dist = importlib.metadata.packages_distributions()["onnxruntime"][0]
    assert main(["info", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["libraries"]["onnxruntime"]
    assert entry["version"] == ort.__version__ and entry["distribution"] == dist
    assert "CPUExecutionProvider" in entry["providers"]
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("onnxruntime:"))
    assert ort.__version__ in line and "not installed" not in line and "CPUExecutionProvider" in line
    if dist != "onnxruntime":
        assert f"distribution {dist}" in line


def test_demo(tmp_path, capsys):
    from PIL import Image

    from sschsr_deploy import metrics as m
    from sschsr_deploy.demo import GAP

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "128", "128", "--seed", "3", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "sam", "ssim", "ergas"):
        assert set(metrics[key]) == {"bicubic", "model"}
        assert np.isfinite(metrics[key]["bicubic"]) and np.isfinite(metrics[key]["model"])
    assert metrics["random_weights"] is False and "tiny_x4" in metrics["weights"]  # the shipped weights by default
    assert metrics["psnr"]["bicubic"] > 20
    assert metrics["psnr"]["model"] > metrics["psnr"]["bicubic"] + 3.0  # they really super-resolve (measured +4.02)
    output, gt = load_hsi(out / "output.npy"), load_hsi(out / "ground_truth.npy")
    assert output.shape == (128, 128, 31)
    assert json.loads((out / "output.npy.json").read_text())["demo"]["seed"] == 3
    # SAM in degrees, as the README quotes it, and the unit says so
    assert metrics["units"]["sam"].startswith("degrees")
    assert metrics["sam"]["model"] == pytest.approx(np.degrees(m.sam(output, gt)), rel=1e-6)
    assert 0.5 < metrics["sam"]["model"] < metrics["sam"]["bicubic"] < 30
    # five labelled panels: bicubic | reference photo | output | ground truth | |error|
    preview = np.asarray(Image.open(out / "preview.png").convert("RGB"))
    header = preview.shape[0] - 128
    assert preview.shape[1] == 5 * 128 + 4 * GAP and 10 < header < 60
    for k in range(5):
        strip = preview[:header, k * (128 + GAP):k * (128 + GAP) + 128]
        assert (strip.min(axis=2) < 100).sum() > 40, f"panel {k} has no label"  # dark text on the white header
    gt_panel = preview[header:, 3 * (128 + GAP):3 * (128 + GAP) + 128].astype(float)
    out_panel = preview[header:, 2 * (128 + GAP):2 * (128 + GAP) + 128].astype(float)
    assert 0 < np.abs(gt_panel - out_panel).mean() < 20  # the ground truth, close to the output but not it


def test_demo_default_scene_is_tiled():
    """The default demo scene is larger than the default tile, so the demo shows several blended windows."""
    from sschsr_deploy.cli import _build_parser
    from sschsr_deploy.runtime.planner import plan_tiles

    args = _build_parser().parse_args(["demo", "--out", "x"])
    plan = plan_tiles(*args.size, args.tile, args.overlap, args.margin)
    assert len(plan) >= 4 and not plan.whole_image


def test_demo_random_weights_says_so(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "128", "128", "--random-weights", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_weights"] is True and "random weights" in metrics["weights"]
