"""Run batches of windows through a backend; on a GPU, host-to-device copies, compute and copies back overlap.

:class:`TileExecutor` turns an iterator of host batches (numpy arrays) into an iterator of host outputs, in order.

On a CUDA device it keeps ``depth`` batches in flight (a bounded queue, so host and device memory stay flat):

- inputs are staged in pinned (page-locked) host buffers and uploaded with ``non_blocking`` copies on an *upload*
  stream;
- the backend runs on a *compute* stream that waits for the upload's event;
- the output is copied into a pinned host buffer on a *download* stream that waits for the compute event;
- the host waits only for the oldest batch's download event, so while it blends batch *i* and prepares batch
  *i + depth*, the GPU uploads, computes and downloads the batches in between.

Device tensors are created on one stream and used on another, so each is tagged with ``record_stream`` for the
caching allocator. CUDA graphs are not used (the model's Python-side validation and data-dependent shapes in the
patch matcher make capture fragile); they remain possible future work for fixed shapes.

**Unverified on hardware**: this machine has no GPU. The CUDA path is written to the documented ``torch.cuda`` stream
and event API and is exercised by ``tests/test_pipeline.py::test_cuda_streams_match_cpu`` (marked ``gpu``) wherever a
GPU is present. On the CPU the same :meth:`TileExecutor.map` runs each batch synchronously.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from sschsr_deploy.runtime.backend_base import Backend

__all__ = ["HostBatch", "TileExecutor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class HostBatch(Generic[T]):
    """One batch on the host: the five model inputs (float32, B x C x h x w) and an opaque ``meta`` handed back."""

    inputs: tuple[np.ndarray, ...]
    meta: T


class TileExecutor:
    """Map host batches through ``backend``; see the module docstring. ``depth`` ≥ 2 batches in flight on CUDA."""

    def __init__(self, backend: Backend, depth: int = 2) -> None:
        self.backend = backend
        self.device = torch.device(backend.device)
        self.depth = max(2, int(depth))
        self.cuda = self.device.type == "cuda"

    def map(self, batches: Iterable[HostBatch[T]]) -> Iterator[tuple[T, np.ndarray]]:
        """Yield ``(meta, output)`` per batch, in input order; ``output`` is float32 B x bands x h x w numpy.

        The yielded array is only valid until the next item is requested (it may be a reused pinned buffer): consume
        or copy it before advancing.
        """
        if self.cuda:
            yield from self._map_cuda(batches)
        else:
            yield from self._map_sync(batches)

    # ------------------------------------------------------------------ CPU: synchronous
    def _map_sync(self, batches: Iterable[HostBatch[T]]) -> Iterator[tuple[T, np.ndarray]]:
        for batch in batches:
            inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in batch.inputs]
            out = self.backend.run(*inputs)
            yield batch.meta, out.detach().to("cpu", torch.float32).numpy()

    # ------------------------------------------------------------------ CUDA: pinned buffers + 3 streams
    def _map_cuda(self, batches: Iterable[HostBatch[T]]) -> Iterator[tuple[T, np.ndarray]]:  # pragma: no cover - GPU
        dev = self.device
        upload = torch.cuda.Stream(dev)
        compute = torch.cuda.Stream(dev)
        download = torch.cuda.Stream(dev)
        host_in: list[list[torch.Tensor] | None] = [None] * self.depth
        host_out: list[torch.Tensor | None] = [None] * self.depth
        in_flight: collections.deque[tuple[int, torch.cuda.Event, Any, int]] = collections.deque()
        for i, batch in enumerate(batches):
            while len(in_flight) >= self.depth:
                yield self._retire(in_flight, host_out)
            slot = i % self.depth
            n = int(batch.inputs[0].shape[0])
            bufs = host_in[slot]
            if bufs is None or any(b.shape[0] < n or b.shape[1:] != a.shape[1:] for b, a in
                                   zip(bufs, batch.inputs, strict=True)):
                bufs = [torch.empty(a.shape, dtype=torch.float32, pin_memory=True) for a in batch.inputs]
                host_in[slot] = bufs
            for buf, arr in zip(bufs, batch.inputs, strict=True):
                buf[:n].copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
            with torch.cuda.stream(upload):
                dev_in = [b[:n].to(dev, non_blocking=True) for b in bufs]
                up_done = torch.cuda.Event()
                up_done.record(upload)
            compute.wait_event(up_done)
            with torch.cuda.stream(compute):
                for t in dev_in:
                    t.record_stream(compute)
                out = self.backend.run(*dev_in).float()
                comp_done = torch.cuda.Event()
                comp_done.record(compute)
            download.wait_event(comp_done)
            with torch.cuda.stream(download):
                out.record_stream(download)
                hb = host_out[slot]
                if hb is None or hb.shape[0] < n or hb.shape[1:] != out.shape[1:]:
                    hb = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
                    host_out[slot] = hb
                hb[:n].copy_(out, non_blocking=True)
                done = torch.cuda.Event()
                done.record(download)
            in_flight.append((slot, done, batch.meta, n))
            del dev_in, out
        while in_flight:
            yield self._retire(in_flight, host_out)

    @staticmethod
    def _retire(in_flight: collections.deque, host_out: list) -> tuple[Any, np.ndarray]:  # pragma: no cover - GPU
        slot, done, meta, n = in_flight.popleft()
        done.synchronize()
        return meta, host_out[slot][:n].numpy()
