"""Many scenes over Ray actors: the folder / manifest batch mode with a cluster behind it.

:func:`run_scenes_ray` has :func:`sschsr_deploy.batch.run_scenes`'s contract — resume (complete outputs skipped,
:func:`~sschsr_deploy.batch.is_complete`), keep going, the same :class:`~sschsr_deploy.batch.BatchSummary` JSON
(written atomically in every case) — with the scenes spread over a :class:`~.workers.WorkerPool`:

- the driver keeps a queue; each actor has one scene in flight and gets the next as soon as it returns (so a slow
  scene never holds up the rest);
- each actor writes its output itself, atomically with its sidecar (``Pipeline.run_files``): a shared file system is
  assumed; the driver only checks completeness and writes the summary;
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

from sschsr_deploy.batch import BatchSummary, SceneJob, as_jobs, is_complete
from sschsr_deploy.distributed._ray import WorkerLostError, require_ray
from sschsr_deploy.distributed.spec import ModelSpec
from sschsr_deploy.distributed.workers import Dispatcher, WorkerPool, error_text, is_worker_loss, unwrap
from sschsr_deploy.io.atomic import atomic_write_json

__all__ = ["run_scenes_ray"]

log = logging.getLogger(__name__)

PathLike = str | Path


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
) -> BatchSummary:
    """Run ``jobs`` on Ray actors that each load ``model`` once; see the module docstring.

    ``model``: a :class:`ModelSpec` (a pool of ``workers`` actors is started on the cluster at ``address`` — a local
    one when ``None`` — and closed at the end) or a running :class:`WorkerPool` (kept). ``retries``: further attempts
    of a scene after its first. ``on_result(index, row)`` is called on the driver after each scene finishes.

    Raises the first failed scene's error unless ``keep_going`` (after the scenes in flight finish and the summary
    is written); a ``KeyboardInterrupt`` also ends the run.
    """
    from tqdm.auto import tqdm

    require_ray()
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
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
            while queue or (disp is not None and disp.busy):
                while queue and stop is None:
                    i, attempt, avoid = queue[0]
                    job = jobs[i]
                    if not disp.submit((i, attempt), "run_scene", str(job.hsi), str(job.ref), str(job.out),
                                       dict(job.options), avoid=avoid, limit=1):
                        break
                    queue.pop(0)
                if not disp.busy:
                    if stop is not None or not queue:
                        break
                item = disp.wait()
                if item is None:  # an actor is back
                    continue
                (i, attempt), a, result, exc = item
                row, job = summary.scenes[i], jobs[i]
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
                        continue
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

