"""The installed commands ``export``, ``build-engine`` and ``bench`` through ``main([...])``, and the command line's
wording of library messages (``tile=128x128`` → ``--tile 128``).

One export of the shipped tiny x4 weights (128², 2 RAFT iterations, batch 1; 15–60 s on 2 CPU cores) is shared by the
module: the export test reads its report, the bench, build-engine and wording tests use the file.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from sschsr_deploy.cli import cli_wording, main  # noqa: E402


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sschsr-deploy: error")]
    assert len(errors) == 1, err
    assert not any("Traceback" in line for line in err)
    return errors[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``sschsr-deploy export --weights tiny-x4 --tile 128 --raft-iters 2``: (exit status, JSON report, path)."""
    path = tmp_path_factory.mktemp("export") / "tiny_128.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["export", "--weights", "tiny-x4", "--tile", "128", "--raft-iters", "2", "--out", str(path)])
    return rc, json.loads(stdout.getvalue()) if rc == 0 else None, path


# ---- export --------------------------------------------------------------------------------------------------------

def test_export_verifies_and_reports_parity(exported):
    rc, report, path = exported
    assert rc == 0 and path.is_file() and report["path"] == str(path)
    parity = report["parity"]
    assert parity["ok"] is True and parity["providers"][0] == "CPUExecutionProvider"
    assert 0 <= parity["rel_l2"] <= parity["tolerance"] == 1e-4
    assert 0 <= parity["rel_l2_residual"] <= 1e-4  # the stricter measure is checked too
    meta = report["metadata"]
    assert (meta["preset"], meta["scale"], meta["raft_iters"], meta["tile_height"]) == ("tiny", "4", "2", "128")
    assert meta["weights_source"] == "file:tiny_x4.safetensors"  # the shipped name resolved to its file
    from sschsr_deploy.io.atomic import file_sha256
    from sschsr_deploy.weights import resolve_shipped

    assert meta["weights_file_sha256"] == file_sha256(resolve_shipped("tiny-x4"))
    print(f"\nexport {report['export_seconds']} s, parity {parity['rel_l2']:.2e} / {parity['rel_l2_residual']:.2e}")


def test_export_failed_check_exits_1(tmp_path, capsys, monkeypatch):
    from sschsr_deploy.engine import onnx as ex

    def failing(*args, **kwargs):
        raise ex.ExportCheckError("ONNX Runtime parity failed: relative L2 error 0.5 > 0.0001")

    monkeypatch.setattr(ex, "export_onnx", failing)
    rc = main(["export", "--weights", "tiny-x4", "--tile", "128", "--out", str(tmp_path / "x.onnx")])
    assert rc == 1
    line = _one_error_line(capsys)
    assert "export check FAILED" in line and "parity failed" in line
    assert capsys.readouterr().out == ""  # no report for a failed export


@pytest.mark.parametrize("argv, expected", [
    (["--tile", "100"], "--tile 100 100: height and width must be multiples of 8"),
    (["--tile", "128", "128", "128"], "--tile takes one size"),
    (["--tile", "128", "--weights", "tiny-x4", "--preset", "official"], "tiny-preset model"),
    (["--tile", "128", "--weights", "tiny-x4", "--scale", "8"], "scale 8 was requested"),
    (["--tile", "128", "--min-batch", "3", "--batch", "2"], "--min-batch"),
    (["--tile", "128", "--scale", "3"], "no shipped weights named 'tiny-x3'"),
    (["--tile", "128", "--weights", "nope.safetensors"], "file not found"),
])
def test_export_bad_arguments_exit_2(tmp_path, capsys, argv, expected):
    assert main(["export", *argv, "--out", str(tmp_path / "x.onnx")]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "x.onnx").exists()


# ---- build-engine --------------------------------------------------------------------------------------------------

def test_build_engine_without_tensorrt_exits_1_with_advice(exported, tmp_path, capsys):
    from sschsr_deploy.engine.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    _, _, onnx_path = exported
    rc = main(["build-engine", str(onnx_path), "--out", str(tmp_path / "m.engine"), "--tf32", "--parity", "-v"])
    assert rc == 1
    line = _one_error_line(capsys)
    assert "TensorRT is not installed" in line and "pip install tensorrt" in line
    assert "sschsr-deploy export" in line and "export/export_onnx.py" not in line  # the CLI's words
    assert not (tmp_path / "m.engine").exists()


