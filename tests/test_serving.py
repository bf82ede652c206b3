"""Serving (``sschsr_deploy.serving``): a real Triton Inference Server on 127.0.0.1 with free ports, ONE per module.

HTTP and gRPC results equal the in-process :class:`Pipeline`; concurrent clients; the batched interface
(``batch_requests``: a second server, queued requests run together); every bad request refused with our
message while the server keeps serving and its memory stays flat; ``sschsr-deploy serve`` restarted on the same ports,
finishing an in-flight request on SIGTERM and exiting 0. Skipped when nvidia-pytriton's server or tritonclient is
missing. Small scenes (LR 16x16x31, tiny-x4, x4), one torch thread per instance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.serving.client import Client
from sschsr_deploy.serving.handler import SceneHandler
from sschsr_deploy.serving.repository import ModelSettings, model_config
from sschsr_deploy.serving.server import Server, ServingUnavailableError, find_triton


def _serving_missing() -> str | None:
    import importlib.util

    for module in ("tritonclient.http", "tritonclient.grpc"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install 'tritonclient[http,grpc]')"
        except ImportError as exc:
            return f"{module} cannot be imported: {exc}"
    try:
        find_triton()
    except ServingUnavailableError as exc:
        return str(exc)
    return None

ROOT = Path(__file__).resolve().parents[1]
MAX_MPIX = 0.05  # 256 x 256 HR (LR 64 x 64 at x4) is over it
LR_SHAPE = (16, 16, 31)


def scene(seed: int, shape: tuple[int, int, int] = LR_SHAPE, scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lr = rng.random(shape, dtype=np.float32)
    ref = rng.integers(0, 256, (shape[0] * scale, shape[1] * scale, 3), dtype=np.uint8)
    return lr, ref


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="module")
def server():
    missing = _serving_missing()
    if missing:
        pytest.skip(f"needs Triton Inference Server (nvidia-pytriton) and tritonclient: {missing}")
    srv = Server("tiny-x4", instances=2, threads=1, max_megapixels=MAX_MPIX, exit_timeout=5, grace=10,
                 startup_timeout=180)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pipeline():
    import torch

    from sschsr_deploy.runtime import Pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Pipeline.from_pretrained("tiny-x4", quiet=True)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batched_server():
    """The batched interface: one instance, up to 4 queued requests run together (they wait up to 0.3 s for each
    other)."""
    missing = _serving_missing()
    if missing:
        pytest.skip(f"needs Triton Inference Server (nvidia-pytriton) and tritonclient: {missing}")
    srv = Server("tiny-x4", instances=1, threads=1, batch_requests=4, batch=4, max_queue_delay_us=300_000,
                 max_megapixels=MAX_MPIX, exit_timeout=5, grace=10, startup_timeout=180)
    srv.start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------------------------------
# without a server: the model config and the request checks, in-process


def test_model_config_lists_the_tensors():
    text = model_config(ModelSettings(instances=3, max_megapixels=2.5, queue_timeout_us=5_000_000))
    for line in ('name: "LR_HSI" data_type: TYPE_FP32 dims: [ -1, -1, -1 ]',
                 'name: "REF_RGB" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ]',
                 'name: "SCALE" data_type: TYPE_INT32 dims: [ 1 ] optional: true',
                 'name: "NODATA" data_type: TYPE_FP32 dims: [ 1 ] optional: true',
                 'name: "HR_HSI" data_type: TYPE_FP32 dims: [ -1, -1, -1 ]',
                 'name: "METADATA" data_type: TYPE_UINT8 dims: [ -1 ]',
                 "max_batch_size: 0", "instance_group [ { count: 3 kind: KIND_CPU } ]",
                 "default_timeout_microseconds: 5000000"):
        assert line in text, line
    assert ModelSettings.from_parameters({"max_megapixels": {"string_value": "2.5"}}).max_megapixels == 2.5
    with pytest.raises(InputValidationError, match="instances"):
        ModelSettings(instances=0).check()


def test_handler_refuses_bad_scenes_in_process(pipeline):
    handler = SceneHandler(pipeline, ModelSettings(max_megapixels=MAX_MPIX))
    for name, (lr, ref, scale, words) in _bad_requests().items():
        with pytest.raises(InputValidationError) as info:
            handler(lr, ref, scale)
        assert words in str(info.value), (name, str(info.value))
    lr, ref = scene(0)
    hr, meta = handler(lr, ref, np.array([4], np.int32), np.array([np.nan], np.float32))
    assert rel_err(hr, pipeline.run(lr, ref, nodata="nan")) <= 1e-6 and meta["nodata"] == "nan"
    assert json.loads(bytes(SceneHandler.encode_metadata(meta)).decode())["scale"] == 4


def test_batched_model_config():
    text = model_config(ModelSettings(batch_requests=6, batch=6))
    for line in ("max_batch_size: 6",
                 'name: "LR_HSI" data_type: TYPE_FP32 dims: [ -1, -1, -1 ] allow_ragged_batch: true',
                 'name: "REF_RGB" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] allow_ragged_batch: true',
                 'name: "SCALE" data_type: TYPE_INT32 dims: [ 1 ] optional: true }',
                 "dynamic_batching { max_queue_delay_microseconds: 0 }"):
        assert line in text, line
    unbatched = model_config(ModelSettings())
    assert "max_batch_size: 0" in unbatched and "dynamic_batching" not in unbatched
    with pytest.raises(InputValidationError, match="batch_requests"):
        ModelSettings(batch_requests=-1).check()


def test_serve_batch_requests_option_writes_the_batched_repository(tmp_path, capsys):
    from sschsr_deploy.cli import main

    assert main(["serve", "--batch-requests", "8", "--max-queue-delay-us", "2000", "--write-repository",
                 str(tmp_path / "repo")]) == 0
    text = (tmp_path / "repo" / "sschsr" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and "dynamic_batching { max_queue_delay_microseconds: 2000 }" in text
    params = {line.split('"')[1]: line for line in text.splitlines() if line.startswith("parameters")}
    assert 'string_value: "8"' in params["batch_requests"] and 'string_value: "8"' in params["batch"]  # --batch: N
    capsys.readouterr()
    assert main(["serve", "--batch-requests", "-1", "--write-repository", str(tmp_path / "bad")]) == 2
    assert "batch_requests must be a non-negative integer" in capsys.readouterr().err


def test_handler_runs_queued_scenes_together_in_process(pipeline):
    """``run_many``: every scene checked on its own (a refused one gets its error), the others run together and
    equal a run alone."""
    handler = SceneHandler(pipeline, ModelSettings(max_megapixels=MAX_MPIX))
    good = [scene(20), scene(21, (24, 20, 31))]
    bad_lr, bad_ref = scene(22)
    items = [(*good[0], None, None), (bad_lr[..., :30].copy(), bad_ref, None, None), (*good[1], np.array([4]), None)]
    results = handler.run_many(items)
    assert isinstance(results[1], InputValidationError) and "30 bands" in str(results[1])
    for (lr, ref), result in zip(good, (results[0], results[2]), strict=True):
        hr, meta = result
        assert rel_err(hr, pipeline.run(lr, ref)) <= 1e-6 and meta["hr_shape_hwc"] == list(hr.shape)
        assert meta["run_together"] == {"scenes": 2, "requests_refused": 1, "windows": 2,
                                        "forward_passes": meta["run_together"]["forward_passes"]}
        assert meta["tiling"]["plan"]["image"] == list(hr.shape[:2])  # its own plan, not the last scene's


def test_batched_request_split_and_join(pipeline):
    handler = SceneHandler(pipeline, ModelSettings(max_megapixels=MAX_MPIX))
    (lr0, ref0), (lr1, ref1) = scene(23), scene(24)
    items = SceneHandler.split_request(np.stack([lr0, lr1]), np.stack([ref0, ref1]), np.array([[4], [4]], np.int32))
    assert len(items) == 2 and items[1][0].shape == lr1.shape and int(items[1][2][0]) == 4 and items[0][3] is None
    hr, meta = SceneHandler.join_results(handler.run_many(items))
    assert hr.shape == (2, 64, 64, 31) and meta.shape[0] == 2 and meta.dtype == np.uint8
    assert rel_err(hr[1], pipeline.run(lr1, ref1)) <= 1e-6
    assert [json.loads(bytes(row).decode())["scale"] for row in meta] == [4, 4]  # padded with spaces: still JSON
    for args, words in [((lr0, ref0[None]), "rank 4"), ((lr0[None], ref0), "rank 4"),
                        ((np.stack([lr0, lr1]), ref0[None]), "REF_RGB has shape [1, 64, 64, 3] but LR_HSI holds 2")]:
        with pytest.raises(InputValidationError, match=words.replace("[", r"\[").replace("]", r"\]")):
            SceneHandler.split_request(*args)
    failed = SceneHandler.join_results(handler.run_many([(lr0, ref0, None, None), (lr1[..., :30], ref1, None, None)]))
    assert isinstance(failed, InputValidationError) and str(failed).startswith("scene 1 of the request's 2: ")


# ---------------------------------------------------------------------------------------------------------------------
# a real server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_matches_pipeline(server, pipeline, protocol):
    lr, ref = scene(0)
    expected = pipeline.run(lr, ref)
    url = server.http_url if protocol == "http" else server.grpc_url
    with Client(url, protocol) as client:
        assert client.ready()
        hr, meta = client.infer(lr, ref)
        assert hr.shape == (64, 64, 31) and hr.dtype == np.float32
        assert rel_err(hr, expected) <= 1e-6
        assert meta["scale"] == 4 and meta["hr_shape_hwc"] == [64, 64, 31]
        assert meta["model"]["weights"] == pipeline.model_info()["weights"]
        assert meta["backend"]["backend"] == "torch" and meta["timings"]["windows"] == 1
        assert meta["server"]["package"] == str(ROOT / "sschsr_deploy")  # this checkout, not another install
        # explicit scale and a nodata value (masked pixels come back as nodata)
        lr2 = lr.copy()
        lr2[3:5, 6:9] = -1.0
        expected2 = pipeline.run(lr2, ref, 4, nodata=-1.0)
        hr2, meta2 = client.infer(lr2, ref, scale=4, nodata=-1.0)
        assert meta2["nodata"] == -1.0
        assert np.array_equal(hr2 == -1.0, expected2 == -1.0) and np.any(hr2 == -1.0)
        assert rel_err(hr2, expected2) <= 1e-6


def test_nan_nodata(server, pipeline):
    lr, ref = scene(1)
    lr[0:2, 0:3] = np.nan
    expected = pipeline.run(lr, ref, nodata="nan")
    with Client(server.grpc_url, "grpc") as client:
        hr, meta = client.infer(lr, ref, nodata=float("nan"))
    assert meta["nodata"] == "nan"
    assert np.array_equal(np.isnan(hr), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert rel_err(hr[finite], expected[finite]) <= 1e-6


def test_concurrent_clients(server, pipeline):
    scenes = {seed: scene(seed) for seed in range(10, 14)}
    expected = {seed: pipeline.run(lr, ref) for seed, (lr, ref) in scenes.items()}
    results: dict[tuple[int, int], float] = {}
    errors: list[BaseException] = []
    instances: set[str] = set()

    def work(i: int, seed: int) -> None:
        protocol = "http" if i % 2 == 0 else "grpc"
        try:
            with Client(server.http_url if protocol == "http" else server.grpc_url, protocol) as client:
                for k in range(2):
                    hr, meta = client.infer(*scenes[seed])
                    results[(i, k)] = rel_err(hr, expected[seed])
                    instances.add(meta["server"]["instance"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, seed)) for i, seed in enumerate(scenes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 8 and max(results.values()) <= 1e-6
    assert len(instances) == 2  # both instances served


def _raw_http(server, inputs):
    """A request through plain tritonclient (what a client in another language sends)."""
    import tritonclient.http as th

    client = th.InferenceServerClient(server.http_url)
    try:
        tensors = []
        for name, array, dtype in inputs:
            t = th.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        return client.infer("sschsr", tensors)
    finally:
        client.close()


def _server_rss_kib(server) -> int:
    """Resident memory of the server and its backend stubs (its process group)."""
    total = 0
    pgid = server.process.pid
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return total


def _bad_requests() -> dict[str, tuple]:
    lr, ref = scene(2)
    nan = lr.copy()
    nan[5, 5, 5] = np.nan
    big_lr, big_ref = scene(3, (64, 64, 31))
    return {  # name: (lr, ref, scale, expected words)
        "bands": (lr[..., :30].copy(), ref, None, "LR_HSI has 30 bands but the served model expects 31"),
        "scale": (lr, ref, 8, "scale 8 was requested but tiny_x4.safetensors was trained for x4"),
        "nan": (nan, ref, None, "non-finite value"),
        "too small": (lr[:2, :2].copy(), ref[:8, :8].copy(), None, "too small"),
        "too large": (big_lr, big_ref, None, "over this server's limit of 0.05 MPix"),
        "reference size": (lr, ref[:60, :60].copy(), None, "REF_RGB is 60x60 but LR_HSI x scale 4 is 64x64"),
        "empty": (np.zeros((0, 16, 31), np.float32), ref, None, "too small"),
    }


def _raw_bad_requests() -> dict[str, tuple]:
    lr, ref = scene(2)
    return {  # name: (inputs, expected words in Triton's own message)
        "dtype": ([("LR_HSI", lr.astype(np.float64), "FP64"), ("REF_RGB", ref, "UINT8")], "LR_HSI"),
        "rank": ([("LR_HSI", lr[..., 0].copy(), "FP32"), ("REF_RGB", ref, "UINT8")], "LR_HSI"),
        "reference channels": ([("LR_HSI", lr, "FP32"), ("REF_RGB", np.zeros((64, 64, 4), np.uint8), "UINT8")],
                               "REF_RGB"),
        "missing input": ([("LR_HSI", lr, "FP32")], "REF_RGB"),
        "scale dtype": ([("LR_HSI", lr, "FP32"), ("REF_RGB", ref, "UINT8"),
                         ("SCALE", np.array([4.0], np.float32), "FP32")], "SCALE"),
    }


def _send_bad(server, client) -> None:
    from tritonclient.utils import InferenceServerException

    for name, (lr, ref, scale, words) in _bad_requests().items():
        with pytest.raises(InputValidationError) as info:
            client.infer(lr, ref, scale=scale)
        message = str(info.value)
        assert words in message, (name, message)
        assert "\n" not in message and "Traceback" not in message, (name, message)
    for name, (inputs, words) in _raw_bad_requests().items():
        with pytest.raises(InferenceServerException) as info:
            _raw_http(server, inputs)
        assert str(info.value.status()) == "400" and words in info.value.message(), (name, info.value.message())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests(server, pipeline, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with Client(url, protocol) as client:
        _send_bad(server, client)
        assert client.ready() and server.ready()
        lr, ref = scene(4)
        hr, _ = client.infer(lr, ref)  # still serving, right
        assert rel_err(hr, pipeline.run(lr, ref)) <= 1e-6


def test_bad_requests_do_not_grow_memory(server):
    with Client(server.http_url) as client:
        _send_bad(server, client)  # warm: every path taken once
        lr, ref = scene(5)
        client.infer(lr, ref)
        before = _server_rss_kib(server)
        for _ in range(3):
            _send_bad(server, client)
            client.infer(lr, ref)
        after = _server_rss_kib(server)
    assert before > 0
    assert after - before < 40 * 1024, f"server RSS grew by {(after - before) / 1024:.1f} MiB over 36 bad requests"


def test_metrics_and_health(server):
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/live", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="sschsr"' in text


def test_batched_server_runs_concurrent_requests_together(batched_server, pipeline):
    """Concurrent requests of different sizes (HTTP and gRPC, one of them bad) reach the instance together: the good
    ones equal the in-process pipeline and were run with others, the bad one gets its own error; a raw request of
    two scenes (what a client in another language sends) answers both."""
    import tritonclient.http as th

    data = [scene(30), scene(31, (20, 24, 31)), scene(32), scene(33, (24, 16, 31))]
    data[2] = (data[2][0][..., :30].copy(), data[2][1])  # refused: 30 bands
    expected = {i: pipeline.run(*d) for i, d in enumerate(data) if i != 2}
    out: dict[int, object] = {}

    def work(i: int) -> None:
        protocol = "http" if i % 2 == 0 else "grpc"
        url = batched_server.http_url if protocol == "http" else batched_server.grpc_url
        with Client(url, protocol) as client:
            try:
                out[i] = client.infer(*data[i])
            except BaseException as exc:  # checked below
                out[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(data))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert isinstance(out[2], InputValidationError) and "30 bands" in str(out[2])
    together = []
    for i, ref in expected.items():
        assert not isinstance(out[i], BaseException), out[i]
        hr, meta = out[i]
        assert hr.shape == ref.shape and rel_err(hr, ref) <= 1e-6
        together.append(meta["run_together"]["scenes"])
    assert max(together) >= 2, together  # the queue delay let requests meet
    with Client(batched_server.grpc_url, "grpc") as client:
        assert client.batched and client.ready()

    (lr0, ref0), (lr1, ref1) = scene(34), scene(35)
    client = th.InferenceServerClient(batched_server.http_url)
    try:
        tensors = []
        for name, array, dtype in [("LR_HSI", np.stack([lr0, lr1]), "FP32"),
                                   ("REF_RGB", np.stack([ref0, ref1]), "UINT8")]:
            t = th.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        result = client.infer("sschsr", tensors)
    finally:
        client.close()
    hr, meta = result.as_numpy("HR_HSI"), result.as_numpy("METADATA")
    assert hr.shape == (2, 64, 64, 31) and meta.shape[0] == 2
    assert rel_err(hr[0], pipeline.run(lr0, ref0)) <= 1e-6 and rel_err(hr[1], pipeline.run(lr1, ref1)) <= 1e-6
    assert json.loads(bytes(meta[1]).decode())["run_together"]["scenes"] >= 2


def test_cli_restart_on_same_ports_and_sigterm(server, pipeline, tmp_path):
    """Last: stops the module's server, then ``sschsr-deploy serve`` on the same ports; SIGTERM while a request is
    in flight: the request completes, the command exits 0."""
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    server.stop()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "sschsr_deploy.cli", "serve", "--weights", "tiny-x4", "--threads", "1",
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
           "--exit-timeout", "20", "--workdir", str(tmp_path / "work")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["ready"] and info["http"] == f"127.0.0.1:{ports[0]}" and info["grpc"] == f"127.0.0.1:{ports[1]}"
        lr, ref = scene(6, (64, 64, 31))  # 256 x 256 HR: a second or more, long enough to be in flight
        expected = pipeline.run(lr, ref)
        out: dict = {}

        def request() -> None:
            with Client(info["grpc"], "grpc") as client:
                out["result"] = client.infer(lr, ref)

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        status = proc.wait(60)
        assert status == 0, proc.stderr.read()
        hr, _ = out["result"]
        assert rel_err(hr, expected) <= 1e-6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the same Server object starts again on the same ports after the command freed them
    server.start()
    assert (server.http_port, server.grpc_port, server.metrics_port) == ports and server.ready()
