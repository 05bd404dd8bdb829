"""A small adaptive micro-batcher: concurrent requests share one model call.

Each upload is decoded and validated on its own (a bad file gets its own 4xx and never fails a
batch); only the prepared pixel arrays meet here. While the model runs, new requests queue up and
go together in the next call (up to `max_batch_size`); a lone request waits at most `max_latency_ms`
for company, so batches grow with load and latency stays low when traffic is light. Each batch's size
goes to `observe` (the service passes a Prometheus histogram's), so nothing here grows with uptime.

BentoML's own adaptive batching (`@bentoml.api(batchable=True)`) measured 0.4-0.7x this throughput at 8-32
clients on the project's 2-core machine, and answered some requests 500 under load (BENCHMARKS.md,
"BentoML's native adaptive batching vs the hand-written batcher").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np


def size_buckets(max_batch_size: int) -> list[int]:
    """Histogram buckets for batch sizes: 1, 2, 4, ... and max_batch_size itself."""
    return sorted({min(2 ** i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})


class MicroBatcher:
    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch_size: int,
                 max_latency_ms: float, observe: Callable[[int], object] = lambda size: None) -> None:
        self.run_batch, self.max_batch_size, self.max_wait = run_batch, max_batch_size, max_latency_ms / 1000.0
        self.observe = observe  # called with each batch's size
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: np.ndarray) -> np.ndarray:
        """The model's output row for `item`, computed in a batch with whatever else is waiting."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list:
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return jobs

    async def _serve(self) -> None:
        while True:
            jobs = await self._collect()
            self.observe(len(jobs))
            try:
                outputs = await asyncio.to_thread(self.run_batch, np.stack([item for item, _ in jobs]))
            except Exception as exc:  # the model failed: every caller in this batch hears about it
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), row in zip(jobs, outputs):
                if not future.done():
                    future.set_result(row)