def test_parity_weights_finds_the_shipped_file(exported, tmp_path):
    from sschsr_deploy.engine.onnx import read_metadata
    from sschsr_deploy.engine_build import parity_weights
    from sschsr_deploy.errors import InputValidationError
    from sschsr_deploy.weights import resolve_shipped

    meta = read_metadata(exported[2])
    assert parity_weights(meta, None) == resolve_shipped("tiny-x4")  # recorded name and sha256 match
    assert parity_weights(meta, "tiny-x8") == resolve_shipped("tiny-x8")
    assert parity_weights({"weights_source": "random:seed=3"}, None) is None
    with pytest.raises(InputValidationError, match="--parity needs --weights"):
        parity_weights({"weights_source": "file:model-best.pth"}, None)
    with pytest.raises(InputValidationError, match="--parity needs --weights"):  # same name, other bytes
        parity_weights({**meta, "weights_file_sha256": "0" * 64}, None)


# ---- bench ---------------------------------------------------------------------------------------------------------

def test_bench_torch_vs_onnxruntime(exported, tmp_path, capsys):
    _, _, onnx_path = exported
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "tiny-x4", "--backend", "torch", "--backend", f"onnxruntime:{onnx_path}",
               "--tile", "128", "--batch", "1", "--iters", "4", "--warmup", "1", "--raft-iters", "2", "--threads", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert json.loads(out.read_text()) == report  # --out holds the same report
    assert "p50" in captured.err and "speed-up" in captured.err  # the table for people
    assert report["baseline"] == "torch" and report["config"]["tile"] == [128, 128] and "warning" not in report
    torch_row, ort_row = report["backends"]
    assert (torch_row["backend"], ort_row["backend"]) == ("torch", "onnxruntime")
    assert torch_row["raft_iters"] == ort_row["raft_iters"] == 2
    for row in (torch_row, ort_row):
        lat, thr = row["latency_ms"], row["throughput"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 60_000
        assert thr["tiles_per_s"] == pytest.approx(1e3 / lat["mean"], rel=1e-6)  # 1 tile per call
        assert thr["hr_mpix_per_s"] == pytest.approx(thr["tiles_per_s"] * 128 * 128 / 1e6)
        assert 50 < row["peak_memory_mib"] < 64_000 and row["peak_memory_kind"].startswith("peak RSS")
    assert "vs_first" not in torch_row
    vs = ort_row["vs_first"]
    assert vs["latency_p50_ratio"] == pytest.approx(ort_row["latency_ms"]["p50"] / torch_row["latency_ms"]["p50"])
    assert vs["speedup_p50"] == pytest.approx(1 / vs["latency_p50_ratio"])
    assert vs["output_rel_l2"] < 1e-4  # same weights, same iterations, same input: the same output
    assert ort_row["providers"][0] == "CPUExecutionProvider"


def test_bench_refuses_what_cannot_run(exported, capsys):
    _, _, onnx_path = exported
    cases = [
        (["--backend", "onnxruntime"], "--backend onnxruntime:FILE.onnx"),
        (["--backend", "bogus"], "expected torch, torch:MODEL"),
        (["--backend", "torch-compile:nope.safetensors"], "nope.safetensors"),  # bad weights: refused, not recorded
        (["--backend", str(onnx_path), "--tile", "256"], "use --tile 128"),
        (["--tile", "100"], "multiples of 8"),
        (["--iters", "0"], "--iters must be at least 1"),
    ]
    for argv, expected in cases:
        assert main(["bench", *argv]) == 2, argv
        assert expected in _one_error_line(capsys), argv


def test_parse_backend_torch_compile():
    from sschsr_deploy.bench import parse_backend

    assert parse_backend("torch").compile is False
    spec = parse_backend("torch-compile")
    assert (spec.label, spec.name, spec.source, spec.compile) == ("torch-compile", "torch", "tiny-x4", True)
    spec = parse_backend("Torch-Compile:tiny-x8", model="ignored")
    assert (spec.name, spec.source, spec.compile) == ("torch", "tiny-x8", True)


def test_bench_torch_compile_backend(capsys, monkeypatch):
    """``--backend torch-compile`` is ``create_backend("torch", model, compile=True)``; a compile failure is reported in
    its row, not raised. ``torch.compile`` is stood in for: compiling for real takes minutes on these CPUs."""
    import torch

    calls = []

    def fake_compile(module, **kwargs):
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    rc = main(["bench", "--backend", "torch", "--backend", "torch-compile", "--tile", "128", "--iters", "1",
               "--warmup", "0", "--raft-iters", "1", "--threads", "2"])
    assert rc == 0 and calls == [{"dynamic": False}]  # compiled once: the torch-compile backend only
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    eager, compiled = report["backends"]
    assert (eager["label"], compiled["label"]) == ("torch", "torch-compile") and report["baseline"] == "torch"
    assert eager["compiled"] is False and "compile_seconds" not in eager
    assert compiled["backend"] == "torch" and compiled["compiled"] is True
    assert compiled["compile_seconds"] == compiled["first_call_seconds"] > 0
    assert compiled["vs_first"]["output_rel_l2"] < 1e-6  # the same module on the same input
    assert "compiled in" in captured.err

    def failing_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError("backend='inductor' raised: CppCompileError: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    assert main(["bench", "--backend", "torch-compile", "--tile", "128", "--iters", "1", "--warmup", "1",
                 "--raft-iters", "1"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    (row,) = report["backends"]
    assert row["label"] == "torch-compile" and row["compiled"] is True and "latency_ms" not in row
    assert row["error"].startswith("RuntimeError: backend='inductor' raised") and report["baseline"] is None
    assert "torch-compile  failed: RuntimeError" in captured.err


def test_latency_stats_percentiles():
    from sschsr_deploy.bench import latency_stats

    stats = latency_stats([i / 1e3 for i in range(1, 101)])  # 1..100 ms
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01) and stats["min"] == 1 and stats["max"] == 100


# ---- messages in the command line's words --------------------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    ("tile 256x256 does not fit the onnxruntime model, which runs 128x128 windows only (fixed at export): use "
     "tile=128x128 (or 'auto' / leave the default), or export the model again",
     "tile 256x256 does not fit the onnxruntime model, which runs 128x128 windows only (fixed at export): use "
     "--tile 128 (or 'auto' / leave the default), or export the model again"),
    ("use tile=(128, 96)", "use --tile 128x96"),
    ("ONNX model x.onnx runs 128x128 windows only; got 256x256 (use tile=128, or export with tile_min/tile_max for a "
     "dynamic tile size)",
     "ONNX model x.onnx runs 128x128 windows only; got 256x256 (use --tile 128, or export with "
     "--tile-min/--tile-max for a dynamic tile size)"),
    ("whole-image mode (tile=None / --tile whole) needs a model that takes any size",
     "whole-image mode (--tile whole) needs a model that takes any size"),
    ("the model does not record the scale it was trained for: pass scale (--scale)",
     "the model does not record the scale it was trained for: pass --scale"),
    ("batch must be a positive integer; got 0", "--batch must be a positive integer; got 0"),
    ("export with the standard ops (export/export_onnx.py --ops standard)",
     "export with the standard ops (sschsr-deploy export --ops standard)"),
    ("tile 100x100: height and width must be multiples of 8",
     "--tile 100 100: height and width must be multiples of 8"),
    ("a tile of 128 px", "a tile of 128 px"),  # prose is left alone
])
def test_cli_wording(message, expected):
    assert cli_wording(message) == expected


