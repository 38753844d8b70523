"""JobQueue: the one queue of the cluster, a named detached async Ray actor over the job store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from raylens.actors import metrics
from raylens.cluster import active_model, runs
from raylens.cluster import events as events_mod
from raylens.cluster.jobs import (
    LANE_ORDER,
    Failure,
    Job,
    JobSpec,
    JobState,
    Outcome,
    SourceKind,
    SubmitResult,
    request_fingerprint,
)
from raylens.cluster.payloads import PayloadStore, open_payload_store
from raylens.cluster.queue_rules import QueueRules
from raylens.cluster.settings import Settings
from raylens.cluster.store import JobStore, StoredThenFailed, open_job_store
from raylens.errors import ErrorCode, InvalidRequest, JobNotFound

# Failure is part of this actor's call signatures; workers and tests import it from here.
__all__ = ["Failure", "JobQueue"]

log = logging.getLogger("raylens.queue")
T = TypeVar("T")

# The done/failed job gauges are counted at each ack and re-read from the store this often.
_TERMINAL_RESYNC_S = 60.0
# With RAYLENS_JOB_RETENTION_S set, finished records past it are looked for this often.
_EXPIRE_EVERY_S = 60.0


class JobQueue:
    """Priority lanes (interactive > normal > bulk), leases, ack/nack, dead letters.

    The store is the truth; the lanes (cluster/lanes.py) hold only what can be rebuilt from it,
    and the decisions are QueueRules' (cluster/queue_rules.py). This shell adds what needs Ray
    and asyncio: the wake-up of waiting leases, the reap loop, metrics, and one dedicated thread
    for every store call, so the event loop never blocks (invariant 7, docs/architecture.md) and
    writes are serialised (single writer).
    """

    def __init__(self, settings: Settings, model_id: str) -> None:
        self.settings = settings
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylens-store")
        self.store: JobStore = open_job_store(settings)
        # A `raylens reindex` switch, recorded in the store, outranks the model it is given.
        stored = self.store.get_meta(active_model.META_KEY)
        self.active = (
            active_model.ActiveModel.from_json(stored)
            if stored
            else dataclasses.replace(active_model.from_settings(settings), model_id=model_id)
        )
        note = active_model.differs_from_settings(settings, self.active)
        if note:
            log.warning("%s", note)
        self.model_id = self.active.model_id
        self.rules = QueueRules(settings, self.model_id, self.store)
        self.lanes = self.rules.lanes
        self.rules.rebuild()  # runs before the actor serves calls: blocking is fine
        self._wakeup: asyncio.Event | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._payloads: PayloadStore | None = None  # opened when keep_uploads is off
        # Rung (and replaced) after every store write: event readers waiting for news wake.
        self._bell: asyncio.Event | None = None
        self._trimmed_at = 0.0

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _write_call(self, fn: Callable[..., T], *args: Any) -> T:
        """A store step that writes records (and so events): event readers are woken after it,
        whether it succeeded or not (a write that raised may have landed)."""
        try:
            return await self._io_call(fn, *args)
        finally:
            self._ring()

    def _ring(self) -> None:
        if self._bell is not None:
            self._bell.set()
            self._bell = None

    def _ensure_started(self) -> asyncio.Event:
        # Created lazily: the event and the task need the actor's running loop.
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        return self._wakeup

    def _notify(self) -> None:
        self._ensure_started().set()

    # ---- the active model -------------------------------------------------------------------
    async def active_model(self) -> str:
        """The active model record (JSON of cluster.active_model.ActiveModel)."""
        return self.active.to_json()

    async def switch_model(self, record: str) -> str:
        """Make `record` the active model: stored first (invariant 11), then new submissions
        are keyed by its model id. Returns the record as stored."""
        new = active_model.ActiveModel.from_json(record)
        await self._io_call(self.store.put_meta, active_model.META_KEY, new.to_json())
        self.active = new
        self.model_id = self.rules.model_id = new.model_id
        log.info("active model switched to %s (collection %s)", new.model_id, new.collection)
        return new.to_json()

    # ---- intake -------------------------------------------------------------------------------
    def depth(self) -> int:
        return self.lanes.depth()

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
            known = await self._io_call(self.rules.keyed_jobs, idempotency_key, fingerprint)
            if known is not None:
                return known
        now = time.time()
        # Admitted under the depth cap on the loop, before the write; released however it ends.
        jobs = self.rules.new_jobs(specs, now)
        try:
            known, stored = await self._write_call(
                self.rules.create, jobs, idempotency_key, fingerprint
            )
        except StoredThenFailed as exc:  # committed, then the key's write failed: queue them
            self.rules.queue_created(exc.stored, now)
            self._notify()
            raise exc.error from None
        finally:
            self.rules.release_admitted(len(jobs))
        if known is not None:
            return known  # a concurrent twin with the same key got there first
        out = self.rules.queue_created(stored, now)
        self._notify()
        return out

    async def retry(self, job_ids: Sequence[str]) -> list[str]:
        """Re-queue failed jobs (attempts reset); returns the ids that were re-queued."""
        self._ensure_started()
        moved = await self._write_call(self.rules.requeue_failed, list(job_ids))
        ids = self.rules.queue_retried(moved)
        self._notify()
        return ids

    async def retry_failed(self, code: ErrorCode | None = None, limit: int = 100_000) -> list[str]:
        """Re-queue failed jobs (only those failed with `code`, when given), oldest first."""
        ids = await self._io_call(self.rules.failed_ids, code, limit)
        return await self.retry(ids) if ids else []

    # ---- workers ------------------------------------------------------------------------------
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
        taken = self.rules.take(worker_id, max_jobs)
        if not taken:
            return []
        ids = [t.job_id for t in taken]
        try:
            running = await self._write_call(self.rules.mark_running, ids, worker_id)
        except Exception:
            self.lanes.give_back(taken)  # the store is the truth: the jobs are still queued
            raise
        return self.rules.settle_taken(taken, running)

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Extend the leases this worker still holds; returns how many were extended."""
        return self.rules.heartbeat(worker_id, job_ids)

    async def ack(
        self,
        worker_id: str,
        done: Sequence[tuple[str, dict[str, Any]]] = (),
        failed: Sequence[Failure] = (),
        tokens: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """Record results. Input failures end the job; retryable ones re-queue or dead-letter.

        `tokens` maps job ids to the fencing token of the lease the ack answers (the
        `lease_token` of the job as leased). A stale ack (an older lease than the current one)
        never overrides the current holder: its failures are ignored, and so is its done while
        a newer lease runs the job (a done for a job queued again is applied: the work is
        valid, its effects idempotent). Acks for terminal jobs are ignored. A failure marked
        `infra` (index or store down) re-queues its job with the lease's attempt given back
        (invariant 10). See QueueRules for the rules.

        Memory changes only after the store write succeeded (invariant 11): when it fails
        (StoreUnavailable), leases and lanes are as before and the ack can be sent again.

        Returns the counts (done, failed, requeued), and under "purge" the sha256 of acked
        jobs that were deleted while they ran: the worker may have stored their vectors after
        the delete removed the content's points, so it removes them again.
        """
        self._ensure_started()
        outcome = await self._write_call(
            self.rules.apply_ack, list(done), list(failed), dict(tokens or {})
        )
        counts: dict[str, Any] = dict(self.rules.after_ack(outcome))
        if outcome.deleted:
            counts["purge"] = sorted(set(outcome.deleted.values()))
        if outcome.requeued:
            self._notify()
        if not self.settings.keep_uploads:
            uploads = [j.sha256 for j in outcome.done if j.source_kind is SourceKind.UPLOAD]
            if uploads:
                await self._io_call(self._drop_uploads, uploads)
        metrics.record_finished(outcome.by_kind(), {f.job_id: f.code.value for f in failed})
        return counts

    async def nack(self, worker_id: str, job_ids: Sequence[str], message: str) -> dict[str, Any]:
        """Give jobs back (worker stopping, transient failure): counts as an attempt."""
        failures = self.rules.nack_failures(worker_id, job_ids, message)
        return await self.ack(worker_id, failed=failures)

    async def release(self, worker_id: str, reason: str) -> int:
        """Re-queue (attempt + 1) every job leased by this worker, now: it was replaced."""
        failures = self.rules.release_failures(worker_id, reason)
        if failures:
            await self.ack("supervisor", failed=failures)
        return len(failures)

    # ---- delete ---------------------------------------------------------------------------------
    async def delete_content(self, sha256s: Sequence[str], by: str) -> dict[str, Any]:
        """Remove every job of these contents (any pipeline or model), leaving tombstones; a
        queued one is cancelled, a running one's late ack is ignored (and makes its worker
        remove the content's points again). Returns {"jobs": [removed jobs, as they were],
        "tombstones": [of jobs deleted by an earlier call]}. The caller removes the points and
        payloads (ClusterAPI.delete_content)."""
        self._ensure_started()
        jobs, earlier = await self._write_call(self.rules.delete_content, list(sha256s), by)
        self.rules.forget_deleted(jobs)
        return {"jobs": jobs, "tombstones": earlier}

    def _drop_uploads(self, sha256s: list[str]) -> None:
        """Store step (keep_uploads off): delete the uploaded bytes no job needs any more. A
        failure only logs: `raylens gc` collects what is left."""
        try:
            if self._payloads is None:
                self._payloads = open_payload_store(self.settings)
            needed = self.rules.payloads_needed(sha256s)
            for sha in set(sha256s) - needed:
                self._payloads.delete(sha)
        except Exception:
            log.warning("uploaded payloads not deleted (raylens gc will)", exc_info=True)

    async def payloads_needed(self, sha256s: Sequence[str]) -> list[str]:
        """Those of these contents whose uploaded bytes a job still needs (see QueueRules)."""
        return sorted(await self._io_call(self.rules.payloads_needed, list(sha256s)))

    async def tombstones(self, job_ids: Sequence[str]) -> dict[str, Any]:
        return await self._io_call(self.store.tombstones, list(job_ids))

    # ---- events (cluster/events.py) -----------------------------------------------------------
    async def events(
        self,
        after: str | None,
        limit: int | None = None,
        wait_s: float = 0.0,
        job_ids: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Up to `limit` events after the id `after` (None: from the oldest kept), oldest first,
        only those of `job_ids`, `states` and the ingest run `run_id` when given; waits up to
        wait_s for one (a long poll, woken by the next store write). Returns {"events": [...],
        "last": the id to resume after (past events filtered out too)}. Raises EventsExpired
        for a resume from before the trimmed window, InvalidRequest for an id this store never
        makes."""
        limit = limit or self.settings.events_page
        wanted = set(job_ids) if job_ids is not None else None
        deadline = time.monotonic() + max(0.0, wait_s)
        last = after
        while True:
            bell = self._bell = self._bell or asyncio.Event()  # before the read: no lost wake
            try:
                found = await self._io_call(self.store.events_after, last, limit)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            if found:
                last = found[-1]["id"]
                matched = [e for e in found if events_mod.matches(e, wanted, states, run_id)]
                if matched or len(found) >= limit:  # a full page: let the caller come back
                    return {"events": matched, "last": last}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"events": [], "last": last}
            try:
                await asyncio.wait_for(bell.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    async def get_meta(self, key: str) -> str | None:
        """A system record (webhook deliveries and cursor: actors/webhooks.py)."""
        return await self._io_call(self.store.get_meta, key)

    async def put_meta(self, key: str, value: str) -> None:
        """Write a system record through the store's single writer (no event: not a job)."""
        await self._io_call(self.store.put_meta, key, value)

    # ---- ingest runs (cluster/runs.py) -----------------------------------------------------
    async def start_run(self, source: str, pipeline: str, ray_job_id: str | None) -> str:
        """A run for an ingest of this source: the unfinished one it continues, or a new one.
        Returns the record (JSON)."""

        def step() -> str:
            key = runs.source_key(source, pipeline)
            earlier_id = self.store.get_meta(key)
            stored = self.store.get_meta(runs.run_key(earlier_id)) if earlier_id else None
            earlier = json.loads(stored) if stored else None
            record = (
                runs.resumed(earlier, ray_job_id)
                if earlier and earlier["status"] != "complete"
                else runs.new(source, pipeline, ray_job_id)
            )
            self._put_run(record)
            self.store.put_meta(key, record["id"])
            return runs.encode(record)

        return await self._io_call(step)

    def _put_run(self, record: dict[str, Any]) -> None:
        """Store step: the run's record, and its id at the head of the index."""
        self.store.put_meta(runs.run_key(record["id"]), runs.encode(record))
        index = json.loads(self.store.get_meta(runs.RUNS_INDEX) or "[]")
        if not index or index[-1] != record["id"]:
            index = [i for i in index if i != record["id"]] + [record["id"]]
            self.store.put_meta(runs.RUNS_INDEX, json.dumps(index[-self.settings.runs_keep :]))

    async def put_run(self, record: str) -> None:
        """An ingest's progress: its run record as it stands (JSON)."""
        await self._io_call(self._put_run, json.loads(record))

    async def runs(self, limit: int = 100) -> list[str]:
        """The newest runs' records (JSON), newest first."""

        def step() -> list[str]:
            index = json.loads(self.store.get_meta(runs.RUNS_INDEX) or "[]")
            found = [self.store.get_meta(runs.run_key(i)) for i in reversed(index[-limit:])]
            return [r for r in found if r]

        return await self._io_call(step)

    async def run(self, run_id: str) -> str:
        record = await self._io_call(self.store.get_meta, runs.run_key(run_id))
        if record is None:
            raise JobNotFound(f"no ingest run with id {run_id!r}")
        return record

    async def keyed_job_ids(self, idempotency_key: str) -> list[str]:
        """The jobs a request with this Idempotency-Key made ([] for an unknown or expired key)."""
        record = await self._io_call(self.store.get_idempotency, idempotency_key)
        return list(record[1]) if record else []

    async def last_event_id(self) -> str:
        """The newest event's id: a reader that starts now resumes after it."""
        return await self._io_call(self.store.last_event_id)

    async def trim_events(self) -> int:
        """Remove events older than events_retention_s (the reaper does so every minute)."""
        if self.settings.events_retention_s <= 0:
            return 0
        self._trimmed_at = time.time()
        cutoff = self._trimmed_at - self.settings.events_retention_s
        return await self._io_call(self.store.trim_events, cutoff)

    # ---- lease expiry ---------------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        expired_at = 0.0
        while True:
            await asyncio.sleep(self.settings.lease_check_interval_s)
            try:
                await self.reap()
            except Exception:  # the store may be down; try again next tick, never die
                log.exception(
                    "lease reaper failed; retrying in %ss", self.settings.lease_check_interval_s
                )
            if self.settings.job_retention_s > 0 and time.time() - expired_at > _EXPIRE_EVERY_S:
                expired_at = time.time()
                try:
                    await self.expire_finished()
                except Exception:  # next round; never stops the reaper
                    log.exception("removing expired job records failed")
            if time.time() - self._trimmed_at > _EXPIRE_EVERY_S:
                try:
                    await self.trim_events()
                except Exception:  # next round; never stops the reaper
                    log.exception("trimming job events failed")
            try:
                await self._publish_metrics()
            except Exception:  # metrics never stop the reaper
                log.debug("metrics: queue gauges not published", exc_info=True)

    async def expire_finished(self) -> int:
        """Remove the done and failed records older than job_retention_s (see Settings)."""
        old = await self._io_call(self.rules.expire_finished)
        self.rules.forget_deleted(old)
        if old:
            log.info("removed %d finished job records past RAYLENS_JOB_RETENTION_S", len(old))
        return len(old)

    async def reap(self) -> int:
        """Re-queue (or dead-letter) every job whose lease deadline has passed."""
        failures = self.rules.expired_failures()
        if failures:
            await self.ack("reaper", failed=failures)
        return len(failures)

    # ---- metrics (Ray dashboard; actors/metrics.py) -------------------------------------------
    async def _publish_metrics(self) -> None:
        """Depth and head-of-lane age per lane, jobs per state: from memory, no store query
        (except the done/failed counts, re-read once a minute on the store thread)."""
        ages = self.lanes.oldest_ages(time.time())
        depths = self.lanes.depths()
        for lane in LANE_ORDER:
            metrics.QUEUE_DEPTH.set(depths[lane], lane=lane.value)
            metrics.QUEUE_OLDEST_AGE.set(ages[lane.value], lane=lane.value)
        if time.time() - self.rules.terminal_read_at > _TERMINAL_RESYNC_S:
            await self._io_call(self.rules.resync_terminal)  # once a minute; the store may be down
        for state, n in self.rules.job_counts().items():
            metrics.JOBS.set(n, state=state)

    # ---- reads ----------------------------------------------------------------------------------
    async def states(self, job_ids: Sequence[str]) -> list[Job | None]:
        return await self._io_call(self.store.get_many, list(job_ids))

    async def outcomes(self, job_ids: Sequence[str]) -> list[Outcome]:
        """The finished jobs among job_ids, compactly (what an ingest follows its jobs by).

        A job this queue holds queued or leased is not finished, so it is answered from memory
        without a store read, and so is one this queue finished lately (QueueRules keeps the
        outcomes of the last queue_cache_jobs); only the others are read, and only the terminal
        ones come back, as (job id, state, error code or None, created_at, done_at or None)."""
        self._ensure_started()
        known, ask = self.rules.finished_outcomes(job_ids)
        if not ask:
            return known
        jobs = await self._io_call(self.store.get_many, ask)
        return known + [job.outcome() for job in jobs if job is not None and job.state.terminal]

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
        return self.rules.stats(counts)

    async def ping(self) -> bool:
        self._ensure_started()
        return True
