"""Many scenes in one process: the model loaded once, finished scenes skipped, a bad scene not stopping the rest.

A run is a list of :class:`SceneJob` (LR cube, RGB reference, output, per-scene options) made from a folder pair
(:func:`jobs_from_folders`: cubes and references paired by file stem) or a manifest (:func:`jobs_from_manifest`:
CSV with a header, or JSON lines; relative paths are relative to the manifest). :func:`run_scenes` runs them through
one :class:`~sschsr_deploy.runtime.Pipeline`:

- **resume**: a scene whose output is complete is skipped. Complete means what a finished run leaves: the output
  file(s) and the JSON sidecar that lists them with their sizes (the sidecar is renamed into place last, after the
  whole cube; see :mod:`sschsr_deploy.io.atomic`), so a killed run never leaves a scene that looks complete. Sizes,
  not checksums, are compared: checking a resume must not read every finished output again;
- **keep going** (optional): a scene that fails with a bad-input or I/O error is recorded and the next one runs;
  otherwise the run stops at the first failure (after writing the summary);
- **summary**: per scene its status (``done`` / ``skipped`` / ``failed`` / ``not run``), the error and the timings,
  written atomically as JSON when asked (also when the run stops early or is interrupted).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError, SSCHSRError
from sschsr_deploy.io.atomic import atomic_write_json, sidecar_path
from sschsr_deploy.io.hsi import EXTENSIONS, format_from_path
from sschsr_deploy.io.rgb import RGB_EXTENSIONS

__all__ = ["BAND_MAPPINGS", "JOB_OPTIONS", "BatchSummary", "SceneJob", "as_jobs", "is_complete", "jobs_from_folders",
           "jobs_from_manifest", "parse_nodata", "run_scenes"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Per-scene options a manifest may set (the keyword arguments of ``Pipeline.run_files`` they become).
JOB_OPTIONS = ("scale", "variable", "hsi_layout", "format", "out_layout", "out_variable", "nodata", "band_mapping")
#: ``band_mapping`` values: how a cube with other band centres than the model's is mapped onto them.
BAND_MAPPINGS = ("auto", "nearest", "gaussian", "none")
_ENVI_DATA = {ext for ext, fmt in EXTENSIONS.items() if fmt == "envi" and ext != ".hdr"}


@dataclass(frozen=True)
class SceneJob:
    """One scene: inputs, output and the per-scene options (a subset of :data:`JOB_OPTIONS`)."""

    hsi: Path
    ref: Path
    out: Path
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.out.name


def is_complete(out: PathLike) -> bool:
    """Whether ``out`` is a finished output: its sidecar lists ``out`` (and any companion file, e.g. an ENVI
    header) in ``output_files`` and each listed file exists with the recorded size."""
    out = Path(out)
    side = sidecar_path(out)
    if not out.is_file() or not side.is_file():
        return False
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = meta.get("output_files") if isinstance(meta, dict) else None
    if not isinstance(files, list) or out.name not in {f.get("name") for f in files if isinstance(f, dict)}:
        return False
    for item in files:
        path = out.with_name(str(item.get("name")))
        if not path.is_file() or path.stat().st_size != item.get("bytes"):
            return False
    return True


def _scene_files(folder: Path) -> dict[str, Path]:
    """Cube files of a folder by stem; an ENVI scene is its header (data files beside a header are not scenes)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        ext = p.suffix.lower()
        if not p.is_file() or p.name.startswith(".") or ext not in EXTENSIONS:
            continue
        if ext in _ENVI_DATA and (p.with_suffix(".hdr").exists() or p.with_name(p.name + ".hdr").exists()):
            continue
        stem = p.name[: -len(".img.hdr")] if p.name.lower().endswith(".img.hdr") else p.stem
        if stem in found:
            raise InputValidationError(f"{folder}: two cubes named {stem!r} ({found[stem].name}, {p.name}); keep one")
        found[stem] = p
    return found


