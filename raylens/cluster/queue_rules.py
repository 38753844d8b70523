"""QueueRules: the queue's decisions over the job store and its lanes, in synchronous steps."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raylens.cluster.jobs import Failure, Job, JobSpec, JobState, Outcome, Pipeline, SubmitResult
from raylens.cluster.lanes import Lanes, Queued
from raylens.cluster.settings import Settings
from raylens.cluster.store import JobStore, StoredThenFailed, Tombstone
from raylens.errors import ErrorCode, IdempotencyConflict, QueueFull

log = logging.getLogger("raylens.queue")

Result = tuple[str, dict[str, Any]]  # (job id, result) of a job done


@dataclass
class AckOutcome:
    """What one ack did to the store: jobs that ended, jobs re-queued, how many dead-lettered."""

    done: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    requeued: list[Job] = field(default_factory=list)
    dead_letter: int = 0
    infra: int = 0  # re-queued for an infrastructure fault, the lease's attempt given back
    # acked jobs already terminal in the store: whatever memory still holds of them goes
    finished: list[str] = field(default_factory=list)
    # acked jobs that were deleted meanwhile (job id -> sha256): their worker may have written
    # vectors after the delete, so it removes that content's points again
    deleted: dict[str, str] = field(default_factory=dict)
    stale: int = 0  # acks ignored because they answered a lease that is not the current one

    def by_kind(self) -> dict[str, list[Job]]:
        return {"done": self.done, "failed": self.failed, "requeued": self.requeued}

    def counts(self) -> dict[str, int]:
        return {kind: len(jobs) for kind, jobs in self.by_kind().items()}


class QueueRules:
    """Submit with dedup, idempotency keys and a depth cap; lease; ack, retry, dead letter.

    The queue actor awaits the store while other calls run, so each operation is split into
    steps that touch one side only: *store steps* read and write the job store (the actor runs
    them on its single store thread) and never touch the lanes; *memory steps* change the lanes
    and counters (on the actor's event loop) and never touch the store. A lane changed from the
    store thread would race the loop's own reads of it. Tests call the steps in the actor's order.

    Memory follows the store (invariant 11): a memory step that depends on a write runs only
    after that write succeeded, so a failed write leaves the leases and lanes as they were and
    the operation can simply be tried again (the reaper does so every tick). The one memory step
    that runs before its write, admission under the depth cap, is rolled back when it fails.

    Lease deadlines are on a monotonic clock (`clock`); the wall clock only stamps job records.

    Fencing (invariant 11): each lease carries a token, the job's lease count in the store once
    it is marked running (`Job.lease_token` of the job the worker leased; counted apart from
    attempts, which an infrastructure fault gives back). Acks send it back,
    and the store step decides by it, against the job's record:
    - a failure is applied only when the job is running under that very token (or the ack has
      no token: an old caller). A failure for an older lease is stale and ignored: the lease it
      answers already expired (the reaper counted that attempt) and the job is queued again or
      held by a newer lease.
    - a done is applied when the job is running under that token, or when the job is queued
      (its lease expired and nobody holds it): the work is valid and its vectors are written
      under idempotent ids. A done for an older lease while a newer lease runs the job is
      ignored: it never overrides the newer holder's state and never drops its lease; the
      newer holder finishes the job and writes the same vectors.
    - an ack for a terminal job is ignored, so a late duplicate never changes a finished job.
    A memory step drops a lease only when its token matches the ack that was applied.

    Infrastructure faults (invariant 10): a failure marked `infra` (the index or a store was
    unavailable) re-queues the job with the attempt its lease took given back; it never moves
    the job toward dead letter. Only the job's own failures, lease expiries included, do.

    Crash isolation (invariant 5): a job re-queued with an attempt used (`Job.suspect`: its
    lease expired, its worker was replaced, the model failed on it) is leased alone, so an
    input that kills its worker dead-letters alone instead of taking its batch-mates along.
    The mark is derived from the record, so a rebuilt queue keeps it.

    Records in memory (the queue is the store's only writer): the store steps keep the last
    version they wrote of up to queue_cache_jobs queued or leased jobs, so a lease or an ack
    reads no row back (a failed write forgets them all: it may have landed); the memory steps
    keep the outcomes of as many jobs finished lately, so an ingest following its jobs reads
    none either. A job leaving a terminal state (a retry) leaves that memory first. Records are
    never changed in place (Job.moved copies).
    """

    def __init__(
        self, settings: Settings, model_id: str, store: JobStore, lanes: Lanes | None = None
    ) -> None:
        self.settings = settings
        self.model_id = model_id
        self.store = store
        self.lanes = Lanes() if lanes is None else lanes
        self.counters = {
            "leased": 0,
            "acked": 0,
            "failed": 0,
            "requeued": 0,
            "dead_letter": 0,
            "infra_requeued": 0,
        }
        self.started_at = time.time()
        self.clock: Callable[[], float] = time.monotonic  # lease deadlines; never the wall clock
        self._admitted = 0  # jobs admitted under the depth cap whose store write is in flight
        self.rebuilt: dict[str, int] = {"queued": 0, "running": 0}
        # done/failed counts for the metrics; only touched by store steps, so they serialise
        # with the writes they count
        self._terminal: dict[str, int] | None = None
        self.terminal_read_at = 0.0
        self._cache_cap = settings.queue_cache_jobs
        self._known: dict[str, Job] = {}  # store steps only: the last version written
        self._finished: OrderedDict[str, Outcome] = OrderedDict()  # memory steps only

    # ---- records in memory --------------------------------------------------------------------
    def _read(self, ids: list[str]) -> list[Job | None]:
        """Store step: the records of these jobs, as this queue last wrote them where it keeps
        them, the others read from the store."""
        known = self._known
        miss = [i for i in ids if i not in known]
        got = dict(zip(miss, self.store.get_many(miss))) if miss else {}
        return [known[i] if i in known else got[i] for i in ids]

    def _write(self, jobs: list[Job]) -> None:
        """Store step: put the jobs, then keep the versions written."""
        try:
            self.store.put(jobs)
        except BaseException:
            self._known.clear()  # a write that raised may still have landed: trust the store
            raise
        self._remember(jobs)

    def _remember(self, jobs: Sequence[Job]) -> None:
        known = self._known
        for job in jobs:
            if job.state.terminal:
                known.pop(job.id, None)
            elif job.id in known or len(known) < self._cache_cap:
                known[job.id] = job

    def _note_finished(self, jobs: Sequence[Job]) -> None:
        """Memory step: remember the outcomes of jobs just finished, oldest forgotten first."""
        if self._cache_cap <= 0:
            return
        finished = self._finished
        for job in jobs:
            finished[job.id] = job.outcome()
        while len(finished) > self._cache_cap:
            finished.popitem(last=False)

    def finished_outcomes(self, job_ids: Sequence[str]) -> tuple[list[Outcome], list[str]]:
        """Memory step: the outcomes of those of job_ids this queue finished lately, and the
        ids memory cannot answer (neither in flight nor finished lately: for the store)."""
        known: list[Outcome] = []
        ask: list[str] = []
        finished = self._finished
        for job_id in job_ids:
            outcome = finished.get(job_id)
            if outcome is not None:
                known.append(outcome)
            elif not self.in_flight(job_id):
                ask.append(job_id)
        return known, ask

    # ---- start-up (both sides: runs before the actor serves calls) ----------------------------
    def rebuild(self) -> dict[str, int]:
        """Reload every non-terminal job: queued ones into their lanes, running ones as leases.

        A running job's worker may still be working and will ack; if it does not ack within one
        lease period the reaper re-queues it like any expired lease.
        """
        queued = running = 0
        deadline = self.clock() + self.settings.lease_timeout_s
        for job in self.store.iter_state(JobState.QUEUED):
            self.lanes.push(job.id, job.lane, job.updated_at, solo=job.suspect)
            queued += 1
        for job in self.store.iter_state(JobState.RUNNING):
            self.lanes.hold([job.id], None, deadline)
            self.lanes.set_token(job.id, job.lease_token)
            running += 1
        log.info("queue rebuilt from store: %d queued, %d running", queued, running)
        self.rebuilt = {"queued": queued, "running": running}
        return self.rebuilt

    # ---- submit -------------------------------------------------------------------------------
    def keyed_jobs(self, key: str, fingerprint: str) -> list[SubmitResult] | None:
        """Store step: the jobs a request with this key made before, or None if unknown."""
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
            SubmitResult(
                job_id,
                False,
                job.state if job else JobState.FAILED,
                job.created_at if job else None,
            )
            for job_id, job in zip(record[1], jobs)
        ]

    def new_jobs(self, specs: Sequence[JobSpec], now: float) -> list[Job]:
        """Memory step: the jobs for these specs, admitted under the depth cap; QueueFull when
        they would pass it.

        Check and admission are one step on the event loop, so concurrent submits cannot all
        pass the check while their writes are in flight. The caller must call
        release_admitted(len(specs)) once the submit's store step has ended, however it ended
        (queue_created has by then put the created jobs in the lanes).
        """
        depth = self.lanes.depth() + self._admitted
        if depth + len(specs) > self.settings.queue_max_depth:
            raise QueueFull(
                f"queue holds {depth} jobs; {len(specs)} more would pass "
                f"RAYLENS_QUEUE_MAX_DEPTH={self.settings.queue_max_depth}"
            )
        self._admitted += len(specs)
        # A microsecond apart, so a rebuilt queue restores submission order within a batch.
        return [Job.new(spec, self.model_id, now=now + i * 1e-6) for i, spec in enumerate(specs)]

    def create(
        self, jobs: list[Job], key: str | None, fingerprint: str
    ) -> tuple[list[SubmitResult] | None, list[tuple[Job, bool]]]:
        """Store step: create_or_get, and remember the key (so keyed twins serialise here).

        Returns (the earlier jobs of a keyed twin that got there first, or None; stored jobs).
        Raises StoredThenFailed when the jobs were committed and the key's write failed.
        """
        if key is not None:
            known = self.keyed_jobs(key, fingerprint)
            if known is not None:
                return known, []
        if key is None:
            stored = self.store.create_or_get(jobs)
        else:
            try:
                stored = self.store.create_or_get_keyed(
                    jobs, key, fingerprint, self.settings.idempotency_ttl_s
                )
            except StoredThenFailed as exc:
                self._remember([job for job, created in exc.stored if created])
                raise
        self._remember([job for job, created in stored if created])
        return None, stored

    def release_admitted(self, n: int) -> None:
        """Memory step: the submit's store step ended; its admission no longer counts."""
        self._admitted = max(0, self._admitted - n)

    def queue_created(self, stored: list[tuple[Job, bool]], now: float) -> list[SubmitResult]:
        """Memory step: queue the jobs that were created. An existing job is not queued again,
        unless the store has it queued and nothing in memory holds it (a submit whose later
        write failed before its jobs reached a lane): lanes are hints, and a lease re-checks the
        store, so an extra entry costs nothing while a missing one strands the job."""
        out = []
        for job, created in stored:
            if created:
                self.lanes.push(job.id, job.lane, now)
            elif (
                job.state is JobState.QUEUED
                and self.lanes.lease_of(job.id) is None
                and not self.lanes.is_queued(job.id)
            ):
                self.lanes.push(job.id, job.lane, job.updated_at, solo=job.suspect)
            out.append(SubmitResult(job.id, created, job.state, job.created_at))
        return out

    # ---- retry --------------------------------------------------------------------------------
    def failed_ids(self, code: ErrorCode | None, limit: int) -> list[str]:
        """Store step: ids of jobs failed (with `code`, when given), oldest first."""
        ids = []
        for job in self.store.iter_state(JobState.FAILED):
            if code is None or job.error_code is code:
                ids.append(job.id)
                if len(ids) >= limit:
                    break
        return ids

    def requeue_failed(self, job_ids: list[str]) -> list[Job]:
        """Store step: move failed jobs back to queued (attempts reset)."""
        moved = []
        for job in self.store.get_many(job_ids):
            if job is None or job.state is not JobState.FAILED:
                continue
            current = self.store.find_by_content(job.content_key)
            if current is not None and current.id != job.id:
                continue  # the content was submitted again as a newer job; that one counts
            moved.append(job.moved(JobState.QUEUED, attempts=0, note="retry"))
        self._write(moved)
        self._count_terminal(failed=-len(moved))
        return moved

    def queue_retried(self, moved: list[Job]) -> list[str]:
        """Memory step: queue the retried jobs at the tails of their lanes."""
        for job in moved:
            self._finished.pop(job.id, None)
            self.lanes.push(job.id, job.lane, job.updated_at)
        return [job.id for job in moved]

    # ---- lease --------------------------------------------------------------------------------
    def take(self, worker_id: str, max_jobs: int) -> list[Queued]:
        """Memory step: lease up to max_jobs ids, highest lane first, with a fresh deadline; a
        suspect job comes alone (Lanes.pop)."""
        return self.lanes.lease(max_jobs, worker_id, self.clock() + self.settings.lease_timeout_s)

    def mark_running(self, ids: list[str], worker_id: str) -> list[Job]:
        """Store step: move the taken jobs that are still queued to running (one attempt more,
        and a new lease token)."""
        now = time.time()
        running = [
            job.moved(
                JobState.RUNNING,
                now=now,
                attempts=job.attempts + 1,
                leases=job.lease_token + 1,
                note=worker_id,
            )
            for job in self._read(ids)
            if job is not None and job.state is JobState.QUEUED
        ]
        self._write(running)
        return running

    def settle_taken(self, taken: Sequence[Queued], running: Sequence[Job]) -> list[Job]:
        """Memory step: keep the leases of the jobs now running; a job gone or already terminal
        in the store is never leased."""
        leased = {job.id: job.lease_token for job in running}
        for t in taken:
            if t.job_id in leased:
                self.lanes.set_token(t.job_id, leased[t.job_id])  # the lease's fencing token
            else:
                self.lanes.drop_lease(t.job_id)
        self.counters["leased"] += len(running)
        return list(running)

    # ---- ack ----------------------------------------------------------------------------------
    def apply_ack(
        self,
        done: list[Result],
        failed: list[Failure],
        tokens: Mapping[str, int] | None = None,
    ) -> AckOutcome:
        """Store step: record results. Input failures end the job; retryable ones re-queue or
        dead-letter; infrastructure ones re-queue with their attempt given back. `tokens` (job
        id -> fencing token of the lease the ack answers; a Failure's own token wins) decide
        which acks are stale: see the class docstring. Changes no memory: after_ack applies the
        outcome once this write succeeded."""
        now = time.time()
        tokens = tokens or {}
        results = dict(done)
        failures = {f.job_id: f for f in failed}
        out = AckOutcome()
        asked = list(results) + list(failures)
        missing = []
        for job_id, job in zip(asked, self._read(asked)):
            if job is None:
                missing.append(job_id)
                continue
            if job.state.terminal:
                out.finished.append(job.id)
                continue
            if job.id in results:
                token = tokens.get(job.id)
                current = job.state is JobState.QUEUED or token in (None, job.lease_token)
                if not current:  # a newer lease runs the job: its holder finishes it
                    out.stale += 1
                    continue
                if job.state is JobState.QUEUED:  # re-queued after its lease expired, now done
                    job = job.moved(JobState.RUNNING, now=now, attempts=max(job.attempts, 1))
                out.done.append(job.moved(JobState.DONE, now=now, result=results[job.id]))
                continue
            f = failures[job.id]
            token = f.token if f.token is not None else tokens.get(job.id)
            if job.state is not JobState.RUNNING or token not in (None, job.lease_token):
                out.stale += 1  # that lease already ended (expired, or released) elsewhere
                continue
            if f.infra:  # not the job's fault: the attempt its lease took is given back
                out.requeued.append(
                    job.moved(
                        JobState.QUEUED,
                        now=now,
                        attempts=max(0, job.attempts - 1),
                        note=f"{f.code.value}: {f.message} (infrastructure; no attempt used)",
                    )
                )
                out.infra += 1
                continue
            moved = self._fail_or_requeue(job, f, now)
            if moved.state is JobState.QUEUED:
                out.requeued.append(moved)
                continue
            out.failed.append(moved)
            if f.retryable:  # a retryable failure ends a job only when it runs out of attempts
                out.dead_letter += 1
        self._write(out.done + out.failed + out.requeued)
        self._count_terminal(done=len(out.done), failed=len(out.failed))
        if missing:
            tombs = self.store.tombstones(missing)
            out.deleted = {job_id: t["sha256"] for job_id, t in tombs.items()}
        return out

    def _fail_or_requeue(self, job: Job, f: Failure, now: float) -> Job:
        if not f.retryable:
            return job.moved(JobState.FAILED, now=now, error=(f.code, f.message))
        if job.attempts >= self.settings.max_attempts:
            return job.moved(
                JobState.FAILED,
                now=now,
                error=(
                    ErrorCode.DEAD_LETTER,
                    f"gave up after {job.attempts} attempts (RAYLENS_MAX_ATTEMPTS="
                    f"{self.settings.max_attempts}); last error {f.code.value}: {f.message}",
                ),
            )
        return job.moved(JobState.QUEUED, now=now, note=f"{f.code.value}: {f.message}")

    def after_ack(self, outcome: AckOutcome) -> dict[str, int]:
        """Memory step, after the ack's write succeeded: the acked jobs are no longer leased
        (only the lease the ack answered is dropped) or queued; re-queued jobs go back to the
        heads of their lanes, in the order they were acked (a suspect one marked to be leased
        alone). Returns the counts."""
        for job in outcome.done + outcome.failed:
            self.lanes.drop_lease_if(job.id, job.lease_token)
            self.lanes.discard(job.id)
        self._note_finished(outcome.done + outcome.failed)
        for job in reversed(outcome.requeued):
            self.lanes.drop_lease_if(job.id, job.lease_token)
            self.lanes.push_front(job.id, job.lane, job.updated_at, solo=job.suspect)
        for job_id in [*outcome.finished, *outcome.deleted]:  # nothing may hold these
            self.lanes.drop_lease(job_id)
            self.lanes.discard(job_id)
        counts = outcome.counts()
        self.counters["acked"] += counts["done"]
        self.counters["failed"] += counts["failed"]
        self.counters["requeued"] += counts["requeued"]
        self.counters["dead_letter"] += outcome.dead_letter
        self.counters["infra_requeued"] += outcome.infra
        return counts

    # ---- delete ------------------------------------------------------------------------------
    def content_jobs(self, sha256: str) -> list[Job]:
        """Store step: every job of this content. Besides the store's own lookup, the content
        keys of this queue's model (a Redis store written before it kept one set per content
        finds its jobs that way)."""
        found = {job.id: job for job in self.store.jobs_for_content(sha256)}
        for pipeline in Pipeline:
            job = self.store.find_by_content(f"{sha256}:{pipeline.value}:{self.model_id}")
            if job is not None:
                found.setdefault(job.id, job)
        return sorted(found.values(), key=lambda j: (j.created_at, j.id))

    def delete_content(self, sha256s: Sequence[str], by: str) -> tuple[list[Job], list[Tombstone]]:
        """Store step: remove every job of these contents, leaving tombstones. Returns the jobs
        removed (as they were) and the tombstones of jobs deleted before (a repeat)."""
        jobs: list[Job] = []
        earlier: list[Tombstone] = []
        for sha in dict.fromkeys(sha256s):
            jobs.extend(self.content_jobs(sha))
            earlier.extend(self.store.tombstones_for_content(sha))
        self._remove(jobs, by, tombstones=True)
        removed = {job.id for job in jobs}
        return jobs, [t for t in earlier if t["job_id"] not in removed]

    def _remove(self, jobs: list[Job], by: str, *, tombstones: bool) -> None:
        """Store step: delete these records (memory forgets them first: a write that raises
        may still have landed) and keep the done/failed counts current."""
        for job in jobs:
            self._known.pop(job.id, None)
        self.store.delete(jobs, by, time.time(), tombstones=tombstones)
        self._count_terminal(
            done=-sum(1 for j in jobs if j.state is JobState.DONE),
            failed=-sum(1 for j in jobs if j.state is JobState.FAILED),
        )

    def payloads_needed(self, sha256s: Sequence[str]) -> set[str]:
        """Store step: those of these contents whose uploaded bytes a job still needs: one not
        finished yet, or (with keep_uploads) any job at all."""
        keep = self.settings.keep_uploads
        needed = set()
        for sha in dict.fromkeys(sha256s):
            jobs = self.content_jobs(sha)
            if any(keep or not j.state.terminal for j in jobs):
                needed.add(sha)
        return needed

    def expire_finished(self, now: float | None = None, limit: int = 10_000) -> list[Job]:
        """Store step: remove up to `limit` done or failed records that finished more than
        job_retention_s ago (no tombstone: this bounds the store). Returns them."""
        if self.settings.job_retention_s <= 0:
            return []
        cutoff = (time.time() if now is None else now) - self.settings.job_retention_s
        old: list[Job] = []
        for state in (JobState.DONE, JobState.FAILED):
            for job in self.store.iter_state(state):  # oldest created first
                if job.created_at > cutoff or len(old) >= limit:
                    break  # created after the cutoff: finished after it too
                if job.updated_at <= cutoff:
                    old.append(job)
        self._remove(old, "retention", tombstones=False)
        return old

    def forget_deleted(self, jobs: Sequence[Job]) -> None:
        """Memory step, after delete_content: nothing queued of them any more. A leased one
        keeps its lease until its worker acks (or the lease expires): that ack learns of the
        delete and makes the worker remove the content's points again (AckOutcome.deleted)."""
        for job in jobs:
            self.lanes.discard(job.id)
            self._finished.pop(job.id, None)

    # ---- failures the queue makes up: nack, release, lease expiry (memory steps) -------------
    def nack_failures(self, worker_id: str, job_ids: Sequence[str], message: str) -> list[Failure]:
        """Jobs given back by the worker that holds them: a retryable failure (an attempt)."""
        out = []
        for j in job_ids:
            lease = self.lanes.lease_of(j)
            if lease is not None and lease.worker_id == worker_id:
                out.append(Failure(j, ErrorCode.INTERNAL, message, True, token=lease.token))
        return out

    def release_failures(self, worker_id: str, reason: str) -> list[Failure]:
        """Every job leased by a worker that was replaced: re-queued now (attempt + 1)."""
        out = []
        for j in self.lanes.held_by(worker_id):
            lease = self.lanes.lease_of(j)
            token = lease.token if lease is not None else None
            out.append(Failure(j, ErrorCode.LEASE_EXPIRED, reason, True, token=token))
        return out

    def expired_failures(self, now: float | None = None) -> list[Failure]:
        """Every job whose lease deadline (on `clock`, monotonic) has passed: re-queued (or
        dead-lettered) by an ack that carries the expired lease's token."""
        now = self.clock() if now is None else now
        out = []
        for job_id, owner in self.lanes.expired(now).items():
            lease = self.lanes.lease_of(job_id)
            out.append(
                Failure(
                    job_id,
                    ErrorCode.LEASE_EXPIRED,
                    f"lease expired after {self.settings.lease_timeout_s}s "
                    f"(worker {owner or 'unknown'} died or hung)",
                    retryable=True,
                    token=lease.token if lease is not None else None,
                )
            )
        return out

    def in_flight(self, job_id: str) -> bool:
        """Memory: the job is in a lane or leased (so it is not finished); O(1)."""
        return self.lanes.is_queued(job_id) or self.lanes.lease_of(job_id) is not None

    def heartbeat(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Memory step: extend the leases this worker still holds; returns how many."""
        return self.lanes.extend(worker_id, job_ids, self.clock() + self.settings.lease_timeout_s)

    # ---- counts -------------------------------------------------------------------------------
    def resync_terminal(self) -> None:
        """Store step: done/failed counts re-read from the store."""
        self.terminal_read_at = time.time()
        counts = self.store.counts()
        self._terminal = {"done": counts[JobState.DONE], "failed": counts[JobState.FAILED]}

    def _count_terminal(self, done: int = 0, failed: int = 0) -> None:
        """Store step, after a write: keep the done/failed counts current between re-reads."""
        if self._terminal is not None:
            self._terminal["done"] += done
            self._terminal["failed"] += failed

    def job_counts(self) -> dict[str, int]:
        """Jobs per state for the gauges: from memory, done/failed as of the last re-read."""
        return {
            "queued": self.lanes.depth(),
            "running": self.lanes.leased(),
            **(self._terminal or {}),
        }

    def stats(self, counts: dict[JobState, int]) -> dict[str, Any]:
        """Memory step: the queue's stats, given the store's counts per state."""
        return {
            "depth": {lane.value: n for lane, n in self.lanes.depths().items()},
            "oldest_queued_s": self.lanes.oldest_ages(time.time()),
            "leased": self.lanes.leased(),
            "jobs": {state.value: n for state, n in counts.items()},
            "counters": dict(self.counters),
            "rebuilt": self.rebuilt,
            "started_at": self.started_at,
            "model_id": self.model_id,
            "max_depth": self.settings.queue_max_depth,
        }
