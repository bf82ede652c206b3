"""``infer`` over many scenes: folders and manifests through one loaded model, resume after a kill, --keep-going, the
summary JSON, the exit statuses and the usage errors of the modes. Tiny scenes (16 x 16 LR, 64 x 64 HR at x4, the
shipped tiny-x4 weights, one 128-px window each); two CLI subprocesses (a SIGKILL and a SIGTERM), the rest in-process
through ``main``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sschsr_deploy import cli, infer_command
from sschsr_deploy.batch import is_complete
from sschsr_deploy.cli import main
from sschsr_deploy.io.atomic import sidecar_path
from sschsr_deploy.io.signals import FAULT_POINT_ENV

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--weights", "tiny-x4", "--tile", "128"]
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """``lr/{a,b,c}.npy`` (16 x 16 x 31 float32, smooth) and ``rgb/{a,b,c}.png`` (64 x 64 RGB)."""
    root = tmp_path_factory.mktemp("scenes")
    (root / "lr").mkdir()
    (root / "rgb").mkdir()
    y, x = np.mgrid[0:16, 0:16] / 16.0
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for i, name in enumerate(NAMES):
        cube = np.stack([0.4 + 0.2 * np.sin(2 * np.pi * (i + 1) * x + k / 6) * np.cos(2 * np.pi * y)
                         for k in range(31)], axis=-1).astype(np.float32)
        np.save(root / "lr" / f"{name}.npy", cube)
        rgb = np.stack([xx, yy, (xx + yy + i / 3) % 1.0], axis=-1) * 255
        assert cv2.imwrite(str(root / "rgb" / f"{name}.png"), rgb.astype(np.uint8))
    return root


def _with_bad_b(scenes, tmp_path):
    """A copy of the scenes whose ``b`` reference is the wrong size (48 x 64 for a 16 x 16 cube at x4)."""
    for d in ("lr", "rgb"):
        shutil.copytree(scenes / d, tmp_path / d)
    assert cv2.imwrite(str(tmp_path / "rgb" / "b.png"), np.zeros((48, 64, 3), np.uint8))
    return tmp_path / "lr", tmp_path / "rgb"


def _folder_args(hsi, ref, out, *extra):
    return ["infer", "--hsi", str(hsi), "--ref", str(ref), "--out", str(out), *MODEL, *extra]


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith("sschsr-deploy: error")]


def _statuses(summary_path):
    return [s["status"] for s in json.loads(Path(summary_path).read_text())["scenes"]]


def _final_names(folder):
    return sorted(p for p in os.listdir(folder) if ".partial" not in p)


# --------------------------------------------------------------------------------------------------- folders, resume


def test_folders_run_every_scene_with_one_model(scenes, tmp_path, capsys, monkeypatch):
    loads = []
    real_load = infer_command._load_infer_model

    def counting_load(args):
        loads.append(args.weights)
        return real_load(args)

    monkeypatch.setattr(infer_command, "_load_infer_model", counting_load)
    out = tmp_path / "out"  # created by the run
    assert main(_folder_args(scenes / "lr", scenes / "rgb", out)) == 0
    assert loads == ["tiny-x4"]  # one model for the three scenes
    stdout = capsys.readouterr().out
    assert "3 scene(s): 3 done, 0 skipped, 0 failed (" in stdout
    summary = json.loads((out / infer_command.SUMMARY_NAME).read_text())  # the default summary of a folder run
    assert summary["counts"] == {"done": 3}
    assert [Path(s["out"]).name for s in summary["scenes"]] == ["a.npy", "b.npy", "c.npy"]
    assert all(s["timings"]["total_s"] > 0 and s["seconds"] > 0 for s in summary["scenes"])
    for name in NAMES:
        assert is_complete(out / f"{name}.npy")
        result = np.load(out / f"{name}.npy")
        assert result.shape == (64, 64, 31) and np.isfinite(result).all()


def _wait_stopped(proc, timeout=180):
    """Wait until ``proc`` stopped itself (SIGSTOP) at its fault point."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "T":
                return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before its fault point: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the run never reached its fault point")
        time.sleep(0.02)