def jobs_from_folders(hsi_dir: PathLike, ref_dir: PathLike, out_dir: PathLike, out_ext: str = ".npy",
                      **options: Any) -> list[SceneJob]:
    """Pair every cube in ``hsi_dir`` with the reference of the same stem in ``ref_dir`` (``.png``, ``.jpg``, ``.tif``);
    outputs ``out_dir/<stem><out_ext>``. A cube without a reference is an error naming it (nothing runs)."""
    hsi_dir, ref_dir, out_dir = Path(hsi_dir), Path(ref_dir), Path(out_dir)
    for what, d in (("cube folder", hsi_dir), ("reference folder", ref_dir)):
        if not d.is_dir():
            raise InputValidationError(f"{what} {d} is not a directory")
    if not out_dir.is_dir():
        raise InputValidationError(f"output folder {out_dir} does not exist; create it first")
    if out_dir.resolve() == hsi_dir.resolve():
        raise InputValidationError(f"output folder {out_dir} is the cube folder: outputs would replace or join the "
                                   "inputs; give another output folder")
    if not out_ext.startswith("."):
        out_ext = "." + out_ext
    format_from_path(Path("x" + out_ext), options.get("format"))  # the output format is known
    options = _check_options(options, "options")
    cubes = _scene_files(hsi_dir)
    if not cubes:
        raise InputValidationError(f"no hyperspectral cubes in {hsi_dir} (extensions: {', '.join(sorted(EXTENSIONS))})")
    refs: dict[str, Path] = {}
    for p in sorted(ref_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in RGB_EXTENSIONS and not p.name.startswith("."):
            refs.setdefault(p.stem, p)
    missing = [stem for stem in cubes if stem not in refs]
    if missing:
        raise InputValidationError(
            f"no reference in {ref_dir} for {len(missing)} cube(s): {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (a reference has the cube's file stem)")
    return [SceneJob(cubes[s], refs[s], out_dir / f"{s}{out_ext}", dict(options)) for s in cubes]


def _check_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(JOB_OPTIONS))
    if unknown:
        raise InputValidationError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(JOB_OPTIONS)}")
    if options.get("scale") not in (None, ""):
        try:
            options["scale"] = int(options["scale"])
        except (TypeError, ValueError):
            raise InputValidationError(f"{where}: scale {options['scale']!r} is not an integer") from None
    if options.get("nodata") not in (None, ""):
        options["nodata"] = parse_nodata(options["nodata"], where)
    if options.get("band_mapping") not in (None, ""):
        value = options["band_mapping"]
        if not isinstance(value, str) or value.strip().lower() not in BAND_MAPPINGS:
            raise InputValidationError(f"{where}: band_mapping {value!r} is not one of {', '.join(BAND_MAPPINGS)}")
        options["band_mapping"] = value.strip().lower()
    return {k: v for k, v in options.items() if v is not None and not (isinstance(v, str) and not v.strip())}


def parse_nodata(value: Any, where: str = "nodata") -> float | str:
    """A nodata value as given (a number, or ``"nan"``): a finite float, or the string ``"nan"``."""
    if isinstance(value, str) and value.strip().lower() == "nan":
        return "nan"
    if isinstance(value, float) and value != value:  # NaN from JSON-like input
        return "nan"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputValidationError(f"{where}: nodata {value!r} is not a number or nan") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InputValidationError(f"{where}: nodata {value!r} is not a finite number or nan")
    return number


