"""How raylens reaches its actors: one set of "unavailable" errors and one retry/backoff policy.

Every caller that rides out a restarting queue, index or worker actor uses these, so the
policy cannot drift between copies (one copy once retried any `ValueError` forever).

- `UNAVAILABLE`: the errors that mean "that actor is dead, restarting or not there yet".
- `lookup(name, namespace)`: `ray.get_actor`, with "no such actor" as `ActorMissing` (a
  member of `UNAVAILABLE`) instead of Ray's bare `ValueError`.
- `Backoff`: exponential delays with a cap, the one schedule for waiting and trying again.
- `call_with_retry(fn, ...)`: run a blocking call, retrying `UNAVAILABLE` with `Backoff` until
  a deadline (or for as long as `keep_going()` says).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

log = logging.getLogger("raylens.handles")
T = TypeVar("T")


class ActorMissing(Exception):
    """The named actor does not exist (not started yet, or being re-created)."""


# Errors that mean the actor cannot answer now, not that the call itself was wrong.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.GetTimeoutError,
    ActorMissing,
)


def lookup(name: str, namespace: str) -> Any:
    """The handle of a named actor; ActorMissing when there is none by that name."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:  # Ray's way of saying "no actor by that name"
        raise ActorMissing(f"no actor {name!r} in namespace {namespace!r}") from exc


@dataclass
class Backoff:
    """Delays first, first*factor, ... capped at cap; reset() starts again."""

    first_s: float = 0.2
    cap_s: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.cap_s < self.first_s or self.factor < 1:
            raise ValueError("Backoff needs 0 <= first_s <= cap_s and factor >= 1")
        self._next = self.first_s

    def next(self) -> float:
        """The delay to wait now; the following one grows."""
        delay = self._next
        self._next = min(self._next * self.factor, self.cap_s)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    deadline_s: float | None = None,
    keep_going: Callable[[], bool] | None = None,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = UNAVAILABLE,
    on_wait: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """fn(), retried on `retry_on` errors with backoff.

    Gives up (re-raising the last error) once deadline_s seconds have passed, unless
    keep_going() still answers True; with neither, it retries for as long as it takes.
    """
    backoff = backoff or Backoff()
    started = time.monotonic()
    while True:
        try:
            return fn()
        except retry_on as exc:
            past = deadline_s is not None and time.monotonic() - started > deadline_s
            if past and not (keep_going is not None and keep_going()):
                raise
            if deadline_s is None and keep_going is not None and not keep_going():
                raise
            delay = backoff.next()
            if on_wait is not None:
                on_wait(exc, delay)
            else:
                log.warning(
                    "%s unavailable (%s); retrying in %.1fs", what, type(exc).__name__, delay
                )
            sleep(delay)
