"""GreedyBatcher: full batches under load, short waits when idle, errors and keys kept apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

import pytest

from crashchat.serving.batching import GreedyBatcher


class Recorder:
    """A batch runner that takes ``seconds`` per batch and records what it was given."""

    def __init__(self, seconds: float, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[tuple[Hashable, list[int]]] = []

    async def __call__(self, key: Hashable, items: list[int]) -> list[int]:
        self.batches.append((key, list(items)))
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on} breaks the batch")
        return [i * 10 for i in items]


def test_batches_fill_while_the_previous_one_runs() -> None:
    async def main() -> tuple[list[int], Recorder]:
        rec = Recorder(0.1)
        batcher = GreedyBatcher(rec, max_batch_size=8, wait_s=0.0)
        calls = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.01)  # batch [0] is running
        for i in range(1, 17):  # arrivals spread over the run, as from many clients
            calls.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(0.003)
        return list(await asyncio.gather(*calls)), rec

    results, rec = asyncio.run(main())
    assert results == [i * 10 for i in range(17)]  # each caller gets its own answer
    # Serve's @serve.batch would have closed a batch per arrival here (wait 0): 1, 1, 1, ...
    assert [len(items) for _, items in rec.batches] == [1, 8, 8], rec.batches
    assert [i for _, items in rec.batches for i in items] == list(range(17))  # FIFO


def test_an_idle_model_waits_at_most_wait_s_for_company() -> None:
    async def main() -> tuple[float, Recorder]:
        rec = Recorder(0.0)
        batcher = GreedyBatcher(rec, max_batch_size=8, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        second = await batcher.submit(2)  # arrives within the wait: same batch
        assert await first == 10 and second == 20
        lone_start = time.monotonic()
        await batcher.submit(3)
        return time.monotonic() - lone_start, rec

    lone, rec = asyncio.run(main())
    assert [items for _, items in rec.batches] == [[1, 2], [3]]
    assert 0.15 <= lone < 1.0, lone


def test_a_full_batch_does_not_wait() -> None:
    async def main() -> float:
        batcher = GreedyBatcher(Recorder(0.0), max_batch_size=4, wait_s=5.0)
        start = time.monotonic()
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.0


def test_a_failing_batch_fails_its_callers_only() -> None:
    async def main() -> tuple[list[object], list[int]]:
        rec = Recorder(0.02, fail_on=3)
        batcher = GreedyBatcher(rec, max_batch_size=4, wait_s=0.0)
        first = await asyncio.gather(
            *(batcher.submit(i) for i in range(1, 6)), return_exceptions=True
        )
        after = await asyncio.gather(*(batcher.submit(i) for i in (7, 8)))
        return list(first), list(after)

    first, after = asyncio.run(main())
    # Batches: [1, 2, 3, 4] (holds the bad item), then [5].
    assert all(isinstance(r, ValueError) and "item 3" in str(r) for r in first[:4]), first
    assert first[4] == 50
    assert after == [70, 80]  # the batcher goes on


def test_a_batch_holds_one_key_and_keys_take_turns_by_age() -> None:
    async def main() -> Recorder:
        rec = Recorder(0.02)
        batcher = GreedyBatcher(rec, max_batch_size=8, wait_s=0.0)
        calls = [batcher.submit(0, "warm")]
        calls += [batcher.submit(i, "a" if i % 2 else "b") for i in range(1, 7)]
        await asyncio.gather(*calls)
        return rec

    rec = asyncio.run(main())
    assert rec.batches == [("warm", [0]), ("a", [1, 3, 5]), ("b", [2, 4, 6])]


def test_a_request_cancelled_while_queued_is_not_run() -> None:
    async def main() -> Recorder:
        rec = Recorder(0.1)
        batcher = GreedyBatcher(rec, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # batch [1] is running
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while its request was queued
        assert await first == 10 and await kept == 30
        with pytest.raises(asyncio.CancelledError):
            await gone
        return rec

    rec = asyncio.run(main())
    assert [items for _, items in rec.batches] == [[1], [3]]
