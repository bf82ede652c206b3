"""The torch-free native library builds with CMake (CPU only) and its C++ unit tests pass under ctest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cmake_build_and_ctest(tmp_path: Path):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake / ctest not installed")
    if not any((ROOT / "csrc" / "tests").glob("test_*.cpp")):
        pytest.skip("no C++ unit tests in csrc/tests")
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    steps = [
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DSSCHSR_WITH_CUDA=OFF",
         *generator],
        ["cmake", "--build", str(build), "-j", "2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ]
    for cmd in steps:
        proc = _run(cmd, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "tests passed" in proc.stdout and "0 tests failed" in proc.stdout, proc.stdout[-2000:]
