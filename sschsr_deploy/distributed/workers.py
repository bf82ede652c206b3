"""The Ray workers: one actor per GPU (or per CPU slot) that loads the model once and runs scenes or windows.

:class:`SceneWorker` is a plain class (so this module imports without Ray); :class:`WorkerPool` turns it into Ray
actors. Fault policy, chosen here and used by both executors:

- actors restart when their process dies (``max_restarts=-1``: the restarted actor loads the model again in
  ``__init__``) — so a pool survives a killed or OOM-killed process and keeps its size;
- Ray does **not** retry the tasks (``max_task_retries=0``): the driver does, so it can count the attempts per scene /
  window, bound them (``retries``), send the work to the least-loaded actor (usually another one) and report a scene
  that kept failing instead of looping. A restart loop of one actor is bounded by those per-item attempts too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import numpy as np

from sschsr_deploy.distributed._ray import WorkerLostError, connect, require_ray
from sschsr_deploy.distributed.spec import ModelSpec
from sschsr_deploy.errors import InputValidationError, SSCHSRError

__all__ = ["Dispatcher", "SceneWorker", "WorkerPool", "error_text", "is_worker_loss"]

log = logging.getLogger(__name__)


def error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SceneWorker:
    """Body of a Ray actor: builds the spec's pipeline once; runs whole scenes (:meth:`run_scene`) or window batches
    (:meth:`run_batch`). A model that fails to load is kept as an error and raised by :meth:`info` (so the driver
    sees the real exception, not a dead actor)."""

    def __init__(self, spec: ModelSpec) -> None:
        from sschsr_deploy.allocator import tune_allocator

        self.allocator = tune_allocator()  # an actor is a process of ours: the CLI's allocator settings
        self.spec = spec
        self.error: BaseException | None = None
        self.pipe = None
        self.started = time.time()
        self.warmup_s = 0.0
        try:
            self.pipe = spec.build()
            if getattr(self.pipe.backend, "compiled", False):  # compile for the one window size before any scene
                self.warmup_s = self.pipe.warmup()
        except Exception as exc:  # reported through info()
            self.error = exc

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict[str, Any]:
        """What the driver needs to plan and describe runs: the backend's facts and this process."""
        if self.error is not None:
            raise self.error
        from sschsr_deploy.runtime.planner import available_memory

        pipe = self.pipe
        b = pipe.backend
        dev = str(b.device)
        return {
            "pid": os.getpid(), "host": socket.gethostname(), "device": dev,
            "name": b.name, "bands": b.bands, "scale": b.scale, "batch_independent": b.batch_independent,
            # the pipeline's limits: a compiled model's one window size included (the driver plans the windows)
            "tile_bounds": pipe.limits.bounds, "preferred_tile": pipe.limits.preferred, "max_batch": b.max_batch,
            "config": b.config, "describe": b.describe(), "model_info": pipe.model_info(),
            "rgb_bands": list(pipe.rgb_bands), "model_wavelengths": pipe.model_wavelengths,
            "available_memory": int(available_memory(dev)),
            "threads": _torch_threads(),
        }

    def run_scene(self, hsi: str, ref: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
        """One scene through ``Pipeline.run_files`` (atomic output + sidecar). Input / I/O errors come back as a
        ``failed`` result carrying the exception (``retry``: whether another attempt can help); bugs raise.
        ``worker``: ``host:pid`` of this process (kept in the summary row)."""
        if self.error is not None:
            raise self.error
        t = time.perf_counter()
        opts = dict(options)
        scale = opts.pop("scale", None)
        try:
            self.pipe.run_files(hsi, ref, scale, out, **opts)
        except (SSCHSRError, OSError, MemoryError) as exc:
            return {"status": "failed", "error": error_text(exc), "exception": exc, "worker": self._where(),
                    "seconds": round(time.perf_counter() - t, 3), "retry": not isinstance(exc, SSCHSRError)}
        return {"status": "done", "seconds": round(time.perf_counter() - t, 3), "worker": self._where(),
                "timings": dict(self.pipe.last_timings or {})}

    def compute_scene(self, lr: np.ndarray, ref: np.ndarray, facts: dict[str, Any], metadata: Any,
                      options: dict[str, Any]) -> dict[str, Any]:
        """One scene in memory, for a driver that writes the outputs (``run_scenes_ray(outputs="driver")``): ``lr``
        (H x W x C, as read by the driver), its ``facts`` (:func:`~sschsr_deploy.runtime.pipeline.input_facts`) and
        ``metadata`` (the cube's CubeMetadata), ``ref`` (the decoded reference) and the compute options
        (``scale``, ``nodata``, ``band_mapping``) through ``Pipeline.compute_scene``. Returns ``done`` with ``hr``
        (H x W x C float32), ``metadata``, ``record`` and ``timings`` (what ``write_output`` needs), or ``failed``
        as :meth:`run_scene` does; nothing is written here."""
        if self.error is not None:
            raise self.error
        from sschsr_deploy.io.cube import HSICube

        t = time.perf_counter()
        # Ray hands arguments over as read-only views of its object store; the preprocessing may expect writable ones
        lr = lr if lr.flags.writeable else lr.copy()
        ref = ref if ref.flags.writeable else ref.copy()
        try:
            cube = HSICube(lr, (0, 1, 2), path=facts["hsi"], format=facts["hsi_format"],
                           variable=facts["hsi_variable"], layout=facts["hsi_layout"], metadata=metadata)
            res = self.pipe.compute_scene(cube, ref, options.get("scale"), nodata=options.get("nodata"),
                                          band_mapping=options.get("band_mapping", "auto"))
        except (SSCHSRError, OSError, MemoryError) as exc:
            return {"status": "failed", "error": error_text(exc), "exception": exc, "worker": self._where(),
                    "seconds": round(time.perf_counter() - t, 3), "retry": not isinstance(exc, SSCHSRError)}
        return {"status": "done", "seconds": round(time.perf_counter() - t, 3), "worker": self._where(), **res}

    @staticmethod
    def _where() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def run_batch(self, *inputs: np.ndarray) -> np.ndarray:
        """The network's output (float32 B x bands x h x w) for one batch of the five inputs (B x C x h x w)."""
        if self.error is not None:
            raise self.error
        from sschsr_deploy.runtime.streams import HostBatch

        # Ray hands arguments over as read-only views of its object store; torch wants writable arrays
        batch = HostBatch(tuple(a if a.flags.writeable else a.copy() for a in inputs), None)
        for _meta, out in self.pipe.executor.map([batch]):
            return np.array(out, dtype=np.float32, copy=True)  # the executor may reuse its (pinned) buffer
        raise RuntimeError("the executor returned nothing")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def is_worker_loss(exc: BaseException) -> bool:
    """Whether ``exc`` (from ``ray.get``) means the worker process or its result was lost (retry elsewhere), not
    that the work itself raised."""
    from ray import exceptions as rex

    lost = tuple(getattr(rex, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                           "ObjectLostError", "OwnerDiedError", "WorkerCrashedError",
                                           "NodeDiedError", "ObjectReconstructionFailedError")
                 if hasattr(rex, n))
    return isinstance(exc, lost)


def unwrap(exc: BaseException) -> BaseException:
    """The exception raised inside a task, from Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class WorkerPool:
    """``workers`` Ray actors, each holding the spec's pipeline (see the module docstring for the fault policy).

    ``workers=None``: one per GPU in the cluster for a CUDA device, else one per CPU (``cpus_per_worker`` each).
    Connects to Ray first (:func:`~sschsr_deploy.distributed._ray.connect`: ``address`` or a local cluster). Waits
    until every actor has loaded the model; a model that cannot load raises its own error here. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self, spec: ModelSpec, *, workers: int | None = None, address: str | None = None,
                 runtime_env: dict[str, Any] | None = None, cpus_per_worker: float | None = None,
                 gpus_per_worker: float | None = None) -> None:
        ray = connect(address, runtime_env)
        self.spec = spec
        if gpus_per_worker is None:
            gpus_per_worker = 1 if spec.uses_gpu else 0
        if cpus_per_worker is None:
            cpus_per_worker = spec.threads or 1
        if workers is None:
            total = ray.cluster_resources()
            if gpus_per_worker:
                workers = int(total.get("GPU", 0) // gpus_per_worker)
                if workers < 1:
                    raise InputValidationError(f"device {spec.device} asks for GPUs but the Ray cluster has none "
                                               "(start the nodes with GPUs, or run on device cpu)")
            else:
                workers = max(1, int(total.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputValidationError(f"workers must be a positive integer; got {workers!r}")
        remote = ray.remote(SceneWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                 max_restarts=-1, max_task_retries=0)
        self.actors = [remote.remote(spec) for _ in range(workers)]
        self.infos: list[dict[str, Any]] = []
        try:
            for ref in [a.info.remote() for a in self.actors]:
                try:
                    self.infos.append(ray.get(ref))
                except Exception as exc:
                    cause = unwrap(exc)
                    if isinstance(cause, SSCHSRError | OSError):
                        raise cause from None
                    raise WorkerLostError(f"a worker could not start: {error_text(cause)}") from exc
        except BaseException:
            self.close()
            raise
        log.info("%d Ray worker(s) ready: %s on %s", workers, self.infos[0]["name"],
                 ", ".join(sorted({f"{i['host']}:{i['device']}" for i in self.infos})))

    def __len__(self) -> int:
        return len(self.actors)

    @property
    def info(self) -> dict[str, Any]:
        return self.infos[0]

    def pids(self) -> list[int]:
        """The actors' current process ids (they change when an actor restarts)."""
        ray = require_ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def restart(self, index: int) -> None:
        """Kill actor ``index``'s process; it restarts (its work in flight fails over to the driver's retry)."""
        require_ray().kill(self.actors[index], no_restart=False)

    def close(self) -> None:
        ray = require_ray()
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Dispatcher:
    """Sends work to a pool's actors and collects it, for both executors.

    Each item goes to the least-loaded actor that is up (``avoid``: the one it just failed on, if another is as
    free). An actor whose process died restarts (see the module docstring); Ray refuses calls made while it
    restarts at once (``ActorUnavailableError``, the same error a call in flight gets when its process dies, so the
    two cannot be told apart: both count as an attempt). So no actor is trusted before it answers: each is probed
    (a ``pid`` call) when the dispatcher starts and again every ``probe_s`` after it failed, and gets work only once
    the probe answers. An actor that cannot come back (``ActorDiedError`` on a probe) stays out; with none left,
    :class:`WorkerLostError`.
    """

    def __init__(self, pool: WorkerPool, probe_s: float = 0.5) -> None:
        self.ray = require_ray()
        self.pool = pool
        self.load = [0] * len(pool)
        self.down: dict[int, float] = dict.fromkeys(range(len(pool)), 0.0)  # actor -> time of its next probe
        self.dead: set[int] = set()
        self.probes: dict[Any, int] = {}
        self.tasks: dict[Any, tuple[Any, int]] = {}  # ref -> (key, actor)
        self.probe_s = probe_s

    def up(self) -> list[int]:
        return [a for a in range(len(self.load)) if a not in self.down and a not in self.dead]

    def has_slot(self, limit: int) -> bool:
        return any(self.load[a] < limit for a in self.up())

    def submit(self, key: Any, method: str, *args: Any, avoid: int | None = None, limit: int | None = None) -> bool:
        """Send ``key``'s work; False when no actor that is up has a free slot (``limit`` calls each)."""
        cands = [a for a in self.up() if limit is None or self.load[a] < limit]
        if not cands:
            return False
        a = min(cands, key=lambda k: (self.load[k], k == avoid, k))
        ref = getattr(self.pool.actors[a], method).remote(*args)
        self.tasks[ref] = (key, a)
        self.load[a] += 1
        return True

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    def _probe_due(self) -> None:
        now = time.monotonic()
        for a, when in list(self.down.items()):
            if when <= now and a not in self.probes.values():
                self.probes[self.pool.actors[a].pid.remote()] = a

    def _mark_down(self, a: int) -> None:
        if a not in self.dead:
            self.down.setdefault(a, time.monotonic() + self.probe_s)

    def wait(self) -> tuple[Any, int, Any, BaseException | None] | None:
        """The next finished item: ``(key, actor, value, error)`` (``error`` None on success), or ``None`` when an
        actor that was down (or not yet probed) answers (free to take work)."""
        from ray import exceptions as rex

        while True:
            if not self.up() and not self.down:
                raise WorkerLostError("no worker left: every actor died and cannot restart")
            self._probe_due()
            refs = list(self.tasks) + list(self.probes)
            if not refs:
                time.sleep(self.probe_s / 5)
                continue
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=self.probe_s)
            if not ready:
                continue
            ref = ready[0]
            if ref in self.probes:
                a = self.probes.pop(ref)
                try:
                    self.ray.get(ref)
                except rex.ActorUnavailableError:
                    self.down[a] = time.monotonic() + self.probe_s
                except Exception:  # noqa: BLE001 - died for good (restarts exhausted or cannot be placed)
                    self.down.pop(a, None)
                    self.dead.add(a)
                    log.warning("worker %d is gone for good", a)
                else:
                    self.down.pop(a, None)
                    log.info("worker %d is back", a)
                    return None
                continue
            key, a = self.tasks.pop(ref)
            self.load[a] -= 1
            try:
                return key, a, self.ray.get(ref), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                if is_worker_loss(exc):
                    self._mark_down(a)
                return key, a, None, exc

    def cancel_all(self, kill: bool = False) -> None:
        """Drop the work in flight (``kill``: restart the actors running it, which stops a running call)."""
        for ref, (_key, a) in list(self.tasks.items()):
            try:
                if kill:
                    self.pool.restart(a)
                else:
                    self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort
                pass
        self.tasks.clear()
