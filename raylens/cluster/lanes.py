"""Lanes: the queue's in-memory bookkeeping of queued job ids per priority lane and of leases."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from raylens.cluster.jobs import LANE_ORDER, Lane


@dataclass
class Lease:
    worker_id: str | None  # None: lease found running in the store on rebuild; owner unknown
    deadline: float  # on the queue's monotonic clock, never the wall clock
    # The fencing token of this lease: the job's attempt number once it is marked running (the
    # worker gets it with the job and sends it back with its ack); None until then.
    token: int | None = None


class Queued(NamedTuple):
    """A job id taken off a lane, with what it takes to put it back where it was."""

    job_id: str
    lane: Lane
    queued_at: float
    solo: bool = False  # leased alone (a suspect job, see Job.suspect)


class Lanes:
    """Queued ids per lane (served interactive > normal > bulk) and the leases of running jobs.

    Holds only what the queue can rebuild from the job store; touches no store and no clock.
    Each lane is an ordered dict (job id -> when it entered the lane) rather than a deque, so
    membership, removal from anywhere and insertion at the head are all O(1) (invariant 13,
    docs/architecture.md).

    A queued id may be marked solo (a suspect job: an earlier attempt ended without its ack):
    it is leased in a batch of its own, so a job that crashes its worker takes no batch-mate
    down with it. The mark lives while the id is queued.
    """

    def __init__(self) -> None:
        self._lanes: dict[Lane, OrderedDict[str, float]] = {
            lane: OrderedDict() for lane in LANE_ORDER
        }
        self._leases: dict[str, Lease] = {}
        self._solo: set[str] = set()

    # ---- queued ids ---------------------------------------------------------------------------
    def depth(self) -> int:
        return sum(len(q) for q in self._lanes.values())

    def depths(self) -> dict[Lane, int]:
        return {lane: len(q) for lane, q in self._lanes.items()}

    def is_queued(self, job_id: str) -> bool:
        for q in self._lanes.values():  # a plain loop: asked for every id an ingest follows
            if job_id in q:
                return True
        return False

    def queued_ids(self, lane: Lane) -> list[str]:
        """The ids of one lane, head first."""
        return list(self._lanes[lane])

    def is_solo(self, job_id: str) -> bool:
        return job_id in self._solo

    def _mark(self, job_id: str, solo: bool) -> None:
        if solo:
            self._solo.add(job_id)
        else:
            self._solo.discard(job_id)

    def push(self, job_id: str, lane: Lane, queued_at: float, *, solo: bool = False) -> None:
        """Queue at the tail of its lane (a new or retried job waits its turn)."""
        q = self._lanes[lane]
        q.pop(job_id, None)  # an id is queued at most once; re-entering puts it at the tail
        q[job_id] = queued_at
        self._mark(job_id, solo)

    def push_front(self, job_id: str, lane: Lane, queued_at: float, *, solo: bool = False) -> None:
        """Queue at the head of its lane (a re-queued job already waited its turn once)."""
        q = self._lanes[lane]
        q[job_id] = queued_at
        q.move_to_end(job_id, last=False)
        self._mark(job_id, solo)

    def discard(self, job_id: str) -> None:
        """Take the id off whichever lane holds it, if any."""
        self._solo.discard(job_id)
        for q in self._lanes.values():
            if q.pop(job_id, None) is not None:
                return

    def pop(self, n: int) -> list[Queued]:
        """Up to n ids off the heads of the lanes, highest lane first. A solo id comes alone:
        at the head of the batch it is the whole batch; after others, the batch ends before it."""
        taken: list[Queued] = []
        for lane in LANE_ORDER:
            q = self._lanes[lane]
            while q and len(taken) < n:
                job_id = next(iter(q))
                solo = job_id in self._solo
                if solo and taken:
                    return taken
                queued_at = q.pop(job_id)
                self._solo.discard(job_id)
                taken.append(Queued(job_id, lane, queued_at, solo))
                if solo:
                    return taken
        return taken

    def oldest_ages(self, now: float) -> dict[str, float]:
        """Seconds the job at the head of each lane has waited (0 for an empty lane)."""
        ages = {}
        for lane in LANE_ORDER:
            q = self._lanes[lane]
            ages[lane.value] = max(0.0, now - next(iter(q.values()))) if q else 0.0
        return ages

    # ---- leases -------------------------------------------------------------------------------
    def leased(self) -> int:
        return len(self._leases)

    def lease_of(self, job_id: str) -> Lease | None:
        return self._leases.get(job_id)

    def hold(self, job_ids: Iterable[str], worker_id: str | None, deadline: float) -> None:
        """Record (or replace) a lease on each job."""
        for job_id in job_ids:
            self._leases[job_id] = Lease(worker_id, deadline)

    def drop_lease(self, job_id: str) -> Lease | None:
        return self._leases.pop(job_id, None)

    def set_token(self, job_id: str, token: int) -> None:
        """Give a held lease its fencing token (the job's attempt number in the store)."""
        lease = self._leases.get(job_id)
        if lease is not None:
            lease.token = token

    def drop_lease_if(self, job_id: str, token: int) -> Lease | None:
        """Drop the lease only when it is the one `token` answers (or has no token yet): a
        stale ack never drops the lease of a newer holder."""
        lease = self._leases.get(job_id)
        if lease is None or lease.token not in (None, token):
            return None
        return self._leases.pop(job_id)

    def lease(self, n: int, worker_id: str, deadline: float) -> list[Queued]:
        """Pop up to n ids (highest lane first) and lease them to the worker."""
        taken = self.pop(n)
        self.hold((t.job_id for t in taken), worker_id, deadline)
        return taken

    def give_back(self, taken: Sequence[Queued]) -> None:
        """Undo lease(): drop the leases and put the ids back at the heads, in their order."""
        for t in reversed(taken):
            self._leases.pop(t.job_id, None)
            self.push_front(t.job_id, t.lane, t.queued_at, solo=t.solo)

    def held_by(self, worker_id: str) -> list[str]:
        return [job_id for job_id, lease in self._leases.items() if lease.worker_id == worker_id]

    def expired(self, now: float) -> dict[str, str | None]:
        """Job id -> owner of every lease whose deadline has passed."""
        return {
            job_id: lease.worker_id
            for job_id, lease in self._leases.items()
            if lease.deadline <= now
        }

    def extend(self, worker_id: str, job_ids: Iterable[str], deadline: float) -> int:
        """Move the deadline of the leases this worker holds; returns how many were extended.

        A lease with no known owner (found running on rebuild) is claimed by the first worker
        that heartbeats it: that worker is the one still working on the job.
        """
        extended = 0
        for job_id in job_ids:
            lease = self._leases.get(job_id)
            if lease is not None and lease.worker_id in (worker_id, None):
                lease.worker_id, lease.deadline = worker_id, deadline
                extended += 1
        return extended
