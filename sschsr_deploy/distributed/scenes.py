"""Many scenes over Ray actors: the folder / manifest batch mode with a cluster behind it.

:func:`run_scenes_ray` has :func:`sschsr_deploy.batch.run_scenes`'s contract — resume (complete outputs skipped,
:func:`~sschsr_deploy.batch.is_complete`), keep going, the same :class:`~sschsr_deploy.batch.BatchSummary` JSON
(written atomically in every case) — with the scenes spread over a :class:`~.workers.WorkerPool`:

- the driver keeps a queue; each actor has one scene in flight and gets the next as soon as it returns (so a slow
  scene never holds up the rest);
- ``outputs="worker"`` (default): each actor reads its scene's inputs and writes its output itself, atomically with
  its sidecar (``Pipeline.run_files``): a shared file system is assumed; the driver only checks completeness and
  writes the summary;
- ``outputs="driver"``: no file system is shared with the workers. The driver reads each scene's inputs (the LR cube
  whole, its metadata, the decoded reference) when an actor is free and sends them through Ray's object store; the
  actor runs the scene in memory (``Pipeline.compute_scene``) and returns the HR cube with what the sidecar needs;
  the driver writes it atomically with its sidecar (``write_output``: the very output ``run_files`` writes). Memory
  on the driver / its object store: at most one scene per actor in flight (its inputs, then its HR cube) plus the
  one being written; a retried scene is read again. While the driver writes a scene, the actor that computed it has
  already been given the next one;
- a scene whose actor died (killed, OOM, node lost) or that raised a bug / ``OSError`` / ``MemoryError`` is sent
  again, to the least-loaded actor, at most ``retries`` more times; then it is ``failed`` with the last error (and
  the run stops unless ``keep_going``). A bad-input error (:class:`~sschsr_deploy.errors.SSCHSRError`) is not retried:
  it fails the same way everywhere. If the dead actor had already committed the scene, the retry is not run (the
  output is complete: ``done``). Rows carry ``worker`` (``host:pid`` that ran the scene) besides
  :func:`~sschsr_deploy.batch.run_scenes`'s keys, and ``attempts`` when retried;
- an interrupted driver (Ctrl-C) writes the summary (scenes in flight: ``not run``) and kills the actors running
  them, so no scene is half-written behind its back (their temp files are removed by the next run on that host);
  a rerun skips the complete scenes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.batch import BatchSummary, SceneJob, as_jobs, is_complete
from sschsr_deploy.distributed._ray import WorkerLostError, require_ray
from sschsr_deploy.distributed.spec import ModelSpec
from sschsr_deploy.distributed.workers import Dispatcher, WorkerPool, error_text, is_worker_loss, unwrap
from sschsr_deploy.errors import SSCHSRError
from sschsr_deploy.io.atomic import atomic_write_json

__all__ = ["run_scenes_ray"]

log = logging.getLogger(__name__)

PathLike = str | Path

OUTPUTS = ("worker", "driver")
# driver mode: where each per-scene option (sschsr_deploy.batch.JOB_OPTIONS) is used
_READ_OPTIONS = ("variable", "hsi_layout")
_COMPUTE_OPTIONS = ("scale", "nodata", "band_mapping")
_WRITE_OPTIONS = ("format", "out_layout", "out_variable")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(options) - set(_READ_OPTIONS + _COMPUTE_OPTIONS + _WRITE_OPTIONS))
    if unknown:  # what run_files(**options) raises in worker mode
        raise TypeError(f"unexpected scene option(s): {', '.join(unknown)}")
    return tuple({k: options[k] for k in names if k in options}  # type: ignore[return-value]
                 for names in (_READ_OPTIONS, _COMPUTE_OPTIONS, _WRITE_OPTIONS))


def _read_scene(job: SceneJob, bands: int | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Any,
                                                           dict[str, Any], dict[str, Any]]:
    """Driver mode: a scene's inputs as ``run_files`` reads them (the output path checked first, as it does)."""
    from sschsr_deploy.io.atomic import check_writable
    from sschsr_deploy.io.hsi import format_from_path, read_hsi
    from sschsr_deploy.io.rgb import read_rgb
    from sschsr_deploy.runtime.pipeline import input_facts

    read, compute, write = _split_options(dict(job.options))
    format_from_path(check_writable(job.out), write.get("format"))
    with read_hsi(job.hsi, variable=read.get("variable"), layout=read.get("hsi_layout"), bands=bands) as cube:
        lr = np.array(cube.to_numpy(), order="C", copy=True)  # owned: the file is closed below
        facts, metadata = input_facts(job.hsi, job.ref, cube), cube.metadata
    ref = read_rgb(job.ref)
    return lr, ref, facts, metadata, compute, write


