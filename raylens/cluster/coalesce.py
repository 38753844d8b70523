"""Coalescer: calls that arrive while one is in flight go together in the next one.

An upload without an Idempotency-Key is one queue call (one Ray round trip, one store
transaction) when it comes alone; under load the calls of many concurrent uploads carry all
their jobs at once. Nothing waits on a timer: an idle system sends each call at once, and the
batch is what piled up during the previous call. Each caller gets back its own slice of the
results, in order, only once the call that carried its items returned (so invariant 1 holds
per request: its jobs are durable before it is answered).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs `call(items)` for batches of callers' items: one call in flight at a time.

    `max_items` bounds what one call carries (a caller's items are never split; a caller with
    more than max_items goes alone). When a call that carried several callers raises one of
    `alone` (an error whose answer depends on the call's size, such as QueueFull), each caller
    is retried in a call of its own, so one caller's items never make another's fail. Any
    other error is every carried caller's error, as it would have been alone.
    """

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[list[R]]],
        max_items: int,
        alone: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._call = call
        self._max = max(1, max_items)
        self._alone = alone
        self._pending: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._draining: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self.calls = 0  # calls made, for tests and metrics

    async def submit(self, items: list[T]) -> list[R]:
        """The results of `items`, in order, once a call carrying them returned."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]]]]:
        """The oldest callers whose items fit in one call (at least one caller)."""
        group: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        size = 0
        while self._pending:
            items, future = self._pending[0]
            if group and size + len(items) > self._max:
                break
            group.append(self._pending.pop(0))
            size += len(items)
        return [(items, f) for items, f in group if not f.done()]  # drop cancelled callers

    async def _drain(self) -> None:
        try:
            while self._pending:
                group = self._take()
                if group:
                    await self._run(group)
        except BaseException as exc:  # cancelled (loop shutting down): nobody waits forever
            _fail(self._pending, exc)
            self._pending.clear()
            raise
        finally:
            self._draining = None  # no await since the last check: nothing slipped in

    async def _run(self, group: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        self.calls += 1
        try:
            results = await self._call([item for items, _ in group for item in items])
        except self._alone as exc:
            if len(group) == 1:
                _fail(group, exc)
                return
            for one in group:  # each caller alone decides its own answer
                await self._run([one])
            return
        except Exception as exc:  # the callers' error, passed on to each
            _fail(group, exc)
            return
        except BaseException as exc:  # cancelled: so are its callers
            _fail(group, exc)
            raise
        _answer(group, results)


def _answer(group: list[tuple[list, asyncio.Future]], results: list) -> None:
    start = 0
    for items, future in group:
        if not future.done():
            future.set_result(results[start : start + len(items)])
        start += len(items)


def _fail(group: list[tuple[list, asyncio.Future]], exc: BaseException) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(exc)