def jobs_from_manifest(path: PathLike) -> list[SceneJob]:
    """Scenes from a manifest: CSV with a header row, or JSON lines (``.jsonl`` / ``.ndjson``); columns / keys
    ``hsi``, ``ref``, ``out`` and any of :data:`JOB_OPTIONS`. Relative paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputValidationError(f"manifest not found: {path}")
    base = path.parent
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputValidationError(f"cannot read manifest {path}: {exc}") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputValidationError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputValidationError(f"{path}:{n}: each line must be a JSON object")
            rows.append((f"{path}:{n}", row))
    else:
        reader = csv.DictReader(text.splitlines())
        for n, row in enumerate(reader, 2):
            if None in row:
                raise InputValidationError(f"{path}:{n}: more fields than the header has")
            rows.append((f"{path}:{n}", {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}))
    jobs: list[SceneJob] = []
    outs: dict[Path, str] = {}
    for where, row in rows:
        row = dict(row)
        missing = [k for k in ("hsi", "ref", "out") if not row.get(k)]
        if missing:
            raise InputValidationError(f"{where}: missing {', '.join(missing)}")
        hsi, ref, out = (base / Path(str(row.pop(k))) for k in ("hsi", "ref", "out"))
        key = Path(os.path.abspath(out))
        if key in outs:
            raise InputValidationError(f"{where}: output {out} is also the output of {outs[key]}")
        if key == Path(os.path.abspath(hsi)):
            raise InputValidationError(f"{where}: the output {out} is the input cube")
        outs[key] = where
        jobs.append(SceneJob(hsi, ref, out, _check_options(row, where)))
    if not jobs:
        raise InputValidationError(f"manifest {path} lists no scenes")
    return jobs


@dataclass
class BatchSummary:
    """What happened to each scene; ``ok`` when none failed."""

    scenes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.scenes:
            out[s["status"]] = out.get(s["status"], 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return all(s["status"] in ("done", "skipped") for s in self.scenes)

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "seconds": round(self.seconds, 3), "scenes": self.scenes}


def run_scenes(
    pipeline: Any,
    jobs: Iterable[SceneJob],
    *,
    resume: bool = True,
    keep_going: bool = False,
    summary_path: PathLike | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Run ``jobs`` through ``pipeline`` (its ``run_files``), in order; see the module docstring.

    Raises the first scene's error unless ``keep_going``; a ``KeyboardInterrupt`` also ends the run. The summary is
    written (atomically) to ``summary_path`` in every case, the scenes not reached marked ``not run``.
    """
    from tqdm.auto import tqdm

    jobs = list(jobs)
    summary = BatchSummary([{"hsi": str(j.hsi), "ref": str(j.ref), "out": str(j.out), "status": "not run"}
                            for j in jobs])
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(jobs), unit="scene", desc="scenes", disable=not progress or len(jobs) < 2,
                  dynamic_ncols=True) as bar:
            for job, row in zip(jobs, summary.scenes, strict=True):
                _run_one(pipeline, job, row, resume, keep_going)
                bar.update(1)
    finally:
        summary.seconds = time.perf_counter() - t0
        if summary_path is not None:
            atomic_write_json(summary_path, summary.to_json())
    return summary


def _run_one(pipeline: Any, job: SceneJob, row: dict[str, Any], resume: bool, keep_going: bool) -> None:
    if resume and is_complete(job.out):
        row["status"] = "skipped"
        log.info("%s: complete output exists, skipped", job.out)
        return
    t = time.perf_counter()
    try:
        pipeline.run_files(job.hsi, job.ref, job.options.get("scale"), job.out,
                           **{k: v for k, v in job.options.items() if k != "scale"})
    except (SSCHSRError, OSError, MemoryError) as exc:
        row.update(status="failed", error=_error_text(exc), seconds=round(time.perf_counter() - t, 3))
        if not keep_going:
            raise
        log.warning("%s failed: %s", job.out.name, row["error"])
        return
    except BaseException as exc:  # a bug or an interruption: recorded, then it ends the run
        last = getattr(pipeline, "last_output", None)
        if last is not None and Path(last) == job.out:  # a signal held during the commit: the scene is complete
            row.update(status="done", seconds=round(time.perf_counter() - t, 3),
                       timings=dict(getattr(pipeline, "last_timings", {}) or {}))
        else:
            row.update(status="failed", error=_error_text(exc))
        raise
    row.update(status="done", seconds=round(time.perf_counter() - t, 3),
               timings=dict(getattr(pipeline, "last_timings", {}) or {}))


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_jobs(items: Sequence[SceneJob | tuple | dict]) -> list[SceneJob]:
    """Scenes given in Python: :class:`SceneJob`, ``(hsi, ref, out)`` tuples or dicts with those keys + options."""
    out: list[SceneJob] = []
    for i, item in enumerate(items):
        if isinstance(item, SceneJob):
            out.append(item)
        elif isinstance(item, tuple | list) and len(item) == 3:
            out.append(SceneJob(Path(item[0]), Path(item[1]), Path(item[2])))
        elif isinstance(item, dict):
            d = dict(item)
            try:
                hsi, ref, o = Path(d.pop("hsi")), Path(d.pop("ref")), Path(d.pop("out"))
            except KeyError as exc:
                raise InputValidationError(f"scene {i}: missing {exc.args[0]!r}") from None
            out.append(SceneJob(hsi, ref, o, _check_options(d, f"scene {i}")))
        else:
            raise InputValidationError(
                f"scene {i}: give a SceneJob, (hsi, ref, out) or a dict; got {type(item).__name__}")
    return out
