"""Fault injection on the output side (issue #22): a full disk, signals at fixed points of a CLI run, a failing sidecar,
two writers on one output, non-finite network outputs. Nothing may be lost or half-written: the final name holds the
previous output (and its sidecar) or a new complete pair, never a mix; temp files are removed or, after SIGKILL,
removed by the next run.

Signals are sent to real CLI subprocesses stopped at a named point by the testing hook ``SSCHSR_DEPLOY_FAULT_POINT``
(the process SIGSTOPs itself there; see :mod:`sschsr_deploy.io.atomic`). A full disk is simulated without root by
``RLIMIT_FSIZE`` (with SIGXFSZ ignored, writes and ``posix_fallocate`` past it fail with EFBIG), and as root by a
1 MiB tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sschsr_deploy.cli import main
from sschsr_deploy.data import make_scene
from sschsr_deploy.errors import NonFiniteOutputError, OutputSpaceError
from sschsr_deploy.io import HSIWriter, atomic, load_hsi, write_hsi, write_rgb
from sschsr_deploy.io.atomic import clean_stale_temps, sidecar_path, verify_sidecar
from sschsr_deploy.io.signals import FAULT_POINT_ENV

pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux")]

REPO = Path(__file__).resolve().parents[2]
HR_BYTES = 128 * 128 * 31 * 4  # the float32 output of the 32 x 32 x 31 LR cube at x4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """LR cube + reference, and a previous output pair (out.npy + out.npy.json) made by an earlier run."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    s = make_scene(seed=21, size=(128, 128), scale=4)
    write_hsi(folder / "lr.npy", s.lr_hsi)
    write_rgb(folder / "ref.png", s.ref_rgb)
    prev = folder / "previous"
    prev.mkdir()
    assert main(_args(folder, prev / "out.npy", "--output-scale", "unit")) == 0
    return folder


def _args(folder, out, *extra):
    return ["infer", "--hsi", str(folder / "lr.npy"), "--ref", str(folder / "ref.png"), "--out", str(out),
            "--weights", "tiny-x4", "--quiet", *extra]


