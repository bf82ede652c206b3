"""Folders and manifests of scenes: pairing, manifest parsing, resume, keep-going and the summary (a stand-in pipeline
that writes outputs the way run_files does; the real pipeline runs in the CLI tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sschsr_deploy.batch import SceneJob, as_jobs, is_complete, jobs_from_folders, jobs_from_manifest, run_scenes
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import sidecar_path
from sschsr_deploy.io.hsi import HSIWriter


class FakePipeline:
    """Writes a tiny output + sidecar like run_files; fails on scenes whose cube name contains 'bad'."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.last_timings = {"total_s": 0.01}

    def run_files(self, hsi, ref, scale, out, **options):
        self.calls.append((Path(hsi).name, scale, options))
        if "bad" in Path(hsi).name:
            raise InputValidationError(f"{hsi}: the cube has 30 bands but the model expects 31")
        if "boom" in Path(hsi).name:
            raise RuntimeError("a bug")
        with HSIWriter(out, (2, 2, 1)) as writer:  # output + sidecar committed together, as run_files does
            writer.write(np.ones((2, 2, 1), np.float32))
            return writer.commit(sidecar={"scene": Path(hsi).name})


def _scenes(tmp_path: Path, names: list[str]) -> tuple[Path, Path, Path]:
    hsi, ref, out = tmp_path / "lr", tmp_path / "rgb", tmp_path / "out"
    for d in (hsi, ref, out):
        d.mkdir()
    for n in names:
        np.save(hsi / f"{n}.npy", np.zeros((2, 2, 2), np.float32))
        (ref / f"{n}.png").write_bytes(b"png")
    return hsi, ref, out


def test_folders_pair_by_stem_and_envi_scenes_are_headers(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["a", "b"])
    (hsi / "c.hdr").write_text("ENVI\n")
    (hsi / "c.img").write_bytes(b"\0" * 8)  # the header's data file: not a scene of its own
    (hsi / "notes.txt").write_text("x")
    (ref / "c.jpg").write_bytes(b"jpg")
    jobs = jobs_from_folders(hsi, ref, out, ".h5", scale=4)
    assert [(j.hsi.name, j.ref.name, j.out.name) for j in jobs] == [
        ("a.npy", "a.png", "a.h5"), ("b.npy", "b.png", "b.h5"), ("c.hdr", "c.jpg", "c.h5")]
    assert jobs[0].options == {"scale": 4}


def test_folders_missing_reference_and_bad_folders(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["a", "b"])
    (ref / "b.png").unlink()
    with pytest.raises(InputValidationError, match="no reference .* for 1 cube.*: b"):
        jobs_from_folders(hsi, ref, out)
    with pytest.raises(InputValidationError, match="does not exist"):
        jobs_from_folders(hsi, ref, tmp_path / "nope")
    with pytest.raises(InputValidationError, match="unknown option"):
        jobs_from_folders(hsi, ref, out, tile=3)
    with pytest.raises(InputValidationError, match="is the cube folder"):
        jobs_from_folders(hsi, ref, tmp_path / "lr" / ".." / "lr")


def test_manifest_csv_and_jsonl(tmp_path):
    (tmp_path / "m.csv").write_text("hsi,ref,out,scale,variable\nlr/a.mat,rgb/a.png,out/a.npy,4,cube\n"
                                    "/abs/b.npy,rgb/b.png,out/b.tif,,\n")
    jobs = jobs_from_manifest(tmp_path / "m.csv")
    assert jobs[0] == SceneJob(tmp_path / "lr/a.mat", tmp_path / "rgb/a.png", tmp_path / "out/a.npy",
                               {"scale": 4, "variable": "cube"})
    assert jobs[1].hsi == Path("/abs/b.npy") and jobs[1].options == {}
    (tmp_path / "m.jsonl").write_text('{"hsi": "a.npy", "ref": "a.png", "out": "o.npy", "out_layout": "chw"}\n\n')
    assert jobs_from_manifest(tmp_path / "m.jsonl")[0].options == {"out_layout": "chw"}


@pytest.mark.parametrize("text, suffix, match", [
    ("hsi,ref\na.npy,a.png\n", ".csv", "missing out"),
    ("hsi,ref,out,tile\na,b,c,128\n", ".csv", "unknown option.*tile"),
    ("hsi,ref,out\na,b,c\nd,e,c\n", ".csv", "also the output of"),
    ("hsi,ref,out,scale\na,b,c,four\n", ".csv", "scale 'four' is not an integer"),
    ("hsi,ref,out\nx/a.npy,b,x/../x/a.npy\n", ".csv", "m.csv:2: the output .* is the input cube"),
    ("hsi,ref,out\n", ".csv", "lists no scenes"),
    ('{"hsi": 1\n', ".jsonl", "not JSON"),
    ("[1, 2]\n", ".jsonl", "JSON object"),
])
def test_bad_manifests(tmp_path, text, suffix, match):
    path = tmp_path / f"m{suffix}"
    path.write_text(text)
    with pytest.raises(InputValidationError, match=match):
        jobs_from_manifest(path)


