"""Unit: the coalescer that lets concurrent uploads share one queue call (issue 13)."""

from __future__ import annotations

import asyncio

import pytest

from raylens.cluster.coalesce import Coalescer
from raylens.errors import QueueFull, StoreUnavailable


class Recorder:
    """A stand-in queue call: records each call's items, answers item * 10 after a pause."""

    def __init__(self, fail: BaseException | None = None, cap: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail
        self.cap = cap

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await asyncio.sleep(0.01)
        if self.cap is not None and len(items) > self.cap:
            raise QueueFull(f"{len(items)} > {self.cap}")
        if self.fail is not None:
            raise self.fail
        return [i * 10 for i in items]


def test_coalescer_sends_a_lone_call_at_once_and_gives_each_caller_its_own_results() -> None:
    async def run() -> None:
        rec = Recorder()
        c = Coalescer(rec, max_items=100)
        assert await c.submit([1, 2]) == [10, 20]
        assert rec.calls == [[1, 2]]
        # Eight callers in one tick share one call; eight more that come while it is in
        # flight share the next.
        first = asyncio.gather(*(c.submit([k, k + 100]) for k in range(8)))
        await asyncio.sleep(0.001)
        second = asyncio.gather(*(c.submit([k]) for k in range(8, 16)))
        assert await first == [[k * 10, (k + 100) * 10] for k in range(8)]
        assert await second == [[k * 10] for k in range(8, 16)]
        assert rec.calls[1:] == [
            [x for k in range(8) for x in (k, k + 100)],
            list(range(8, 16)),
        ]
        assert c.calls == 3

    asyncio.run(run())


def test_coalescer_never_carries_more_than_max_items_nor_splits_a_caller() -> None:
    async def run() -> None:
        rec = Recorder()
        c = Coalescer(rec, max_items=5)
        got = await asyncio.gather(*(c.submit([k, k, k]) for k in range(6)))
        assert got == [[k * 10] * 3 for k in range(6)]
        assert all(len(call) == 3 for call in rec.calls)  # 3 + 3 > 5: one caller per call

    asyncio.run(run())


def test_coalescer_retries_each_caller_alone_when_a_shared_call_is_too_big_for_the_queue() -> None:
    """QueueFull of a shared call says nothing of each caller: alone, the small ones fit."""

    async def run() -> None:
        rec = Recorder(cap=4)
        c = Coalescer(rec, max_items=100, alone=(QueueFull,))
        first = asyncio.ensure_future(c.submit([0]))  # in flight while the others pile up
        await asyncio.sleep(0)
        small = [c.submit([k, k]) for k in (1, 2, 3)]
        big = c.submit([7] * 5)
        got = await asyncio.gather(first, *small, big, return_exceptions=True)
        assert got[:4] == [[0], [10, 10], [20, 20], [30, 30]]
        assert isinstance(got[4], QueueFull)  # too big alone, too

    asyncio.run(run())


def test_coalescer_gives_every_caller_of_a_failed_call_its_error_and_goes_on() -> None:
    async def run() -> None:
        rec = Recorder(fail=StoreUnavailable("store down"))
        c = Coalescer(rec, max_items=100, alone=(QueueFull,))
        got = await asyncio.gather(*(c.submit([k]) for k in range(4)), return_exceptions=True)
        assert all(isinstance(g, StoreUnavailable) for g in got)
        rec.fail = None
        assert await c.submit([5]) == [50]  # the next caller starts a new call

    asyncio.run(run())


def test_coalescer_drops_a_cancelled_caller_and_answers_the_others() -> None:
    async def run() -> None:
        rec = Recorder()
        c = Coalescer(rec, max_items=100)
        first = asyncio.ensure_future(c.submit([1]))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(c.submit([2]))
        kept = asyncio.ensure_future(c.submit([3]))
        await asyncio.sleep(0)
        gone.cancel()
        assert await first == [10] and await kept == [30]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert [2] not in rec.calls and all(2 not in call for call in rec.calls)

    asyncio.run(run())