def _failure(exc: Exception, seconds: float, **extra: Any) -> dict[str, Any]:
    """A driver-side error as a scene result, classified as the actors classify theirs (bad input: not retried)."""
    return {"status": "failed", "error": error_text(exc), "exception": exc, **extra, "seconds": round(seconds, 3),
            "retry": not isinstance(exc, SSCHSRError)}


def run_scenes_ray(
    model: ModelSpec | WorkerPool,
    jobs: Iterable[SceneJob | tuple | dict],
    *,
    address: str | None = None,
    workers: int | None = None,
    resume: bool = True,
    keep_going: bool = False,
    retries: int = 2,
    summary_path: PathLike | None = None,
    progress: bool = True,
    runtime_env: dict[str, Any] | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
    outputs: str = "worker",
) -> BatchSummary:
    """Run ``jobs`` on Ray actors that each load ``model`` once; see the module docstring.

    ``model``: a :class:`ModelSpec` (a pool of ``workers`` actors is started on the cluster at ``address`` — a local
    one when ``None`` — and closed at the end) or a running :class:`WorkerPool` (kept). ``retries``: further attempts
    of a scene after its first. ``on_result(index, row)`` is called on the driver after each scene finishes.
    ``outputs``: ``"worker"`` (each actor reads its inputs and writes its output on a shared file system) or
    ``"driver"`` (the driver reads the inputs, sends them to the actors and writes the outputs they return).

    Raises the first failed scene's error unless ``keep_going`` (after the scenes in flight finish and the summary
    is written); a ``KeyboardInterrupt`` also ends the run.
    """
    from tqdm.auto import tqdm

    require_ray()
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be 'worker' or 'driver'; got {outputs!r}")
    driver = outputs == "driver"
    jobs = as_jobs(list(jobs))
    summary = BatchSummary([{"hsi": str(j.hsi), "ref": str(j.ref), "out": str(j.out), "status": "not run"}
                            for j in jobs])
    t0 = time.perf_counter()
    own = not isinstance(model, WorkerPool)
    pool: WorkerPool | None = None
    disp: Dispatcher | None = None
    try:
        queue: list[tuple[int, int, int | None]] = []  # (job index, attempt, actor to avoid), taken from the front
        for i, job in enumerate(jobs):
            if resume and is_complete(job.out):
                summary.scenes[i]["status"] = "skipped"
                log.info("%s: complete output exists, skipped", job.out)
            else:
                queue.append((i, 0, None))
        with tqdm(total=len(jobs), unit="scene", desc="scenes", disable=not progress or len(jobs) < 2,
                  dynamic_ncols=True) as bar:
            bar.update(len(jobs) - len(queue))
            if queue:
                pool = WorkerPool(model, workers=workers, address=address, runtime_env=runtime_env) if own else model
                disp = Dispatcher(pool)
            stop: BaseException | None = None
            sent: dict[int, tuple[dict[str, Any], Any, dict[str, Any], float]] = {}  # driver mode, per scene in flight
            pending: tuple[int, int, int, dict[str, Any]] | None = None  # driver mode: computed, to be written

            def finish(i: int, attempt: int, a: int | None, result: dict[str, Any] | None,
                       exc: BaseException | None) -> None:
                nonlocal stop
                row, job = summary.scenes[i], jobs[i]
                sent.pop(i, None)
                if exc is not None:  # the actor died or refused the call, or a bug raised inside it
                    cause = unwrap(exc)
                    lost = is_worker_loss(exc)
                    why = f"worker lost ({error_text(exc).splitlines()[0][:200]})" if lost else error_text(cause)
                    result = {"status": "failed", "error": why, "retry": True,
                              "exception": WorkerLostError(f"{job.out.name}: {why}") if lost else cause}
                if result["status"] == "failed" and result.get("retry") and attempt < retries:
                    if is_complete(job.out):  # the lost worker had committed it before dying
                        result = {"status": "done", "note": "committed by a worker lost before it answered"}
                    else:
                        log.warning("%s: attempt %d failed (%s); retrying", job.out.name, attempt + 1,
                                    result["error"])
                        queue.insert(0, (i, attempt + 1, a))
                        return
                err = result.pop("exception", None)
                result.pop("retry", None)
                row.update(result)
                if attempt:
                    row["attempts"] = attempt + 1
                bar.update(1)
                if on_result is not None:
                    on_result(i, row)
                if row["status"] == "failed":
                    if not keep_going and stop is None:
                        stop = err if err is not None else WorkerLostError(row["error"])
                    log.warning("%s failed: %s", job.out.name, row["error"])

            def write(i: int, a: int, result: dict[str, Any]) -> dict[str, Any]:
                """Driver mode: the returned HR cube into its output, as run_files would have written it."""
                from sschsr_deploy.runtime.pipeline import write_output

                facts, _meta, opts, read_s = sent[i]
                t = time.perf_counter()
                timings = dict(result.get("timings") or {})
                for key in ("preprocess_s", "total_s"):  # the driver's read is part of the preprocessing
                    timings[key] = round(float(timings.get(key, 0.0)) + read_s, 4)
                try:
                    write_output(jobs[i].out, result["hr"], inputs=facts, record=result["record"],
                                 metadata=result["metadata"], timings=timings, **opts)
                except Exception as exc:  # noqa: BLE001 - recorded (and retried) like an actor's failure
                    return _failure(exc, read_s + result["seconds"] + time.perf_counter() - t,
                                    worker=result["worker"])
                return {"status": "done", "seconds": round(read_s + result["seconds"] + time.perf_counter() - t, 3),
                        "worker": result["worker"], "timings": timings}

            bands = pool.info.get("bands") if pool is not None else None
            while queue or pending is not None or (disp is not None and disp.busy):
                while queue and stop is None:
                    i, attempt, avoid = queue[0]
                    job = jobs[i]
                    if not driver:
                        if not disp.submit((i, attempt), "run_scene", str(job.hsi), str(job.ref), str(job.out),
                                           dict(job.options), avoid=avoid, limit=1):
                            break
                        queue.pop(0)
                        continue
                    if not disp.has_slot(1):  # read a scene only when an actor can take it at once
                        break
                    queue.pop(0)
                    t = time.perf_counter()
                    try:
                        lr, ref, facts, meta, compute, opts = _read_scene(job, bands)
                    except Exception as exc:  # noqa: BLE001 - recorded (and retried) like an actor's failure
                        finish(i, attempt, avoid, _failure(exc, time.perf_counter() - t), None)
                        continue
                    sent[i] = (facts, meta, opts, time.perf_counter() - t)
                    disp.submit((i, attempt), "compute_scene", lr, ref, facts, meta, compute, avoid=avoid, limit=1)
                    del lr, ref  # in the object store now; a retry reads the scene again
                if pending is not None:  # written after the actor that computed it got its next scene
                    i, attempt, a, result = pending
                    pending = None
                    finish(i, attempt, a, write(i, a, result), None)
                    del result
                    continue
                if not disp.busy:
                    if stop is not None or not queue:
                        break
                item = disp.wait()
                if item is None:  # an actor is back
                    continue
                (i, attempt), a, result, exc = item
                if driver and exc is None and result["status"] == "done":
                    pending = (i, attempt, a, result)
                    continue
                finish(i, attempt, a, result, exc)
        if stop is not None:
            raise stop
    except BaseException:
        if disp is not None and disp.busy:  # interrupted: stop the scenes in flight (an owned pool is closed below)
            disp.cancel_all(kill=not own)
        raise
    finally:
        if own and pool is not None:
            pool.close()
        summary.seconds = time.perf_counter() - t0
        if summary_path is not None:
            atomic_write_json(summary_path, summary.to_json())
    return summary