def _spawn(argv, point):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env[FAULT_POINT_ENV] = point

    def default_signals():  # a runner may start us with signals ignored; the CLI keeps ignored ones ignored
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "sschsr_deploy.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux")
def test_resume_after_sigkill_skips_the_finished_scene(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # the child stops itself (SIGSTOP) as each scene starts writing its output: the first stop is in scene a; let it
    # go on; the second stop is in scene b, after a was committed: kill it there
    proc = _spawn(_folder_args(scenes / "lr", scenes / "rgb", out, "--quiet"), point="writing")
    try:
        _wait_stopped(proc)
        assert not sidecar_path(out / "a.npy").exists()
        os.kill(proc.pid, signal.SIGCONT)
        t0 = time.monotonic()
        while not sidecar_path(out / "a.npy").exists():  # scene a committed ...
            assert proc.poll() is None and time.monotonic() - t0 < 180, "scene a was never committed"
            time.sleep(0.02)
        _wait_stopped(proc)  # ... and scene b is writing
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # no partial output under a final name: a complete, b only as a temp file, c not started, no summary
    assert _final_names(out) == ["a.npy", "a.npy.json"]
    assert is_complete(out / "a.npy")
    assert any(".partial" in p for p in os.listdir(out))
    before = (out / "a.npy").stat()
    assert main(_folder_args(scenes / "lr", scenes / "rgb", out, "--quiet")) == 0
    assert _statuses(out / infer_command.SUMMARY_NAME) == ["skipped", "done", "done"]
    after = (out / "a.npy").stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _final_names(out) == ["a.npy", "a.npy.json", "b.npy", "b.npy.json", "c.npy", "c.npy.json",
                                 infer_command.SUMMARY_NAME]  # the dead run's temp file removed
    assert all(is_complete(out / f"{n}.npy") for n in NAMES)
    capsys.readouterr()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux")
def test_sigterm_ends_the_run_with_143_and_writes_the_summary(scenes, tmp_path):
    out = tmp_path / "out"
    summary = tmp_path / "elsewhere" / "summary.json"
    summary.parent.mkdir()
    proc = _spawn(_folder_args(scenes / "lr", scenes / "rgb", out, "--quiet", "--summary", str(summary)),
                  point="writing")
    try:
        _wait_stopped(proc)  # in scene a
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM); 0 of 3 scene(s) complete" in err and str(summary) in err
    assert "Traceback" not in err
    data = json.loads(summary.read_text())
    assert [s["status"] for s in data["scenes"]] == ["failed", "not run", "not run"]
    assert "SIGTERM" in data["scenes"][0]["error"]
    assert _final_names(out) == []  # no output, no temp file


# -------------------------------------------------------------------------------------------------- a bad scene


def test_keep_going_runs_the_others_and_exits_1(scenes, tmp_path, capsys):
    lr, rgb = _with_bad_b(scenes, tmp_path)
    out = tmp_path / "out"
    assert main(_folder_args(lr, rgb, out, "--keep-going")) == 1
    captured = capsys.readouterr()
    summary_path = out / infer_command.SUMMARY_NAME
    assert _error_lines(captured.err) == [f"sschsr-deploy: error: 1 of 3 scene(s) failed; see {summary_path}"]
    assert "3 scene(s): 2 done, 0 skipped, 1 failed (" in captured.out
    data = json.loads(summary_path.read_text())
    assert [s["status"] for s in data["scenes"]] == ["done", "failed", "done"]
    assert data["scenes"][1]["error"].startswith("InputValidationError: ") and "48" in data["scenes"][1]["error"]
    assert is_complete(out / "a.npy") and is_complete(out / "c.npy") and not (out / "b.npy").exists()