def _with_previous(inputs, tmp_path):
    """tmp_path with a copy of the previous pair; returns (output path, {name: bytes})."""
    for name in ("out.npy", "out.npy.json"):
        shutil.copy2(inputs / "previous" / name, tmp_path / name)
    return tmp_path / "out.npy", {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def _temps(folder):
    return sorted(p for p in os.listdir(folder) if ".partial" in p)


def _reset_signals():
    # a CI runner may start us with SIGINT / SIGHUP ignored (background job, nohup): the CLI keeps ignored signals
    # ignored, so give the child the default dispositions a terminal job has
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _spawn(args, point=None, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop(FAULT_POINT_ENV, None)
    if point:
        env[FAULT_POINT_ENV] = point
    return subprocess.Popen([sys.executable, "-m", "sschsr_deploy.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_reset_signals, **kw)


def _state(pid):
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2]
    return None


def _wait_stopped(proc, timeout=180):
    """Wait until ``proc`` stopped itself at its fault point."""
    t0 = time.monotonic()
    while _state(proc.pid) != "T":
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before its fault point: {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the run never reached its fault point")
        time.sleep(0.05)


def _signal_at(proc, sig):
    _wait_stopped(proc)
    os.kill(proc.pid, sig)
    if sig != signal.SIGKILL:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


# ------------------------------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_while_writing_keeps_the_previous_pair(inputs, tmp_path, sig, code):
    out, before = _with_previous(inputs, tmp_path)
    proc = _spawn(_args(inputs, out), point="writing")
    _wait_stopped(proc)
    assert len(_temps(tmp_path)) == 1  # the run is inside its temp file
    rc, err = _signal_at(proc, sig)
    assert rc == code, err
    lines = [line for line in err.strip().splitlines() if line.startswith("sschsr-deploy:")]
    assert lines == [f"sschsr-deploy: interrupted ({signal.Signals(sig).name}); no output was written"], err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before and not _temps(tmp_path)


def test_sigterm_before_the_output_exists(inputs, tmp_path):
    out, before = _with_previous(inputs, tmp_path)
    rc, err = _signal_at(_spawn(_args(inputs, out), point="before-output"), signal.SIGTERM)
    assert rc == 143 and "interrupted (SIGTERM)" in err
    assert _snapshot(tmp_path) == before


def test_sigterm_during_the_renames_finishes_the_pair_first(inputs, tmp_path):
    # the output is renamed, the sidecar not yet: SIGTERM is held until both are in place, then acted on
    out, before = _with_previous(inputs, tmp_path)
    proc = _spawn(_args(inputs, out), point="renamed")
    _wait_stopped(proc)
    assert (tmp_path / "out.npy").read_bytes() != before["out.npy"]  # the new output is in place ...
    assert verify_sidecar(out)  # ... beside the previous sidecar: detectably not a pair
    rc, err = _signal_at(proc, signal.SIGTERM)
    assert rc == 143 and f"interrupted (SIGTERM); {out} was written before it stopped" in err
    assert verify_sidecar(out) == [] and not _temps(tmp_path)
    assert json.loads(sidecar_path(out).read_text())["output_scale"] == "input"  # this run's, not the previous


def test_sigkill_leaves_temps_that_the_next_run_removes(inputs, tmp_path, caplog):
    out, before = _with_previous(inputs, tmp_path)
    rc, _ = _signal_at(_spawn(_args(inputs, out), point="writing"), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    stale = _temps(tmp_path)
    assert len(stale) == 1 and (tmp_path / stale[0]).stat().st_size >= HR_BYTES  # reserved in full
    assert {k: v for k, v in _snapshot(tmp_path).items() if ".partial" not in k} == before
    # the next writer in that folder removes it (its owner is gone) and says so
    with caplog.at_level(logging.WARNING, logger="sschsr_deploy.io.atomic"):
        write_hsi(tmp_path / "other.npy", np.zeros((4, 4, 3), np.float32))
    assert not _temps(tmp_path)
    assert any("removed the stale temp file" in r.getMessage() and stale[0] in r.getMessage() for r in caplog.records)


def test_sigkill_between_output_and_sidecar_is_detectable(inputs, tmp_path):
    out, before = _with_previous(inputs, tmp_path)
    rc, _ = _signal_at(_spawn(_args(inputs, out), point="renamed"), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert (tmp_path / "out.npy.json").read_bytes() == before["out.npy.json"]
    problems = verify_sidecar(out)
    assert problems and "does not match" in problems[0]
    assert clean_stale_temps(tmp_path)  # the sidecar's temp file, removed by the next run
    assert not _temps(tmp_path)


_API_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from sschsr_deploy.io import HSIWriter

    cube = np.ones((64, 64, 31), np.float32)
    with HSIWriter(sys.argv[1], cube.shape) as w:
        w.write_rows(0, cube[:8])  # stops here (fault point "writing")
        w.write_rows(8, cube[8:])
    print("finished")
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_python_api_removes_its_temp_file_on_sigterm(tmp_path, sig):
    # no CLI: the open HSIWriter turns SIGTERM / SIGHUP (still at their default action) into Terminated
    out = tmp_path / "out.npy"
    out.write_bytes(b"previous")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env[FAULT_POINT_ENV] = "writing"
    proc = subprocess.Popen([sys.executable, "-c", _API_CHILD, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_reset_signals)
    rc, err = _signal_at(proc, sig)
    assert rc == 128 + sig and err == "", err  # exits like the shell reports a kill by that signal, no traceback
    assert sorted(os.listdir(tmp_path)) == ["out.npy"] and out.read_bytes() == b"previous"


def test_writers_leave_the_signal_handlers_as_they_found_them(tmp_path):
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(s) for s in signals]
    cube = np.ones((8, 8, 3), np.float32)
    with HSIWriter(tmp_path / "a.npy", cube.shape) as w:
        w.write(cube)
        w.commit(sidecar={"test": True})
    with pytest.raises(RuntimeError), HSIWriter(tmp_path / "b.npy", cube.shape):
        raise RuntimeError("boom")
    assert [signal.getsignal(s) for s in signals] == before
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "a.npy.json"]


def test_stale_temps_of_unknown_owners_are_reported_not_removed(tmp_path, caplog):
    legacy = tmp_path / ".out.0123abcd.partial.npy"  # the naming of earlier versions: no pid
    other_host = tmp_path / ".out.12345-zzzz-abcdef.partial.npy"  # not our pattern (host tag is hex): ignored
    foreign = tmp_path / f".out.1-{'0000' if atomic._host_tag() != '0000' else '0001'}-abcdef.partial.npy"
    alive = tmp_path / f".out.{os.getppid()}-{atomic._host_tag()}-abcdef.partial.npy"  # a live process's
    for p in (legacy, other_host, foreign, alive):
        p.write_bytes(b"x")
    old = time.time() - 2 * 3600
    for p in (legacy, other_host, foreign):
        os.utime(p, (old, old))
    with caplog.at_level(logging.WARNING, logger="sschsr_deploy.io.atomic"):
        assert clean_stale_temps(tmp_path) == []
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert legacy.name in messages and foreign.name in messages and alive.name not in messages
    assert all(p.exists() for p in (legacy, other_host, foreign, alive))


# --------------------------------------------------------------------------------------------- two writers, sidecar


def test_two_writers_on_one_output_leave_one_matching_pair(inputs, tmp_path):
    # both stop inside their commit (output renamed, sidecar not); the second must wait on the folder lock instead
    out = tmp_path / "out.npy"
    a = _spawn(_args(inputs, out), point="renamed")
    b = _spawn(_args(inputs, out, "--output-scale", "unit"), point="renamed")
    try:
        t0 = time.monotonic()
        while _state(a.pid) != "T" and _state(b.pid) != "T":
            assert a.poll() is None and b.poll() is None and time.monotonic() - t0 < 240
            time.sleep(0.05)
        first, second = (a, b) if _state(a.pid) == "T" else (b, a)
        # wait until the second has written its sidecar's temp file: it is then at (or blocked on) the lock
        t0 = time.monotonic()
        while not any(f".{second.pid}-" in p and p.endswith(".partial.json") for p in os.listdir(tmp_path)):
            assert second.poll() is None and time.monotonic() - t0 < 240
            time.sleep(0.05)
        time.sleep(1.0)
        assert _state(second.pid) != "T"  # blocked on the lock, not past it
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(60) == 0
        _wait_stopped(second)  # now it holds the lock
        assert verify_sidecar(out) != []  # its output is in place, the first one's sidecar still beside it
        os.kill(second.pid, signal.SIGCONT)
        assert second.wait(60) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert verify_sidecar(out) == [] and not _temps(tmp_path)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["output_scale"] == ("unit" if second is b else "input")


def test_failed_sidecar_write_keeps_the_previous_pair(inputs, tmp_path, monkeypatch, capsys):
    out, before = _with_previous(inputs, tmp_path)

    def full(path, obj):
        Path(path).write_bytes(b"{")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("sschsr_deploy.io.hsi.write_json_file", full)
    assert main(_args(inputs, out)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------- disk full

_CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    import numpy as np
    from sschsr_deploy.errors import OutputSpaceError
    from sschsr_deploy.io import HSIWriter, atomic

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    folder, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    cube = np.ones((128, 128, 31), np.float32)
    import sschsr_deploy.io.hsi as hsi
    checked = hsi.check_space
    for fmt, ext in [("npy", ".npy"), ("tiff", ".tif"), ("envi", ".img"), ("h5", ".h5"), ("npz", ".npz"),
                     ("mat", ".mat"), ("mat73", ".mat")]:
        path = os.path.join(folder, f"out_{fmt}{ext}")
        for skip_check in (False, True):  # the check before writing, then the reservation / the write itself
            hsi.check_space = (lambda path, need: None) if skip_check else checked
            try:
                with HSIWriter(path, cube.shape, format=fmt) as w:
                    w.write(cube)
            except OutputSpaceError as exc:
                print(fmt, skip_check, "refused:", exc)
            else:
                raise SystemExit(f"{fmt}: written past the file size limit")
            assert not os.listdir(folder), os.listdir(folder)
""")


def test_file_size_limit_is_an_error_not_a_crash(tmp_path):
    # RLIMIT_FSIZE: no root needed; posix_fallocate and writes past it fail with EFBIG (SIGXFSZ ignored)
    limit = 1 << 20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(limit)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 14
    for line in lines:  # refused by the check before writing, and by the reservation when the check is skipped
        assert "refused: not enough space for" in line, line
        assert f"have {limit} bytes (the file size limit, ulimit -f)" in line, line


def test_cli_refuses_before_any_compute_when_the_output_cannot_fit(inputs, tmp_path, monkeypatch, capsys):
    from sschsr_deploy.runtime.pipeline import Pipeline

    out, before = _with_previous(inputs, tmp_path)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=HR_BYTES // 2))

    def no_compute(*a, **k):
        raise AssertionError("preprocessing ran although the output cannot fit")

    monkeypatch.setattr(Pipeline, "prepare", no_compute)
    assert main(_args(inputs, out)) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"sschsr-deploy: error: not enough space for {out}: need {HR_BYTES + (1 << 16)} bytes, "
                   f"have {HR_BYTES // 2} bytes free in {tmp_path}")
    assert _snapshot(tmp_path) == before


def test_fallocate_unsupported_falls_back_to_a_free_space_check(tmp_path, monkeypatch):
    cube = np.random.default_rng(0).random((40, 30, 5)).astype(np.float32)

    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    write_hsi(tmp_path / "ok.npy", cube)  # room enough: written as usual
    np.testing.assert_array_equal(np.load(tmp_path / "ok.npy"), cube)
    real = shutil.disk_usage
    calls = []

    def filling(p):  # the disk fills up between the writer's check and its reservation
        calls.append(p)
        return real(p)._replace(free=10**12 if len(calls) == 1 else 1000)

    monkeypatch.setattr(shutil, "disk_usage", filling)
    with pytest.raises(OutputSpaceError, match="not enough space for .*late.npy: need 24128 bytes, have 1000 bytes"):
        HSIWriter(tmp_path / "late.npy", cube.shape)
    assert len(calls) >= 2 and sorted(os.listdir(tmp_path)) == ["ok.npy"]


_TMPFS_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import sschsr_deploy.io.hsi as hsi
    from sschsr_deploy.errors import OutputSpaceError
    from sschsr_deploy.io import HSIWriter

    hsi.check_space = lambda path, need: None  # reach the writing on the full file system (before: SIGBUS, h5 SIGSEGV)
    folder = sys.argv[1]
    cube = np.ones((128, 128, 31), np.float32)
    for fmt, ext in [("npy", ".npy"), ("tiff", ".tif"), ("envi", ".img"), ("h5", ".h5"), ("mat73", ".mat")]:
        try:
            with HSIWriter(os.path.join(folder, "out" + ext), cube.shape, format=fmt) as w:
                w.write(cube)
        except OutputSpaceError as exc:
            print(exc)
        assert not os.listdir(folder), os.listdir(folder)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_tmpfs_is_an_error_not_sigbus(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, "-c", _TMPFS_CHILD, str(mnt)], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:])  # -7 (SIGBUS) before the fix
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 5 and all(f"not enough space for {mnt}" in line for line in lines), lines
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --------------------------------------------------------------------------------------------------------- non-finite


def test_nan_weights_refuse_the_output(inputs, tmp_path):
    import torch

    from sschsr_deploy import Pipeline

    out, before = _with_previous(inputs, tmp_path)
    pipe = Pipeline.from_pretrained("tiny-x4", quiet=True)
    with torch.no_grad():
        for p in pipe.backend.model.parameters():
            p.fill_(float("nan"))
    n = HR_BYTES // 4
    with pytest.raises(NonFiniteOutputError, match=rf"produced {n} non-finite values \({n} NaN, 0 infinite"):
        pipe.run_files(inputs / "lr.npy", inputs / "ref.png", None, out)
    assert _snapshot(tmp_path) == before


def test_infinite_values_are_counted_and_nothing_is_written(inputs, tmp_path, monkeypatch, capsys):
    from sschsr_deploy.runtime import backends

    real = backends.TorchBackend.run

    def some_inf(self, *x):
        y = real(self, *x).clone()
        y[0, 3, 10, :7] = float("inf")  # 7 values of band 3, row 10 (one whole-image window)
        return y

    monkeypatch.setattr(backends.TorchBackend, "run", some_inf)
    out, before = _with_previous(inputs, tmp_path)
    assert main(_args(inputs, out, "--tile", "whole")) == 2
    err = capsys.readouterr().err
    assert "the network produced 7 non-finite values (0 NaN, 7 infinite" in err and "RuntimeWarning" not in err
    assert _snapshot(tmp_path) == before


def test_overflowing_input_range_is_never_an_exit_0_file(inputs, tmp_path, capsys):
    # a float64 cube near 1e300: refused on input (scene checks) or on output (non-finite), never written
    lr = load_hsi(inputs / "lr.npy").astype(np.float64) * 1e300
    np.save(tmp_path / "huge.npy", lr)
    out = tmp_path / "out.npy"
    rc = main(["infer", "--hsi", str(tmp_path / "huge.npy"), "--ref", str(inputs / "ref.png"), "--out", str(out),
               "--weights", "tiny-x4", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "RuntimeWarning" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["huge.npy"]
