"""JobQueue: the one queue of the cluster, a named detached async Ray actor over the job store.

The store is the truth; the actor keeps only what it can rebuild from it: per-lane deques of
queued job ids and the leases of running jobs. Every store call runs on one dedicated thread so
the actor's event loop never blocks (invariant 7) and writes are serialised (single writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from raylens.actors import metrics
from raylens.cluster.jobs import (
    LANE_ORDER,
    Failure,
    Job,
    JobSpec,
    JobState,
    Lane,
    SubmitResult,
    request_fingerprint,
)
from raylens.cluster.settings import Settings
from raylens.cluster.store import JobStore, open_job_store
from raylens.errors import (
    ErrorCode,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    QueueFull,
)

log = logging.getLogger("raylens.queue")
T = TypeVar("T")

# The done/failed job gauges are counted at each ack and re-read from the store this often.
_TERMINAL_RESYNC_S = 60.0


@dataclass
class Lease:
    worker_id: str | None  # None: lease found running in the store on rebuild; owner unknown
    deadline: float


class JobQueue:
    """Priority lanes (interactive > normal > bulk), leases, ack/nack, dead letters."""

    def __init__(self, settings: Settings, model_id: str) -> None:
        self.settings = settings
        self.model_id = model_id
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylens-store")
        self.store: JobStore = open_job_store(settings)
        self.lanes: dict[Lane, deque[str]] = {lane: deque() for lane in LANE_ORDER}
        self.lane_of: dict[str, Lane] = {}
        self.leases: dict[str, Lease] = {}
        self.queued_at: dict[str, float] = {}  # when each queued job (re-)entered its lane
        # done/failed counts for the metrics; only touched on the store thread
        self._terminal: dict[str, int] | None = None
        self._terminal_at = 0.0
        self.started_at = time.time()
        self.rebuilt = self._rebuild()  # runs before the actor serves calls: blocking is fine
        self._wakeup: asyncio.Event | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.counters = {"leased": 0, "acked": 0, "failed": 0, "requeued": 0, "dead_letter": 0}

    # ---- start-up ------------------------------------------------------------------------------
    def _rebuild(self) -> dict[str, int]:
        """Reload every non-terminal job: queued ones into their lanes, running ones as leases.

        A running job's worker may still be working and will ack; if it does not ack within one
        lease period the reaper re-queues it like any expired lease.
        """
        queued = running = 0
        deadline = time.time() + self.settings.lease_timeout_s
        for job in self.store.iter_state(JobState.QUEUED):
            self.lanes[job.lane].append(job.id)
            self.lane_of[job.id] = job.lane
            self.queued_at[job.id] = job.updated_at
            queued += 1
        for job in self.store.iter_state(JobState.RUNNING):
            self.leases[job.id] = Lease(worker_id=None, deadline=deadline)
            self.lane_of[job.id] = job.lane
            running += 1
        log.info("queue rebuilt from store: %d queued, %d running", queued, running)
        return {"queued": queued, "running": running}

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _ensure_started(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        return self._wakeup

    def _notify(self) -> None:
        self._ensure_started().set()

    # ---- intake -------------------------------------------------------------------------------
    def depth(self) -> int:
        return sum(len(q) for q in self.lanes.values())

    async def submit(
        self, specs: Sequence[JobSpec], idempotency_key: str | None = None
    ) -> list[SubmitResult]:
        """Create (or find) the jobs and queue the new ones; returns once they are durable.

        Raises QueueFull, writing nothing, when the queued depth would exceed queue_max_depth.
        Content already submitted (same sha256, pipeline and model) returns the existing job.
        With an idempotency key, a repeat of the same request returns the jobs the first one
        made (whatever their state); the same key with other content raises IdempotencyConflict.
        """
        self._ensure_started()
        if not specs:
            return []
        fingerprint = request_fingerprint(specs)
        if idempotency_key is not None:
            known = await self._io_call(self._keyed_jobs, idempotency_key, fingerprint)
            if known is not None:
                return known
        if self.depth() + len(specs) > self.settings.queue_max_depth:
            raise QueueFull(
                f"queue holds {self.depth()} jobs; {len(specs)} more would pass "
                f"RAYLENS_QUEUE_MAX_DEPTH={self.settings.queue_max_depth}"
            )
        now = time.time()
        # A microsecond apart, so a rebuilt queue restores submission order within a batch.
        jobs = [Job.new(spec, self.model_id, now=now + i * 1e-6) for i, spec in enumerate(specs)]
        known, stored = await self._io_call(self._create, jobs, idempotency_key, fingerprint)
        if known is not None:
            return known  # a concurrent twin with the same key got there first
        out = []
        for job, created in stored:
            if created:
                self.lanes[job.lane].append(job.id)
                self.lane_of[job.id] = job.lane
                self.queued_at[job.id] = now
            out.append(SubmitResult(job.id, created, job.state))
        self._notify()
        return out

    def _keyed_jobs(self, key: str, fingerprint: str) -> list[SubmitResult] | None:
        """The jobs a request with this key made before (store thread), or None if unknown."""
        record = self.store.get_idempotency(key)
        if record is None:
            return None
        if record[0] != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for a different request (other files or "
                "pipeline); use a new key for new content"
            )
        jobs = self.store.get_many(record[1])
        return [
            SubmitResult(job_id, False, job.state if job else JobState.FAILED)
            for job_id, job in zip(record[1], jobs)
        ]

    def _create(
        self, jobs: list[Job], key: str | None, fingerprint: str
    ) -> tuple[list[SubmitResult] | None, list[tuple[Job, bool]]]:
        """create_or_get, and remember the key; on the store thread, so keyed twins serialise."""
        if key is not None:
            known = self._keyed_jobs(key, fingerprint)
            if known is not None:
                return known, []
        stored = self.store.create_or_get(jobs)
        if key is not None:
            self.store.put_idempotency(
                key, fingerprint, [job.id for job, _ in stored], self.settings.idempotency_ttl_s
            )
        return None, stored

    async def retry(self, job_ids: Sequence[str]) -> list[str]:
        """Re-queue failed jobs (attempts reset); returns the ids that were re-queued."""
        self._ensure_started()
        moved = await self._io_call(self._requeue_failed, list(job_ids))
        for job in moved:
            self.lanes[job.lane].append(job.id)
            self.lane_of[job.id] = job.lane
            self.queued_at[job.id] = job.updated_at
        self._notify()
        return [j.id for j in moved]

    async def retry_failed(self, code: ErrorCode | None = None, limit: int = 100_000) -> list[str]:
        """Re-queue failed jobs (only those failed with `code`, when given), oldest first."""
        ids = await self._io_call(self._failed_ids, code, limit)
        return await self.retry(ids) if ids else []

    def _failed_ids(self, code: ErrorCode | None, limit: int) -> list[str]:
        ids = []
        for job in self.store.iter_state(JobState.FAILED):
            if code is None or job.error_code is code:
                ids.append(job.id)
                if len(ids) >= limit:
                    break
        return ids

    def _requeue_failed(self, job_ids: list[str]) -> list[Job]:
        moved = []
        for job in self.store.get_many(job_ids):
            if job is None or job.state is not JobState.FAILED:
                continue
            current = self.store.find_by_content(job.content_key)
            if current is not None and current.id != job.id:
                continue  # the content was submitted again as a newer job; that one counts
            moved.append(job.moved(JobState.QUEUED, attempts=0, note="retry"))
        self.store.put(moved)
        self._count_terminal(failed=-len(moved))
        return moved

    # ---- workers ------------------------------------------------------------------------------
    def _pop(self, n: int) -> list[str]:
        ids: list[str] = []
        for lane in LANE_ORDER:
            q = self.lanes[lane]
            while q and len(ids) < n:
                ids.append(q.popleft())
        return ids

    async def lease(self, worker_id: str, max_jobs: int, wait_s: float | None = None) -> list[Job]:
        """Up to max_jobs jobs, highest lane first, marked running with a lease deadline.

        Waits up to wait_s (default lease_poll_s) for a first job, then up to batch_wait_ms for the
        batch to fill. Returns [] when nothing arrived in time.
        """
        wakeup = self._ensure_started()
        wait_s = self.settings.lease_poll_s if wait_s is None else wait_s
        start = time.monotonic()
        while self.depth() == 0:
            remaining = wait_s - (time.monotonic() - start)
            if remaining <= 0:
                return []
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return []
        fill_deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while self.depth() < max_jobs and time.monotonic() < fill_deadline:
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=fill_deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        ids = self._pop(max_jobs)
        if not ids:
            return []
        deadline = time.time() + self.settings.lease_timeout_s
        for job_id in ids:
            self.leases[job_id] = Lease(worker_id, deadline)
        try:
            jobs = await self._io_call(self._mark_running, ids, worker_id)
        except Exception:
            for job_id in reversed(ids):  # give them back in order; the store is the truth
                self.leases.pop(job_id, None)
                self.lanes[self.lane_of[job_id]].appendleft(job_id)
            raise
        leased = {job.id for job in jobs}
        for job_id in ids:
            self.queued_at.pop(job_id, None)
            if job_id not in leased:  # gone or already terminal: never lease it
                self.leases.pop(job_id, None)
                self.lane_of.pop(job_id, None)
        self.counters["leased"] += len(jobs)
        return jobs

    def _mark_running(self, ids: list[str], worker_id: str) -> list[Job]:
        now = time.time()
        running = [
            job.moved(JobState.RUNNING, now=now, attempts=job.attempts + 1, note=worker_id)
            for job in self.store.get_many(ids)
            if job is not None and job.state is JobState.QUEUED
        ]
        self.store.put(running)
        return running

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Extend the leases this worker still holds; returns how many were extended."""
        deadline = time.time() + self.settings.lease_timeout_s
        extended = 0
        for job_id in job_ids:
            lease = self.leases.get(job_id)
            if lease is not None and lease.worker_id in (worker_id, None):
                lease.worker_id, lease.deadline = worker_id, deadline
                extended += 1
        return extended

    async def ack(
        self,
        worker_id: str,
        done: Sequence[tuple[str, dict[str, Any]]] = (),
        failed: Sequence[Failure] = (),
    ) -> dict[str, int]:
        """Record results. Input failures end the job; retryable ones re-queue or dead-letter.

        An ack for a job that is no longer leased by this worker is still applied when the job is
        not terminal (the work is valid and its effects idempotent); acks for terminal jobs are
        ignored, so a late duplicate never changes a finished job.
        """
        self._ensure_started()
        ids = [job_id for job_id, _ in done] + [f.job_id for f in failed]
        for job_id in ids:
            self.leases.pop(job_id, None)
            self._drop_from_lane(job_id)
        outcome = await self._io_call(self._apply_ack, list(done), list(failed))
        for job in outcome["requeued"]:
            self.lanes[job.lane].appendleft(job.id)
            self.lane_of[job.id] = job.lane
            self.queued_at[job.id] = job.updated_at
        if outcome["requeued"]:
            self._notify()
        for job_id in ids:
            if job_id not in self.leases and not self._queued(job_id):
                self.lane_of.pop(job_id, None)
        counts = {k: len(v) for k, v in outcome.items()}
        self.counters["acked"] += counts["done"]
        self.counters["failed"] += counts["failed"]
        self.counters["requeued"] += counts["requeued"]
        metrics.record_finished(outcome, {f.job_id: f.code.value for f in failed})
        return counts

    def _apply_ack(
        self, done: list[tuple[str, dict[str, Any]]], failed: list[Failure]
    ) -> dict[str, list[Job]]:
        now = time.time()
        results = dict(done)
        failures = {f.job_id: f for f in failed}
        jobs = self.store.get_many(list(results) + list(failures))
        out: dict[str, list[Job]] = {"done": [], "failed": [], "requeued": []}
        for job in jobs:
            if job is None or job.state.terminal:
                continue
            if job.state is JobState.QUEUED:  # re-queued after its lease expired, now finished
                job = job.moved(JobState.RUNNING, now=now, attempts=max(job.attempts, 1))
            if job.id in results:
                out["done"].append(job.moved(JobState.DONE, now=now, result=results[job.id]))
            else:
                f = failures[job.id]
                moved = self._fail_or_requeue(job, f.code, f.message, f.retryable, now)
                out["failed" if moved.state is JobState.FAILED else "requeued"].append(moved)
        self.store.put(out["done"] + out["failed"] + out["requeued"])
        self._count_terminal(done=len(out["done"]), failed=len(out["failed"]))
        return out

    def _fail_or_requeue(
        self, job: Job, code: ErrorCode, message: str, retryable: bool, now: float
    ) -> Job:
        if not retryable:
            return job.moved(JobState.FAILED, now=now, error=(code, message))
        if job.attempts >= self.settings.max_attempts:
            self.counters["dead_letter"] += 1
            return job.moved(
                JobState.FAILED,
                now=now,
                error=(
                    ErrorCode.DEAD_LETTER,
                    f"gave up after {job.attempts} attempts (RAYLENS_MAX_ATTEMPTS="
                    f"{self.settings.max_attempts}); last error {code.value}: {message}",
                ),
            )
        return job.moved(JobState.QUEUED, now=now, note=f"{code.value}: {message}")

    def _queued(self, job_id: str) -> bool:
        lane = self.lane_of.get(job_id)
        return lane is not None and job_id in self.lanes[lane]

    def _drop_from_lane(self, job_id: str) -> None:
        lane = self.lane_of.get(job_id)
        self.queued_at.pop(job_id, None)
        if lane is not None:
            try:
                self.lanes[lane].remove(job_id)
            except ValueError:
                pass

    async def nack(self, worker_id: str, job_ids: Sequence[str], message: str) -> dict[str, int]:
        """Give jobs back (worker stopping, transient failure): counts as an attempt."""
        mine = [
            j for j in job_ids if (lease := self.leases.get(j)) and lease.worker_id == worker_id
        ]
        failures = [Failure(j, ErrorCode.INTERNAL, message, retryable=True) for j in mine]
        return await self.ack(worker_id, failed=failures)

    async def release(self, worker_id: str, reason: str) -> int:
        """Re-queue (attempt + 1) every job leased by this worker, now: it was replaced."""
        mine = [j for j, lease in self.leases.items() if lease.worker_id == worker_id]
        failures = [Failure(j, ErrorCode.LEASE_EXPIRED, reason, retryable=True) for j in mine]
        if failures:
            await self.ack("supervisor", failed=failures)
        return len(failures)

    # ---- lease expiry ---------------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_check_interval_s)
            try:
                await self.reap()
            except Exception:  # the store may be down; try again next tick, never die
                log.exception(
                    "lease reaper failed; retrying in %ss", self.settings.lease_check_interval_s
                )
            try:
                await self._publish_metrics()
            except Exception:  # metrics never stop the reaper
                log.debug("metrics: queue gauges not published", exc_info=True)

    # ---- metrics (Ray dashboard; cluster/metrics.py) ------------------------------------------
    def _oldest_ages(self) -> dict[str, float]:
        """Seconds the job at the head of each lane has waited (0 for an empty lane)."""
        now = time.time()
        ages = {}
        for lane in LANE_ORDER:
            q = self.lanes[lane]
            ages[lane.value] = max(0.0, now - self.queued_at.get(q[0], now)) if q else 0.0
        return ages

    async def _publish_metrics(self) -> None:
        """Depth and head-of-lane age per lane, jobs per state: from memory, no store query
        (except the done/failed counts, re-read once a minute on the store thread)."""
        ages = self._oldest_ages()
        for lane in LANE_ORDER:
            metrics.QUEUE_DEPTH.set(len(self.lanes[lane]), lane=lane.value)
            metrics.QUEUE_OLDEST_AGE.set(ages[lane.value], lane=lane.value)
        now = time.time()
        if now - self._terminal_at > _TERMINAL_RESYNC_S:
            await self._io_call(self._resync_terminal)  # once a minute; the store may be down
        states = {"queued": self.depth(), "running": len(self.leases), **(self._terminal or {})}
        for state, n in states.items():
            metrics.JOBS.set(n, state=state)

    def _resync_terminal(self) -> None:
        """Store thread: done/failed counts from the store (serialised with the writes)."""
        self._terminal_at = time.time()
        counts = self.store.counts()
        self._terminal = {"done": counts[JobState.DONE], "failed": counts[JobState.FAILED]}

    def _count_terminal(self, done: int = 0, failed: int = 0) -> None:
        """Store thread, after a write: keep the done/failed counts current between re-reads."""
        if self._terminal is not None:
            self._terminal["done"] += done
            self._terminal["failed"] += failed

    async def reap(self) -> int:
        """Re-queue (or dead-letter) every job whose lease deadline has passed."""
        now = time.time()
        expired = [job_id for job_id, lease in self.leases.items() if lease.deadline <= now]
        if not expired:
            return 0
        owners = {job_id: self.leases[job_id].worker_id for job_id in expired}
        failures = [
            Failure(
                job_id,
                ErrorCode.LEASE_EXPIRED,
                f"lease expired after {self.settings.lease_timeout_s}s "
                f"(worker {owners[job_id] or 'unknown'} died or hung)",
                retryable=True,
            )
            for job_id in expired
        ]
        await self.ack("reaper", failed=failures)
        return len(expired)

    # ---- reads ----------------------------------------------------------------------------------
    async def states(self, job_ids: Sequence[str]) -> list[Job | None]:
        return await self._io_call(self.store.get_many, list(job_ids))

    async def get(self, job_id: str) -> Job:
        job = await self._io_call(self.store.get, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def list_jobs(
        self, state: JobState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the next page's cursor (None at the end)."""
        try:
            return await self._io_call(self.store.list, state, limit, cursor)
        except ValueError as exc:  # a cursor the store did not make, or a bad limit
            raise InvalidRequest(str(exc)) from None

    async def stats(self) -> dict[str, Any]:
        counts = await self._io_call(self.store.counts)
        return {
            "depth": {lane.value: len(self.lanes[lane]) for lane in LANE_ORDER},
            "oldest_queued_s": self._oldest_ages(),
            "leased": len(self.leases),
            "jobs": {state.value: n for state, n in counts.items()},
            "counters": dict(self.counters),
            "rebuilt": self.rebuilt,
            "started_at": self.started_at,
            "model_id": self.model_id,
            "max_depth": self.settings.queue_max_depth,
        }

    async def ping(self) -> bool:
        self._ensure_started()
        return True