def test_without_keep_going_the_first_failure_ends_the_run(scenes, tmp_path, capsys):
    lr, rgb = _with_bad_b(scenes, tmp_path)
    out = tmp_path / "out"
    assert main(_folder_args(lr, rgb, out, "--quiet")) == 2  # bad input: the status of that error
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("sschsr-deploy: error: scene b.npy: ")
    assert lines[0].endswith(f"; 1 of 3 scene(s) complete (summary: {out / infer_command.SUMMARY_NAME})")
    assert _statuses(out / infer_command.SUMMARY_NAME) == ["done", "failed", "not run"]
    assert _final_names(out) == ["a.npy", "a.npy.json", infer_command.SUMMARY_NAME]


# ----------------------------------------------------------------------------------------------------- manifests


def test_manifest_csv_and_jsonl_with_per_scene_options(scenes, tmp_path, capsys):
    rel = {n: (os.path.relpath(scenes / "lr" / f"{n}.npy", tmp_path), os.path.relpath(scenes / "rgb" / f"{n}.png",
                                                                                       tmp_path)) for n in NAMES}
    (tmp_path / "o").mkdir()
    # --out-layout chw applies to every scene unless the manifest says otherwise (b: hwc)
    (tmp_path / "m.csv").write_text("hsi,ref,out,out_layout,scale\n"
                                    f"{rel['a'][0]},{rel['a'][1]},o/a.npy,,4\n"
                                    f"{rel['b'][0]},{rel['b'][1]},o/b.npy,hwc,\n")
    assert main(["infer", "--manifest", str(tmp_path / "m.csv"), "--out-layout", "chw", "--quiet", *MODEL]) == 0
    assert np.load(tmp_path / "o" / "a.npy").shape == (31, 64, 64)
    assert np.load(tmp_path / "o" / "b.npy").shape == (64, 64, 31)
    assert json.loads(sidecar_path(tmp_path / "o" / "a.npy").read_text())["output_layout"] == "chw"
    assert _statuses(tmp_path / "m.summary.json") == ["done", "done"]  # default: beside the manifest

    (tmp_path / "m.jsonl").write_text(
        json.dumps({"hsi": rel["c"][0], "ref": rel["c"][1], "out": "o/c.h5", "out_variable": "cube", "scale": 4})
        + "\n\n" + json.dumps({"hsi": rel["a"][0], "ref": rel["a"][1], "out": "o/a.npy"}) + "\n")
    assert main(["infer", "--manifest", str(tmp_path / "m.jsonl"), "--summary", str(tmp_path / "s.json"), *MODEL]) == 0
    assert "2 scene(s): 1 done, 1 skipped, 0 failed (" in capsys.readouterr().out  # a: complete from the CSV run
    import h5py

    with h5py.File(tmp_path / "o" / "c.h5") as f:
        assert f["cube"].size == 64 * 64 * 31
    assert _statuses(tmp_path / "s.json") == ["done", "skipped"]
    assert is_complete(tmp_path / "o" / "c.h5")