def test_cli_wording_names_the_commands_random_weights_flag():
    msg = "ask for an untrained network with random_weights=True (--random-weights)"
    assert cli_wording(msg, "infer").endswith("with --allow-random-weights")
    assert cli_wording(msg, "demo").endswith("with --random-weights")


def test_infer_tile_errors_speak_cli(exported, tmp_path, capsys):
    """A fixed-tile export refuses another --tile: the message names --tile 128, not the API's tile=128x128."""
    from sschsr_deploy.data import make_scene
    from sschsr_deploy.io import write_hsi, write_rgb

    s = make_scene(seed=5, size=(128, 128), scale=4)
    write_hsi(tmp_path / "lr.npy", s.lr_hsi)
    write_rgb(tmp_path / "ref.png", s.ref_rgb)
    base = ["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--out",
            str(tmp_path / "out.npy"), "--engine", str(exported[2]), "--quiet"]
    for tile in ("256", "whole"):
        assert main([*base, "--tile", tile]) == 2
        line = _one_error_line(capsys)
        assert "--tile 128" in line and "tile=" not in line, line
    assert not (tmp_path / "out.npy").exists()
    assert main([*base, "--tile", "128"]) == 0  # and the tile it names runs
    assert np.isfinite(np.load(tmp_path / "out.npy")).all()
