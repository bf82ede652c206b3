"""One very large scene over Ray actors: the driver prepares and blends, the actors run the network.

:class:`RayPipeline` is a :class:`~sschsr_deploy.runtime.Pipeline` whose backend is a stand-in describing the
actors' model (:class:`RemoteBackend`) and whose executor is :class:`RayTileExecutor`. Everything else is the
pipeline's own code, unchanged: the streamed preprocessing (:class:`~sschsr_deploy.scene.PreparedScene`), the plan,
the batches, ONE :class:`~sschsr_deploy.runtime.blender.StreamingBlender`, the :class:`~sschsr_deploy.io.hsi.HSIWriter`
with its atomic commit and sidecar, the nodata and non-finite checks. So ``run_files`` / ``run`` give the
single-process tiled result bit for bit, as long as the actors compute each batch as the single process would (same
backend, device type, batch and torch thread count: CPU kernels reduce in a thread-count-dependent order).

:class:`RayTileExecutor` sends each batch's five inputs (computed on the driver by ``PreparedScene.window``) to the
least-loaded actor, keeps at most ``max_in_flight`` batches sent or finished-but-not-yet-blended (bounded driver
memory: about ``max_in_flight`` x (inputs + output) of a batch), and yields the outputs in the plan's order — results
that finish early wait in a buffer of at most that size. A batch whose actor died is sent again (at most
``retries`` times), so each window reaches the blender exactly once. Why the driver sends inputs rather than each
actor preparing the scene: docs/scale-out.md ("Inputs: sent or prepared where they run").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from sschsr_deploy.distributed._ray import WorkerLostError
from sschsr_deploy.distributed.spec import ModelSpec
from sschsr_deploy.distributed.workers import Dispatcher, WorkerPool, error_text, is_worker_loss, unwrap
from sschsr_deploy.runtime.backend_base import Backend
from sschsr_deploy.runtime.pipeline import Pipeline
from sschsr_deploy.runtime.streams import HostBatch

__all__ = ["RayPipeline", "RayTileExecutor", "RemoteBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RemoteBackend(Backend):
    """The actors' backend as the driver's pipeline sees it: its facts (bands, scale, tile limits, batch limits,
    config, description), no model. :meth:`run` is never called (the executor sends batches to the actors)."""

    def __init__(self, info: dict[str, Any], workers: int) -> None:
        self._info = info
        self.name = info["name"]
        self.device = torch.device("cpu")  # the driver's side: host arrays only (the actors' device is described)
        self.bands = int(info["bands"])
        self.scale = info["scale"]
        self.batch_independent = bool(info["batch_independent"])
        self.tile_bounds = info["tile_bounds"]
        self.preferred_tile = info["preferred_tile"]
        self.max_batch = info["max_batch"]
        self.workers = workers

    @property
    def config(self) -> Any:
        return self._info["config"]

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("RemoteBackend runs nothing itself: batches go to the Ray actors (RayTileExecutor)")

    def describe(self) -> dict[str, Any]:
        return {**self._info["describe"], "executor": "ray", "workers": self.workers,
                "worker_device": self._info["device"], "worker_threads": self._info["threads"]}

    def model_info(self) -> dict[str, Any]:
        return dict(self._info["model_info"])


class RayTileExecutor:
    """Drop-in for :class:`~sschsr_deploy.runtime.streams.TileExecutor` that runs batches on a :class:`WorkerPool`;
    see the module docstring. ``on_result(index)`` is called on the driver as each batch's output arrives (tests).

    ``stats``: calls sent, batches resent after a worker loss, and the largest number of batches held at once."""

    def __init__(self, pool: WorkerPool, *, max_in_flight: int | None = None, retries: int = 2,
                 on_result: Callable[[int], None] | None = None) -> None:
        self.pool = pool
        self.max_in_flight = max(1, int(max_in_flight if max_in_flight is not None else 2 * len(pool)))
        self.retries = int(retries)
        self.on_result = on_result
        self.stats = {"sent": 0, "resent": 0, "max_held": 0}

    def map(self, batches: Iterable[HostBatch[T]]) -> Iterator[tuple[T, np.ndarray]]:
        """Yield ``(meta, output)`` per batch, in input order (as :meth:`TileExecutor.map`)."""
        disp = Dispatcher(self.pool)
        source = iter(batches)
        held: dict[int, HostBatch] = {}  # batch index -> batch, from sending until its output is yielded
        done: dict[int, np.ndarray] = {}
        queue: list[tuple[int, int, int | None]] = []  # (batch index, attempt, actor to avoid) waiting to be sent
        sent = nxt = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(held) < self.max_in_flight:
                    try:
                        held[sent] = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    queue.append((sent, 0, None))
                    sent += 1
                while queue:
                    i, attempt, avoid = queue[0]
                    if not disp.submit((i, attempt), "run_batch", *held[i].inputs, avoid=avoid):
                        break
                    queue.pop(0)
                    self.stats["sent"] += 1
                self.stats["max_held"] = max(self.stats["max_held"], len(held))
                if nxt in done:
                    out = done.pop(nxt)
                    batch = held.pop(nxt)
                    nxt += 1
                    yield batch.meta, out
                    continue
                if exhausted and not held:
                    return
                item = disp.wait()
                if item is None:  # an actor is back
                    continue
                (i, attempt), a, out, exc = item
                if exc is None:
                    done[i] = out
                    if self.on_result is not None:
                        self.on_result(i)
                    continue
                if not is_worker_loss(exc):
                    raise unwrap(exc) from None
                if attempt >= self.retries:
                    raise WorkerLostError(f"window batch {i}: its worker died {attempt + 1} time(s) "
                                          f"({error_text(exc).splitlines()[0][:200]})") from None
                log.warning("window batch %d: worker lost; sending it again", i)
                self.stats["resent"] += 1
                queue.insert(0, (i, attempt + 1, a))
        finally:
            disp.cancel_all()  # an error or an abandoned generator: drop the work in flight


class RayPipeline(Pipeline):
    """A :class:`~sschsr_deploy.runtime.Pipeline` whose windows run on Ray actors; see the module docstring.

    Args:
        model: a :class:`ModelSpec` (a pool of ``workers`` actors is started at ``address``, closed by
            :meth:`close`) or a running :class:`WorkerPool` (left open).
        max_in_flight: batches sent or waiting to be blended at once (default 2 per actor).
        retries: further attempts of a batch whose worker died.
        quiet: no progress bar on the driver.

    ``run_files``, ``run`` and ``run_scenes`` work as in :class:`Pipeline` (whose tiling options come from the
    spec); the sidecar's ``backend`` records ``executor: ray`` and the worker count.
    """

    def __init__(self, model: ModelSpec | WorkerPool, *, address: str | None = None, workers: int | None = None,
                 max_in_flight: int | None = None, retries: int = 2, quiet: bool = False,
                 runtime_env: dict[str, Any] | None = None, on_result: Callable[[int], None] | None = None) -> None:
        self._own_pool = not isinstance(model, WorkerPool)
        pool = WorkerPool(model, workers=workers, address=address, runtime_env=runtime_env) if self._own_pool \
            else model
        self.pool = pool
        try:
            spec = pool.spec
            info = pool.info
            o = spec.pipeline
            keep = {k: o[k] for k in ("tile", "overlap", "margin", "batch", "normalize", "output_scale", "depth")
                    if k in o}
            budget = o.get("memory_budget")
            if budget is None and o.get("tile") == "auto":  # the workers' memory, not the driver's
                dev = info["device"]
                budget = int(info["available_memory"] * (0.8 if dev.startswith("cuda") else 0.5))
            super().__init__(RemoteBackend(info, len(pool)), quiet=quiet, memory_budget=budget,
                             rgb_bands=info["rgb_bands"], model_info=info["model_info"],
                             model_wavelengths=o.get("model_wavelengths"), **keep)
            self.executor = RayTileExecutor(pool, max_in_flight=max_in_flight, retries=retries,
                                            on_result=on_result)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the actors this pipeline started (a pool given to it is left running)."""
        if self._own_pool and getattr(self, "pool", None) is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> RayPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