@pytest.mark.parametrize("column, value, message", [
    ("tile", "128", "m.csv:2: unknown option(s) tile; known: scale"),
    ("nodata", "abc", "m.csv:2: nodata 'abc' is not a number or nan"),
    ("band_mapping", "x", "m.csv:2: band_mapping 'x' is not one of auto, nearest, gaussian, none"),
    ("scale", "four", "m.csv:2: scale 'four' is not an integer"),
])
def test_bad_manifest_values_exit_2(tmp_path, capsys, column, value, message):
    (tmp_path / "m.csv").write_text(f"hsi,ref,out,{column}\na.npy,a.png,o.npy,{value}\n")
    assert main(["infer", "--manifest", str(tmp_path / "m.csv"), "--quiet", *MODEL]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["m.csv"]  # nothing ran, no summary


# ---------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("case, message", [
    ("out_is_a_file", "--hsi {d} is a folder, so --out must be an output folder too, not a file"),
    ("ref_is_a_file", "is a folder, so --ref must be a folder of references too"),
    ("ref_folder_hsi_file", "is a folder, so --hsi must be a folder of cubes too"),
    ("manifest_and_hsi", "--manifest replaces --hsi, --ref and --out"),
    ("neither", "the following arguments are required: --hsi, --ref, --out (or --manifest FILE"),
    ("only_hsi", "the following arguments are required: --ref, --out (see"),
    ("batch_flag_with_files", "--keep-going, --no-resume: for many scenes"),
    ("bad_nodata", "argument --nodata: expected a number or 'nan'; got 'abc'"),
    ("no_cubes", "no hyperspectral cubes in"),
])
def test_usage_errors_of_the_modes(tmp_path, capsys, case, message):
    d = tmp_path / "lr"
    d.mkdir()
    (tmp_path / "a.npy").write_bytes(b"")
    argv = {
        "out_is_a_file": ["--hsi", str(d), "--ref", str(d), "--out", str(tmp_path / "file.npy")],
        "ref_is_a_file": ["--hsi", str(d), "--ref", str(tmp_path / "a.npy"), "--out", str(d)],
        "ref_folder_hsi_file": ["--hsi", str(tmp_path / "a.npy"), "--ref", str(d), "--out", str(tmp_path / "o.npy")],
        "manifest_and_hsi": ["--manifest", str(tmp_path / "m.csv"), "--hsi", str(d)],
        "neither": [],
        "only_hsi": ["--hsi", str(tmp_path / "a.npy")],
        "batch_flag_with_files": ["--hsi", str(tmp_path / "a.npy"), "--ref", "r.png", "--out", str(tmp_path / "o.npy"),
                                  "--keep-going", "--no-resume"],
        "bad_nodata": ["--hsi", str(tmp_path / "a.npy"), "--ref", "r.png", "--out", "o.npy", "--nodata", "abc"],
        "no_cubes": ["--hsi", str(d), "--ref", str(d), "--out", str(tmp_path / "new" / "out")],  # not left behind
    }[case]
    assert main(["infer", *argv, *MODEL]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message.format(d=d) in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "lr"]


def test_options_reach_run_files_only_when_given(tmp_path):
    """--nodata, --band-mapping and --out-layout are passed to run_files only when set (a pipeline that does not
    know them yet keeps working); in folder mode they become every scene's options, --format picks the extension."""
    parse = cli._build_parser().parse_args
    run_options = infer_command._run_options
    base = ["infer", "--hsi", "a.npy", "--ref", "a.png", "--out", "o.npy"]
    assert run_options(parse(base)) == {"format": None, "variable": None, "hsi_layout": None, "out_variable": "hsi"}
    options = run_options(parse([*base, "--nodata", "-9999", "--band-mapping", "gaussian", "--out-layout", "bil"]))
    assert (options["nodata"], options["band_mapping"], options["out_layout"]) == (-9999.0, "gaussian", "bil")
    assert run_options(parse([*base, "--nodata", "NaN", "--band-mapping", "auto"]))["nodata"] == "nan"
    assert "band_mapping" not in run_options(parse([*base, "--band-mapping", "auto"]))

    for d in ("lr", "rgb"):
        (tmp_path / d).mkdir()
    np.save(tmp_path / "lr" / "s.npy", np.zeros((2, 2, 2), np.float32))
    (tmp_path / "rgb" / "s.png").write_bytes(b"")
    expected = {"npy": "s.npy", "npz": "s.npz", "mat": "s.mat", "mat73": "s.mat", "h5": "s.h5", "envi": "s.img",
                "tiff": "s.tif"}
    for fmt, name in expected.items():
        args = parse(["infer", "--hsi", str(tmp_path / "lr"), "--ref", str(tmp_path / "rgb"), "--out",
                      str(tmp_path / "out"), "--format", fmt, "--scale", "4", "--nodata", "0"])
        (job,), summary = infer_command._infer_jobs(args, infer_command.infer_mode(args))
        assert job.out == tmp_path / "out" / name and summary == tmp_path / "out" / infer_command.SUMMARY_NAME
        assert job.options == {"format": fmt, "out_variable": "hsi", "nodata": 0.0, "scale": 4}
