"""Worker scaling: how many workers the backlog needs, between min_workers and max_workers.

Pure decisions (`decide`) from what the supervisor sees each round: the queue's backlog and the
age of its oldest queued job, and each worker's report. The supervisor carries them out: a new
worker is one more named actor (system.start_worker); one that asks for a GPU the cluster does
not have stays pending, and a pending GPU actor is what makes the Ray autoscaler add a GPU node.
Removing a worker drains it first (it leases nothing more and finishes what it holds), so no job
fails or loses an attempt because of a scale-down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from raylens.cluster.settings import Settings


@dataclass(frozen=True)
class WorkerView:
    """One worker as the supervisor saw it this round."""

    name: str
    ready: bool  # answered its report (model loaded); False: pending, starting or restarting
    held_leases: int = 0
    idle_s: float = 0.0  # seconds since it last leased or finished work, 0 while it holds jobs
    paused: bool = False  # waiting for the index or a store to answer again


@dataclass(frozen=True)
class Decision:
    action: str  # "up", "down" or "hold"
    reason: str
    name: str | None = None  # the worker to add or remove


@dataclass
class ScalerState:
    last_action_at: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def worker_index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def idle_seconds(report: dict[str, Any], now: float | None = None) -> float:
    """How long a worker (by its report) has held nothing and made no progress."""
    if report.get("held_leases", 0) > 0:
        return 0.0
    now = time.time() if now is None else now
    last = report.get("last_progress_at") or report.get("started_at") or now
    return max(0.0, now - float(last))


def decide(
    settings: Settings,
    workers: list[WorkerView],
    backlog: int,
    oldest_queued_s: float,
    state: ScalerState,
    now: float | None = None,
) -> Decision:
    """One scaling step at most per round, and none within scale_cooldown_s of the last."""
    now = time.time() if now is None else now
    n = len(workers)
    lo, hi = settings.worker_min, settings.worker_max
    taken = {w.name for w in workers}
    if n < lo:  # below the floor (e.g. a worker was removed by hand): no cool-down
        return Decision("up", f"{n} workers, below min_workers {lo}", free_name(settings, taken))
    if now - state.last_action_at < settings.scale_cooldown_s:
        return Decision("hold", "cooling down")
    pending = sum(1 for w in workers if not w.ready)
    ready = n - pending
    if any(w.ready and w.paused for w in workers):  # the backlog waits on a dependency
        return Decision("hold", "workers paused: the index or a store is unavailable")
    if n < hi and pending == 0:  # one start at a time: a pending worker is capacity on its way
        per_worker = backlog / max(1, ready)
        if per_worker > settings.scale_up_backlog:
            why = f"{backlog} queued for {ready} workers (> {settings.scale_up_backlog} each)"
            return Decision("up", why, free_name(settings, taken))
        if backlog and oldest_queued_s > settings.scale_up_oldest_s:
            why = (
                f"oldest queued job waited {oldest_queued_s:.0f}s "
                f"(> {settings.scale_up_oldest_s:g}s)"
            )
            return Decision("up", why, free_name(settings, taken))
    if n > lo and backlog == 0:
        idle = [w for w in workers if w.ready and w.held_leases == 0]
        idle = [w for w in idle if w.idle_s >= settings.scale_down_idle_s]
        if idle:
            victim = max(idle, key=lambda w: worker_index(w.name))  # the newest goes first
            why = f"idle {victim.idle_s:.0f}s with nothing queued ({n} workers > min {lo})"
            return Decision("down", why, victim.name)
    return Decision("hold", "within bounds")


def free_name(settings: Settings, taken: set[str]) -> str:
    """The first worker name (`raylens-worker-N`, lowest N) not in `taken`."""
    i = 0
    while settings.worker_name(i) in taken:
        i += 1
    return settings.worker_name(i)
