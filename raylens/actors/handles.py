"""How raylens reaches its actors: one set of "unavailable" errors and one retry/backoff policy.

Every caller that rides out a restarting queue, index or worker actor uses these, so the
policy cannot drift between copies (one copy once retried any `ValueError` forever).

- `UNAVAILABLE`: the errors that mean "that actor is dead, restarting or not there yet".
- `lookup(name, namespace)`: `ray.get_actor`, with "no such actor" as `ActorMissing` (a
  member of `UNAVAILABLE`) instead of Ray's bare `ValueError`.
- `Backoff`: exponential delays with a cap, the one schedule for waiting and trying again.
- `call_with_retry(fn, ...)`: run a blocking call, retrying `UNAVAILABLE` with `Backoff` until
  a deadline (or for as long as `keep_going()` says).
- `Pause`: work paused while a dependency (the index, a store) is down: tripped by the failure,
  lifted once a probe of that dependency answers, probed on a `Backoff` schedule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

from raylens.errors import ErrorCode

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


class NamedActor:
    """A named actor's handle, looked up once (`ray.get_actor` is a GCS round trip) and again
    only after a call through it failed: the actor may have been re-created under its name."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name, self.namespace = name, namespace
        self._handle: Any = None

    def handle(self) -> Any:
        handle = self._handle
        if handle is None:
            handle = self._handle = lookup(self.name, self.namespace)
        return handle

    def forget(self) -> None:
        """The next call looks the name up afresh (the actor may have been re-created)."""
        self._handle = None

    def call(self, make: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """ray.get(make(handle)); any failure forgets the handle, so the next call looks the
        name up afresh."""
        try:
            return ray.get(make(self.handle()), timeout=timeout)
        except BaseException:
            self.forget()
            raise


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


class Pause:
    """Work paused while a dependency is down (invariant 10: an outage is nobody's attempt).

    `trip(code, message, probe)` says what is down and how to ask whether it is back; `wait()`
    then blocks (the caller leases nothing meanwhile), calling `probe` after each delay of the
    backoff until it returns without raising. The delays go on growing across trips until the
    caller reports real work done (`healthy()`): a probe that answers while the real call still
    fails must not make every pause short again. Thread-safe: one thread trips, another waits,
    and any may read `down`.
    """

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._lock = threading.Lock()
        self._down: tuple[ErrorCode, str, Callable[[], Any]] | None = None
        self.paused_s = 0.0  # seconds spent paused, in total
        self.trips = 0

    @property
    def down(self) -> tuple[ErrorCode, str] | None:
        """(code, message) of what is down, or None while nothing is."""
        with self._lock:
            return None if self._down is None else self._down[:2]

    def trip(self, code: ErrorCode, message: str, probe: Callable[[], Any]) -> None:
        """Pause: `code` is down; `probe()` raises until it is back. A second trip while paused
        keeps the first (the probe of what went down first decides)."""
        with self._lock:
            if self._down is None:
                self._down = (code, message, probe)
                self.trips += 1
                log.warning("%s (%s): pausing work until it answers again", code.value, message)

    def healthy(self) -> None:
        """Real work went through: the next outage starts with the shortest delay again."""
        self.backoff.reset()

    def wait(self, stopped: Callable[[float], bool] | None = None) -> float:
        """Block while paused, probing after each backoff delay; returns the seconds waited.
        `stopped(delay)` sleeps up to delay and answers True to give up (a stopping worker
        passes its stop event's wait); by default it just sleeps."""
        stopped = stopped or threading.Event().wait
        started = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._down is None:
                        return time.monotonic() - started
                    code, _, probe = self._down
                delay = self.backoff.next()
                if stopped(delay):
                    return time.monotonic() - started
                try:
                    probe()
                except Exception as exc:  # still down: wait longer (up to the backoff's cap)
                    log.info("%s still down: %s", code.value, exc)
                    continue
                with self._lock:
                    self._down = None
                log.warning(
                    "%s answers again after %.1fs: work resumes",
                    code.value,
                    time.monotonic() - started,
                )
        finally:
            self.paused_s += time.monotonic() - started
