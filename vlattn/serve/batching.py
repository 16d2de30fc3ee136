"""Micro-batching: requests to one endpoint that arrive together run as one call.

A :class:`Batcher` owns a queue. Its worker takes the first waiting input, gathers whatever else
arrives within ``max_wait`` seconds (or is already waiting, up to ``max_batch``), and runs the batch
on the view's executor. While a batch runs, new requests queue up and form the next batch, so under
load batches grow by themselves and an idle server adds at most ``max_wait`` of latency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from vlattn.serve.handler import ApiError

RunBatch = Callable[[list[Any]], list[Any]]


class Batcher:
    """Queue inputs for ``run`` (a list of inputs -> a list of results in the same order).

    When a batch raises, each of its inputs is run again alone, so one bad input fails only its own
    request. ``submit`` raises :class:`ApiError` 503 when ``max_queue`` inputs are already waiting.
    """

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        *,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_queue: int = 256,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.batches = 0  # batches run so far (for tests and the health page)
        self.largest = 0
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        """Run ``item`` in the next batch and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        if self._queue.qsize() >= self.max_queue:
            raise ApiError(f"the server is busy ({self.max_queue} requests waiting); try again shortly", 503)
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def close(self) -> None:
        """Stop the worker (pending requests are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._worker
            self._worker = None

    async def _gather(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # drop timed-out requests

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            outcomes = await loop.run_in_executor(self.executor, self._run_isolated, [item for item, _ in batch])
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_isolated(self, items: list[Any]) -> list[tuple[bool, Any]]:
        try:
            results = self.run(items)
            if len(results) != len(items):
                raise RuntimeError(f"a batch of {len(items)} inputs gave {len(results)} results")
            return [(True, r) for r in results]
        except Exception as exc:
            if len(items) == 1:
                return [(False, exc)]
        return [self._run_isolated([item])[0] for item in items]
