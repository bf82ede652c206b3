"""Benchmarks write to a git-ignored scratch folder unless ``--publish`` is given, so running one never overwrites the
committed ``benchmarks/results/``; ``SSCHSR_BENCH_RESULTS_DIR`` overrides both (the GPU suite's ``$OUT``)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.delenv("SSCHSR_BENCH_RESULTS_DIR", raising=False)
    spec = importlib.util.spec_from_file_location("bench_common_under_test", BENCH / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _parse(mod, argv):
    ap = argparse.ArgumentParser()
    mod.add_output_arguments(ap)
    return mod.use_output_arguments(ap.parse_args(argv))


def test_scratch_by_default_published_on_request(common, monkeypatch, tmp_path):
    assert _parse(common, []) == BENCH / "results" / "local" == common.results_dir()
    assert _parse(common, ["--publish"]) == BENCH / "results"
    monkeypatch.setenv("SSCHSR_BENCH_RESULTS_DIR", str(tmp_path / "out"))
    assert _parse(common, []) == _parse(common, ["--publish"]) == tmp_path / "out"  # the override wins
    path = common.write_json("probe", {"x": 1})
    assert path == tmp_path / "out" / "probe.json" and json.loads(path.read_text()) == {"x": 1}


def test_scratch_folder_is_git_ignored():
    git = shutil.which("git")
    if git is None or not (BENCH.parent / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run([git, "check-ignore", "-q", "benchmarks/results/local/backends_cpu.json"], cwd=BENCH.parent)
    assert res.returncode == 0, "benchmarks/results/local/ is not in .gitignore"
    res = subprocess.run([git, "check-ignore", "-q", "benchmarks/results/backends_cpu.json"], cwd=BENCH.parent)
    assert res.returncode == 1  # the published results stay tracked


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py"))
def test_every_benchmark_takes_publish(script):
    """Every script that writes results parses --publish (and applies it before writing)."""
    text = (BENCH / script).read_text()
    if "write_json" not in text:
        pytest.skip(f"{script} writes no results")
    assert "add_output_arguments(" in text and "use_output_arguments(args)" in text
    assert not re.search(r"""["']results["'] /""", text)  # no path into the committed folder around results_dir()


def test_bench_script_help_lists_publish():
    res = subprocess.run([sys.executable, str(BENCH / "bench_spectral_attention.py"), "--help"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "--publish" in res.stdout, res.stderr
