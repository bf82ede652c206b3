"""Scale-out over Ray (sschsr_deploy.distributed): scenes over actors (resume, retries, a worker killed mid-run, an
interrupted driver), one scene's windows over actors (bit for bit the single-process result, a worker killed
mid-run), and the package without Ray. One local Ray cluster (2 CPUs) and one pool of 2 actors for the module; tiny
scenes (16 x 16 x 31 LR at x4, the shipped tiny-x4 weights, 128-px tiles; scene ``b`` is 64 x 64 LR = 9 windows)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from sschsr_deploy.batch import SceneJob, is_complete, jobs_from_folders  # noqa: E402
from sschsr_deploy.distributed import (  # noqa: E402
    INSTALL_HINT,
    ModelSpec,
    RayPipeline,
    WorkerLostError,
    WorkerPool,
    require_ray,
    run_scenes_ray,
)
from sschsr_deploy.errors import InputValidationError  # noqa: E402
from sschsr_deploy.io.atomic import sidecar_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("tiny-x4", pipeline={"tile": 128}, threads=1)
SIZES = {"a": 16, "b": 64, "c": 16, "d": 16}  # LR side; b (9 windows) is the slow one


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    pool = WorkerPool(SPEC, workers=2)
    yield pool
    pool.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """``lr/*.npy`` + ``rgb/*.png`` and the single-process outputs ``expected/*.npy`` (torch at 1 thread, as the
    actors run)."""
    root = tmp_path_factory.mktemp("scenes")
    for d in ("lr", "rgb", "expected"):
        (root / d).mkdir()
    for i, (name, n) in enumerate(SIZES.items()):
        y, x = np.mgrid[0:n, 0:n] / n
        cube = np.stack([0.4 + 0.2 * np.sin(2 * np.pi * (i + 1) * x + k / 6) * np.cos(2 * np.pi * y)
                         for k in range(31)], axis=-1).astype(np.float32)
        np.save(root / "lr" / f"{name}.npy", cube)
        yy, xx = np.mgrid[0:4 * n, 0:4 * n] / (4 * n)
        rgb = np.stack([xx, yy, (xx * yy + i / 3) % 1.0], axis=-1) * 255
        assert cv2.imwrite(str(root / "rgb" / f"{name}.png"), rgb.astype(np.uint8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = SPEC.build()
        for name in SIZES:
            pipe.run_files(root / "lr" / f"{name}.npy", root / "rgb" / f"{name}.png", None,
                           root / "expected" / f"{name}.npy")
    finally:
        torch.set_num_threads(threads)
    return root


def _kill_the_other_worker(pids, row) -> int:
    """SIGKILL the actor that did not return ``row`` (two actors); returns its pid."""
    other = [p for p in pids if row["worker"] != f"{socket.gethostname()}:{p}"]
    assert len(other) == 1
    os.kill(other[0], signal.SIGKILL)
    return other[0]


def _check_outputs(out: Path, scenes: Path, names=SIZES) -> None:
    for name in names:
        assert is_complete(out / f"{name}.npy"), name
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), np.load(scenes / "expected" / f"{name}.npy"))
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]  # no temp file left behind


def test_scenes_with_a_worker_killed_mid_run(cluster, scenes, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = jobs_from_folders(scenes / "lr", scenes / "rgb", out)
    pids = cluster.pids()
    killed = []

    def on_result(i, row):
        if not killed:  # the first scene back is a (1 window); the other actor is inside the 9-window scene b
            assert jobs[i].out.name == "a.npy"
            killed.append(_kill_the_other_worker(pids, row))

    summary = run_scenes_ray(cluster, jobs, summary_path=tmp_path / "summary.json", progress=False,
                             on_result=on_result)
    assert killed
    rows = {Path(r["out"]).name: r for r in summary.scenes}
    assert summary.ok and summary.counts == {"done": 4}
    assert rows["b.npy"]["attempts"] == 2 and all("attempts" not in rows[f"{n}.npy"] for n in "acd")
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == {"done": 4}
    _check_outputs(out, scenes)
    assert killed[0] not in cluster.pids() and len(set(cluster.pids())) == 2  # restarted: new pid


def test_scenes_interrupted_driver_resumes(cluster, scenes, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = jobs_from_folders(scenes / "lr", scenes / "rgb", out)
    summary_path = tmp_path / "summary.json"

    def interrupt(i, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenes_ray(cluster, jobs, summary_path=summary_path, progress=False, on_result=interrupt)
    first = json.loads(summary_path.read_text())
    assert first["counts"] == {"done": 1, "not run": 3}
    done = [Path(r["out"]).name for r in first["scenes"] if r["status"] == "done"]
    assert not is_complete(out / "b.npy")  # b was in flight: its actor was stopped, nothing committed
    summary = run_scenes_ray(cluster, jobs, summary_path=summary_path, progress=False)
    rows = {Path(r["out"]).name: r["status"] for r in summary.scenes}
    assert rows == {n: ("skipped" if n in done else "done") for n in (f"{s}.npy" for s in SIZES)}
    _check_outputs(out, scenes)


@pytest.mark.parametrize("outputs", ["worker", "driver"])
def test_scenes_failures_retried_bounded_then_reported(cluster, scenes, tmp_path, outputs):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "rgb").mkdir()
    assert cv2.imwrite(str(tmp_path / "rgb" / "small.png"), np.zeros((48, 64, 3), np.uint8))
    lr, rgb = scenes / "lr", scenes / "rgb"
    jobs = [SceneJob(lr / "a.npy", rgb / "a.png", out / "a.npy"),
            SceneJob(lr / "c.npy", tmp_path / "rgb" / "small.png", out / "bad.npy"),  # wrong size: input error
            SceneJob(lr / "d.npy", rgb / "d.png", out / "bug.npy", {"bogus": 1})]  # TypeError in the worker
    summary = run_scenes_ray(cluster, jobs, keep_going=True, retries=1, progress=False,
                             summary_path=tmp_path / "s.json", outputs=outputs)
    a, bad, bug = summary.scenes
    assert a["status"] == "done" and "attempts" not in a
    assert bad["status"] == "failed" and "InputValidationError" in bad["error"] and "attempts" not in bad
    assert bug["status"] == "failed" and "TypeError" in bug["error"] and bug["attempts"] == 2
    assert not summary.ok and not (out / "bad.npy").exists() and not (out / "bug.npy").exists()
    # without keep_going the first failure is raised (its own type), after the summary is written
    with pytest.raises(InputValidationError, match="reference"):
        run_scenes_ray(cluster, jobs[1:2], progress=False, summary_path=tmp_path / "s2.json", outputs=outputs)
    assert json.loads((tmp_path / "s2.json").read_text())["counts"] == {"failed": 1}


def _sidecar(out: Path) -> dict:
    """A sidecar without what differs between runs (run id, time stamp, timings)."""
    side = json.loads(sidecar_path(out).read_text())
    for key in ("run_id", "created_utc", "timings"):
        side.pop(key)
    return side


def test_scenes_driver_outputs_same_files_and_sidecars(cluster, scenes, tmp_path):
    """outputs="driver": the driver reads, the actors compute in memory, the driver writes — the very outputs and
    sidecars the workers' run_files writes (the fixture's expected files are run_files' own)."""
    out = tmp_path / "out"
    out.mkdir()
    jobs = [job for job in jobs_from_folders(scenes / "lr", scenes / "rgb", out) if job.out.stem in ("a", "c")]
    summary = run_scenes_ray(cluster, jobs, outputs="driver", progress=False, summary_path=tmp_path / "s.json")
    assert summary.ok and summary.counts == {"done": 2}
    host = socket.gethostname()
    for row in summary.scenes:
        assert row["worker"].startswith(f"{host}:") and row["worker"] != f"{host}:{os.getpid()}"  # computed there
        assert {"preprocess_s", "inference_s", "write_s", "total_s", "windows"} <= set(row["timings"])
    _check_outputs(out, scenes, names=("a", "c"))
    for name in ("a", "c"):
        side = _sidecar(out / f"{name}.npy")
        assert side == _sidecar(scenes / "expected" / f"{name}.npy")
        assert side["inputs"]["hsi"] == str(scenes / "lr" / f"{name}.npy") and side["metadata"] is not None
    with pytest.raises(ValueError, match="outputs"):
        run_scenes_ray(cluster, jobs, outputs="nfs")


def test_scenes_driver_outputs_resume_and_a_worker_killed(cluster, scenes, tmp_path):
    """outputs="driver": complete outputs are skipped; the actor computing scene b is killed, b is sent again and
    every scene is written exactly once, bit for bit."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "c"):  # complete outputs from an earlier run
        for src in (scenes / "expected" / f"{name}.npy", sidecar_path(scenes / "expected" / f"{name}.npy")):
            (out / src.name).write_bytes(src.read_bytes())
    before = {n: (out / f"{n}.npy").stat().st_mtime_ns for n in ("a", "c")}
    jobs = jobs_from_folders(scenes / "lr", scenes / "rgb", out)
    pids = cluster.pids()
    killed, seen = [], []

    def on_result(i, row):
        seen.append(jobs[i].out.name)
        if not killed:  # the first scene back is d (1 window); the other actor is inside the 9-window scene b
            assert jobs[i].out.name == "d.npy"
            killed.append(_kill_the_other_worker(pids, row))

    summary = run_scenes_ray(cluster, jobs, outputs="driver", progress=False, on_result=on_result)
    rows = {Path(r["out"]).name: r for r in summary.scenes}
    assert killed and sorted(seen) == ["b.npy", "d.npy"]  # each reported once
    assert summary.counts == {"skipped": 2, "done": 2}
    assert rows["b.npy"]["attempts"] == 2 and "attempts" not in rows["d.npy"]
    assert {n: (out / f"{n}.npy").stat().st_mtime_ns for n in ("a", "c")} == before  # not written again
    _check_outputs(out, scenes)


def test_large_scene_windows_bit_exact_with_a_worker_killed(cluster, scenes, tmp_path):
    pids = cluster.pids()
    killed = []

    def on_result(i):
        if not killed:
            os.kill(pids[1], signal.SIGKILL)  # actor 1 holds queued windows (2 of the first 3 go to actor 0, 1)
            killed.append(i)

    pipe = RayPipeline(cluster, max_in_flight=3, quiet=True, on_result=on_result)
    out = tmp_path / "b.npy"
    pipe.run_files(scenes / "lr" / "b.npy", scenes / "rgb" / "b.png", None, out)
    assert killed and len(pipe.last_plan) == 9
    stats = pipe.executor.stats
    assert stats["resent"] >= 1 and stats["sent"] == 9 + stats["resent"] and stats["max_held"] <= 3
    np.testing.assert_array_equal(np.load(out), np.load(scenes / "expected" / "b.npy"))
    assert is_complete(out)
    side = json.loads(sidecar_path(out).read_text())
    assert side["backend"]["executor"] == "ray" and side["backend"]["workers"] == 2
    # the in-memory API too, and more windows than the cap in flight is never held
    lr = np.load(scenes / "lr" / "b.npy")
    rgb = cv2.cvtColor(cv2.imread(str(scenes / "rgb" / "b.png")), cv2.COLOR_BGR2RGB)
    pipe2 = RayPipeline(cluster, max_in_flight=1, quiet=True)
    np.testing.assert_array_equal(pipe2.run(lr, rgb), np.load(scenes / "expected" / "b.npy"))
    assert pipe2.executor.stats["max_held"] == 1


def test_bad_model_spec_raises_its_own_error(cluster, tmp_path):
    with pytest.raises(InputValidationError, match="unknown option"):
        ModelSpec("tiny-x4", pipeline={"tiles": 128})
    with pytest.raises(Exception, match="missing.safetensors|not found|No such file"):
        WorkerPool(ModelSpec(str(tmp_path / "missing.safetensors")), workers=1, cpus_per_worker=0)


def test_without_ray_clear_error(monkeypatch):
    code = ("import sys; sys.modules['ray'] = None\n"
            "import sschsr_deploy.distributed as d\n"
            "from sschsr_deploy.errors import InputValidationError\n"
            "assert not d.ray_available() or True\n"
            "try:\n    d.run_scenes_ray(d.ModelSpec('tiny-x4'), [])\n"
            "except InputValidationError as e:\n    print('ERR', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and INSTALL_HINT in res.stdout
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputValidationError, match=r"pip install 'sschsr-deploy\[ray\]'"):
        require_ray()
    with pytest.raises(InputValidationError, match="Ray"):
        WorkerPool(SPEC)


def test_worker_lost_error_is_a_package_error():
    from sschsr_deploy.errors import SSCHSRError

    assert issubclass(WorkerLostError, SSCHSRError)


def test_model_spec_splits_options_and_is_picklable(tmp_path):
    import pickle

    spec = ModelSpec.from_pretrained("tiny-x4", tile=128, batch=2, scale=4, rgb_bands=(15, 8, 3), threads=1)
    assert spec.load == {"scale": 4, "rgb_bands": (15, 8, 3)}
    assert spec.pipeline == {"tile": 128, "batch": 2, "rgb_bands": (15, 8, 3)} and spec.device == "cpu"
    assert pickle.loads(pickle.dumps(spec)) == spec
    (tmp_path / "m.onnx").write_bytes(b"x")
    onnx = ModelSpec.from_pretrained(tmp_path / "m.onnx", rgb_bands=(15, 8, 3))
    assert onnx.source == str(tmp_path / "m.onnx") and onnx.load == {}  # absolute; exports record their own fields
    with pytest.raises(InputValidationError, match="exported model"):
        ModelSpec(str(tmp_path / "m.onnx"), load={"scale": 4}).build()
    with pytest.raises(InputValidationError, match="threads"):
        ModelSpec("tiny-x4", threads=0)


def test_cli_executor_ray_runs_a_folder(scenes, tmp_path):
    """``infer --executor ray --ray-outputs driver`` in its own process (its own local cluster: the module's actors
    hold this one's CPUs); and the Ray-only flags are refused without it."""
    lr, rgb, out = tmp_path / "lr", tmp_path / "rgb", tmp_path / "out"
    lr.mkdir()
    rgb.mkdir()
    for name in ("a", "c"):
        (lr / f"{name}.npy").write_bytes((scenes / "lr" / f"{name}.npy").read_bytes())
        (rgb / f"{name}.png").write_bytes((scenes / "rgb" / f"{name}.png").read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "sschsr_deploy.cli", "infer", "--hsi", str(lr), "--ref", str(rgb), "--out", str(out),
           "--weights", "tiny-x4", "--tile", "128", "--executor", "ray", "--workers", "2", "--quiet",
           "--ray-outputs", "driver"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "sschsr-summary.json").read_text())
    assert [s["status"] for s in summary["scenes"]] == ["done", "done"]
    assert all("worker" in s for s in summary["scenes"])
    for name in ("a", "c"):
        assert is_complete(out / f"{name}.npy")
    from sschsr_deploy.cli import main

    assert main(["infer", "--hsi", str(lr / "a.npy"), "--ref", str(rgb / "a.png"), "--out", str(tmp_path / "x.npy"),
                 "--weights", "tiny-x4", "--workers", "2"]) == 2
    assert main(["infer", "--hsi", str(lr), "--ref", str(rgb), "--out", str(tmp_path / "y"), "--weights", "tiny-x4",
                 "--ray-outputs", "driver"]) == 2
