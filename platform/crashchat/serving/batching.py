"""Dynamic batching that fills each batch while the previous one runs.

Ray Serve's ``@serve.batch`` closes the next batch ``batch_wait_timeout_s`` after its first request
arrives, even while the previous batch is still generating; the closed batch then waits for its
turn. Under load, with generations far longer than the wait, that yields batches of one to three
(measured: mostly 1 behind the router at 16 clients). :class:`GreedyBatcher` takes a batch only
when the model is free: everything queued by then, up to ``max_batch_size``, goes in. A request
that arrives at an idle model waits at most ``wait_s`` for company, so latency at low load stays
that of ``@serve.batch``.

Requests carry a key (a multiplexed model id, or one constant); a batch holds a single key, and
keys take turns by the age of their oldest request. With ``max_batch_tokens`` a batch is also
bounded by its padded size, ``len(batch) * max(cost(item))`` (prompts are left-padded to the
longest): a batch of eight 15k-token clips would not fit where eight short ones do.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[Hashable, list[T]], Awaitable[list[R]]]


class GreedyBatcher(Generic[T, R]):
    """Queue requests and run them in batches through ``run(key, items) -> results``.

    Args:
        run: Answers one batch, one result per item, in order.
        max_batch_size: Most items per batch.
        wait_s: Longest wait for company when a request finds the model idle.
        cost: Tokens an item occupies (its prompt plus its answer budget).
        max_batch_tokens: Most padded tokens per batch (``None``: bounded by count only). An
            item costing more than this still runs, alone.
    """

    def __init__(
        self,
        run: RunBatch[T, R],
        max_batch_size: int,
        wait_s: float,
        cost: Callable[[T], int] | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, wait_s)
        self.cost = cost
        self.max_batch_tokens = max_batch_tokens
        self.queues: dict[Hashable, deque[tuple[float, T, asyncio.Future[R]]]] = {}
        self.batches = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    def queued(self) -> int:
        """Requests waiting for a batch."""
        return sum(len(q) for q in self.queues.values())

    async def submit(self, item: T, key: Hashable = None) -> R:
        """The result for ``item``, once a batch containing it has run."""
        loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._loop())
        fut: asyncio.Future[R] = loop.create_future()
        self.queues.setdefault(key, deque()).append((time.monotonic(), item, fut))
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        assert self._wake is not None
        idle = True  # the worker starts idle: its first request may wait for company
        while True:
            if not self.queued():
                self._wake.clear()
                await self._wake.wait()
                idle = True
            if idle:
                await self._gather_company()
                idle = False
            key = min((q[0][0], k) for k, q in self.queues.items() if q)[1]
            batch = self._take(key)
            if batch:
                await self._run(key, batch)

    async def _gather_company(self) -> None:
        """After idling: wait up to ``wait_s`` for the batch to fill."""
        assert self._wake is not None
        deadline = time.monotonic() + self.wait_s
        while self.queued() < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _fits(self, batch: list[tuple[T, asyncio.Future[R]]], widest: int, item: T) -> bool:
        if not batch or self.cost is None or self.max_batch_tokens is None:
            return True
        return (len(batch) + 1) * max(widest, self.cost(item)) <= self.max_batch_tokens

    def _take(self, key: Hashable) -> list[tuple[T, asyncio.Future[R]]]:
        queue = self.queues[key]
        batch: list[tuple[T, asyncio.Future[R]]] = []
        widest = 0
        while queue and len(batch) < self.max_batch_size:
            _, item, fut = queue[0]
            if fut.done():  # a request cancelled while queued (client gone) is dropped
                queue.popleft()
                continue
            if not self._fits(batch, widest, item):
                break  # the rest waits for the next batch, in order
            queue.popleft()
            batch.append((item, fut))
            widest = max(widest, self.cost(item)) if self.cost else 0
        if not queue:
            del self.queues[key]
        return batch

    async def _run(self, key: Hashable, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        try:
            results = await self.run(key, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
        except Exception as exc:  # the batch's callers get the error; the loop goes on
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)