def test_resume_skips_complete_outputs_only(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["a", "b", "c"])
    jobs = jobs_from_folders(hsi, ref, out)
    pipe = FakePipeline()
    assert run_scenes(pipe, jobs[:1], progress=False).ok
    assert is_complete(out / "a.npy")
    np.save(out / "b.npy", np.zeros(3))  # an output without its sidecar: not complete
    np.save(out / "c.npy", np.zeros(3))  # a sidecar whose size does not match (a killed commit): not complete
    sidecar_path(out / "c.npy").write_text(sidecar_path(out / "a.npy").read_text().replace('"a.npy"', '"c.npy"'))
    pipe = FakePipeline()
    summary = run_scenes(pipe, jobs, progress=False)
    assert [s["status"] for s in summary.scenes] == ["skipped", "done", "done"]
    assert [c[0] for c in pipe.calls] == ["b.npy", "c.npy"]
    assert run_scenes(FakePipeline(), jobs, resume=False, progress=False).counts == {"done": 3}


def test_keep_going_records_the_bad_scene_and_writes_the_summary(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["a", "bad", "c"])
    jobs = jobs_from_folders(hsi, ref, out)
    summary = run_scenes(FakePipeline(), jobs, keep_going=True, summary_path=tmp_path / "summary.json",
                         progress=False)
    assert not summary.ok and summary.counts == {"done": 2, "failed": 1}
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["counts"] == {"done": 2, "failed": 1}
    assert "30 bands but the model expects 31" in data["scenes"][1]["error"]
    assert data["scenes"][0]["timings"] == {"total_s": 0.01}


def test_without_keep_going_the_run_stops_and_says_what_did_not_run(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["a", "bad", "c"])
    with pytest.raises(InputValidationError):
        run_scenes(FakePipeline(), jobs_from_folders(hsi, ref, out), summary_path=tmp_path / "s.json",
                   progress=False)
    data = json.loads((tmp_path / "s.json").read_text())
    assert [s["status"] for s in data["scenes"]] == ["done", "failed", "not run"]
    assert not sidecar_path(out / "c.npy").exists()


def test_a_bug_is_not_swallowed_by_keep_going(tmp_path):
    hsi, ref, out = _scenes(tmp_path, ["boom", "c"])
    with pytest.raises(RuntimeError, match="a bug"):
        run_scenes(FakePipeline(), jobs_from_folders(hsi, ref, out), keep_going=True, progress=False)


def test_as_jobs():
    jobs = as_jobs([("a.npy", "a.png", "o.npy"), {"hsi": "b", "ref": "c", "out": "d", "scale": "8"}])
    assert jobs[0].out == Path("o.npy") and jobs[1].options == {"scale": 8}
    with pytest.raises(InputValidationError, match="missing 'out'"):
        as_jobs([{"hsi": "b", "ref": "c"}])


def test_nodata_and_band_mapping_options(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"hsi": "a", "ref": "b", "out": "c", "nodata": -9999, "band_mapping": "Gaussian"}\n'
        '{"hsi": "a", "ref": "b", "out": "d", "nodata": "NaN", "band_mapping": "none"}\n'
        '{"hsi": "a", "ref": "b", "out": "e", "nodata": null, "band_mapping": ""}\n')
    assert [j.options for j in jobs_from_manifest(tmp_path / "m.jsonl")] == [
        {"nodata": -9999.0, "band_mapping": "gaussian"}, {"nodata": "nan", "band_mapping": "none"}, {}]
    (tmp_path / "m.csv").write_text("hsi,ref,out,nodata\na,b,c, 0.5 \n")
    assert jobs_from_manifest(tmp_path / "m.csv")[0].options == {"nodata": 0.5}
    for row, match in (('"nodata": "abc"', "m.jsonl:1: nodata 'abc' is not a number or nan"),
                       ('"nodata": true', "nodata True is not a number"),
                       ('"nodata": "inf"', "nodata 'inf' is not a finite number"),
                       ('"band_mapping": "x"', "m.jsonl:1: band_mapping 'x' is not one of auto, nearest, gaussian"),
                       ('"band_mapping": 3', "band_mapping 3 is not one of")):
        (tmp_path / "m.jsonl").write_text(f'{{"hsi": "a", "ref": "b", "out": "c", {row}}}\n')
        with pytest.raises(InputValidationError, match=match):
            jobs_from_manifest(tmp_path / "m.jsonl")


def test_folder_options_unset_are_not_passed(tmp_path):
    """Options given as None (a command line's unset flags) do not reach run_files."""
    hsi, ref, out = _scenes(tmp_path, ["a"])
    (job,) = jobs_from_folders(hsi, ref, out, ".npy", scale=None, out_layout=None, nodata=None, variable="cube")
    assert job.options == {"variable": "cube"}
    pipe = FakePipeline()
    assert run_scenes(pipe, [job], progress=False).ok
    assert pipe.calls == [("a.npy", None, {"variable": "cube"})]


def test_an_interruption_after_the_commit_counts_the_scene_done(tmp_path):
    """A signal held during the commit's renames is raised after them: the scene is complete, and says so."""
    hsi, ref, out = _scenes(tmp_path, ["a", "b"])

    class InterruptedAfterCommit(FakePipeline):
        last_output = None

        def run_files(self, hsi, ref, scale, out, **options):
            self.last_output = None
            super().run_files(hsi, ref, scale, out, **options)
            self.last_output = Path(out)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenes(InterruptedAfterCommit(), jobs_from_folders(hsi, ref, out), summary_path=tmp_path / "s.json",
                   progress=False)
    data = json.loads((tmp_path / "s.json").read_text())
    assert [s["status"] for s in data["scenes"]] == ["done", "not run"]
    assert is_complete(out / "a.npy")
