"""Unit: the queue's rules over a real SQLite job store, steps called in the actor's order."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from raylens.cluster.jobs import (
    Failure,
    Job,
    JobSpec,
    JobState,
    Lane,
    SourceKind,
    SubmitResult,
    request_fingerprint,
)
from raylens.cluster.queue_rules import QueueRules
from raylens.cluster.settings import Settings
from raylens.cluster.store import JobStore, StoredThenFailed
from raylens.cluster.store_sqlite import SqliteJobStore
from raylens.errors import ErrorCode, IdempotencyConflict, QueueFull, StoreUnavailable

MODEL = "ViT-T-test"


def spec(n: int, lane: Lane = Lane.NORMAL) -> JobSpec:
    sha = hashlib.sha256(f"content-{n}".encode()).hexdigest()
    return JobSpec(source_kind=SourceKind.UPLOAD, source=sha, sha256=sha, size_bytes=n, lane=lane)


@pytest.fixture
def make_rules(tmp_path: Path) -> Iterator[Any]:
    """Builds QueueRules on one SQLite file; a second call is a restarted queue."""
    stores: list[SqliteJobStore] = []

    def make(**overrides: Any) -> QueueRules:
        settings = Settings(data_dir=tmp_path / "data", redis_url=None, **overrides)
        store = SqliteJobStore(settings.sqlite_path)
        stores.append(store)
        rules = QueueRules(settings, MODEL, store)
        rules.rebuild()
        return rules

    yield make
    for store in stores:
        store.close()


# The actor's orders of steps, without the awaits between them.
def submit(rules: QueueRules, specs: Sequence[JobSpec], key: str | None = None) -> list[Any]:
    fingerprint = request_fingerprint(specs)
    if key is not None:
        known = rules.keyed_jobs(key, fingerprint)
        if known is not None:
            return known
    now = time.time()
    jobs = rules.new_jobs(specs, now)
    try:
        known, stored = rules.create(jobs, key, fingerprint)
    except StoredThenFailed as exc:
        rules.queue_created(exc.stored, now)
        raise exc.error from None
    finally:
        rules.release_admitted(len(jobs))
    return known if known is not None else rules.queue_created(stored, now)


def lease(rules: QueueRules, worker_id: str, max_jobs: int) -> list[Job]:
    taken = rules.take(worker_id, max_jobs)
    running = rules.mark_running([t.job_id for t in taken], worker_id)
    return rules.settle_taken(taken, running)


def ack(
    rules: QueueRules,
    worker_id: str,
    done: Sequence[tuple[str, dict[str, Any]]] = (),
    failed: Sequence[Failure] = (),
    tokens: dict[str, int] | None = None,
) -> dict[str, int]:
    return rules.after_ack(rules.apply_ack(list(done), list(failed), tokens))


def reap(rules: QueueRules, now: float) -> int:
    failures = rules.expired_failures(now)
    if failures:
        ack(rules, "reaper", failed=failures)
    return len(failures)


def job(rules: QueueRules, job_id: str) -> Job:
    found = rules.store.get(job_id)
    assert found is not None
    return found


def ids(results: Sequence[SubmitResult]) -> list[str]:
    return [r.job_id for r in results]


def after_lease_period(rules: QueueRules) -> float:
    return rules.clock() + rules.settings.lease_timeout_s + 1


# ---- lease order ----------------------------------------------------------------------------
def test_lease_serves_higher_lanes_first_when_every_lane_holds_jobs(make_rules) -> None:
    rules = make_rules()
    bulk, normal, interactive = (
        ids(submit(rules, [spec(i, lane)]))[0]
        for i, lane in enumerate([Lane.BULK, Lane.NORMAL, Lane.INTERACTIVE])
    )

    leased = lease(rules, "w1", 2)

    assert [j.id for j in leased] == [interactive, normal]
    assert all(j.state is JobState.RUNNING and j.attempts == 1 for j in leased)
    assert job(rules, interactive).state is JobState.RUNNING
    assert [j.id for j in lease(rules, "w1", 5)] == [bulk]
    assert rules.counters["leased"] == 3 and rules.lanes.leased() == 3


def test_lease_keeps_submission_order_when_jobs_share_a_lane(make_rules) -> None:
    rules = make_rules()
    submitted = ids(submit(rules, [spec(i) for i in range(4)]))

    assert [j.id for j in lease(rules, "w1", 4)] == submitted


def test_lease_skips_a_job_when_the_store_no_longer_has_it_queued(make_rules) -> None:
    # Another writer of the store than this queue: only a queue that keeps no records in
    # memory sees it (the queue is the store's only writer; see QueueRules).
    rules = make_rules(queue_cache_jobs=0)
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    rules.store.put([job(rules, a).moved(JobState.FAILED, error=(ErrorCode.INTERNAL, "x"))])

    leased = lease(rules, "w1", 2)

    assert [j.id for j in leased] == [b]
    assert rules.lanes.lease_of(a) is None and rules.lanes.leased() == 1


# ---- lease expiry and dead letters ---------------------------------------------------------
def test_reap_requeues_a_job_at_the_head_when_its_lease_expires(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0, max_attempts=3)
    first, second = ids(submit(rules, [spec(1), spec(2)]))
    lease(rules, "hung", 1)

    assert reap(rules, now=rules.clock()) == 0  # deadline not passed yet
    assert reap(rules, now=after_lease_period(rules)) == 1

    requeued = job(rules, first)
    assert requeued.state is JobState.QUEUED and requeued.attempts == 1
    assert requeued.history[-1].note is not None and "worker hung" in requeued.history[-1].note
    assert rules.lanes.queued_ids(Lane.NORMAL) == [first, second]
    assert rules.counters["requeued"] == 1
    assert [(j.id, j.attempts) for j in lease(rules, "w2", 1)] == [(first, 2)]


def test_reap_dead_letters_a_job_when_its_lease_expires_max_attempts_times(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0, max_attempts=3)
    (job_id,) = ids(submit(rules, [spec(1)]))

    for attempt in range(1, 4):
        assert [(j.id, j.attempts) for j in lease(rules, "hung", 1)] == [(job_id, attempt)]
        assert reap(rules, now=after_lease_period(rules)) == 1

    dead = job(rules, job_id)
    assert dead.state is JobState.FAILED and dead.error_code is ErrorCode.DEAD_LETTER
    assert "3 attempts" in (dead.error_message or "")
    assert "RAYLENS_MAX_ATTEMPTS=3" in (dead.error_message or "")
    assert [t.state for t in dead.history].count(JobState.QUEUED) == 3
    assert rules.counters["dead_letter"] == 1 and rules.counters["failed"] == 1
    assert rules.lanes.depth() == 0 and rules.lanes.leased() == 0


def test_ack_dead_letters_a_retryable_failure_when_attempts_are_used_up(make_rules) -> None:
    rules = make_rules(max_attempts=1)
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)

    counts = ack(rules, "w1", failed=[Failure(job_id, ErrorCode.INTERNAL, "boom", retryable=True)])

    assert counts == {"done": 0, "failed": 1, "requeued": 0}
    assert job(rules, job_id).error_code is ErrorCode.DEAD_LETTER


def test_ack_fails_the_job_at_once_when_the_failure_is_not_retryable(make_rules) -> None:
    rules = make_rules(max_attempts=3)
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)

    ack(rules, "w1", failed=[Failure(job_id, ErrorCode.CORRUPT_IMAGE, "bad bytes")])

    failed = job(rules, job_id)
    assert failed.state is JobState.FAILED and failed.error_code is ErrorCode.CORRUPT_IMAGE
    assert failed.error_message == "bad bytes" and rules.counters["dead_letter"] == 0


# ---- stale and late acks --------------------------------------------------------------------
def test_ack_finishes_the_job_when_it_was_requeued_after_its_lease_expired(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "slow", 1)
    reap(rules, now=after_lease_period(rules))
    assert rules.lanes.is_queued(job_id)

    counts = ack(rules, "slow", done=[(job_id, {"n": 1})])

    finished = job(rules, job_id)
    assert counts == {"done": 1, "failed": 0, "requeued": 0}
    assert finished.state is JobState.DONE and finished.result == {"n": 1}
    assert finished.attempts == 1
    assert [t.state for t in finished.history][-2:] == [JobState.RUNNING, JobState.DONE]
    assert not rules.lanes.is_queued(job_id) and rules.lanes.depth() == 0


def test_ack_is_ignored_when_the_job_already_finished(make_rules) -> None:
    rules = make_rules()
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)
    ack(rules, "w1", done=[(job_id, {"n": 1})])

    counts = ack(
        rules, "w2", done=[(job_id, {"n": 2})], failed=[Failure("nope", ErrorCode.INTERNAL, "")]
    )

    assert counts == {"done": 0, "failed": 0, "requeued": 0}
    assert job(rules, job_id).result == {"n": 1} and rules.counters["acked"] == 1


# ---- nack and release -----------------------------------------------------------------------
def test_nack_requeues_only_the_jobs_the_worker_holds_when_it_gives_jobs_back(make_rules) -> None:
    rules = make_rules()
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    lease(rules, "w1", 1)
    lease(rules, "w2", 1)

    failures = rules.nack_failures("w1", [a, b], "stopping")
    counts = ack(rules, "w1", failed=failures)

    assert [f.job_id for f in failures] == [a] and counts["requeued"] == 1
    assert job(rules, a).state is JobState.QUEUED and job(rules, a).attempts == 1
    assert job(rules, b).state is JobState.RUNNING


def test_release_requeues_every_job_of_the_worker_when_it_was_replaced(make_rules) -> None:
    rules = make_rules()
    submitted = ids(submit(rules, [spec(i) for i in range(3)]))
    lease(rules, "old", 2)
    lease(rules, "other", 1)

    failures = rules.release_failures("old", "replaced")
    ack(rules, "supervisor", failed=failures)

    assert sorted(f.job_id for f in failures) == sorted(submitted[:2])
    assert all(f.code is ErrorCode.LEASE_EXPIRED for f in failures)
    assert [job(rules, i).state for i in submitted] == [
        JobState.QUEUED,
        JobState.QUEUED,
        JobState.RUNNING,
    ]
    assert rules.release_failures("old", "again") == []


def test_heartbeat_extends_only_the_workers_own_leases_when_called(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    lease(rules, "w1", 1)
    lease(rules, "w2", 1)

    assert rules.heartbeat("w1", [a, b]) == 1
    assert rules.expired_failures(now=rules.clock() + 1) == []


# ---- submit: dedup, idempotency, cap --------------------------------------------------------
def test_submit_returns_the_existing_job_when_the_same_content_is_submitted_again(
    make_rules,
) -> None:
    rules = make_rules()
    first = submit(rules, [spec(1)])

    again = submit(rules, [spec(1), spec(2)])

    assert first[0].created and not again[0].created
    assert again[0].job_id == first[0].job_id and again[1].created
    assert rules.lanes.depth() == 2 and rules.store.counts()[JobState.QUEUED] == 2


def test_submit_returns_the_first_jobs_when_an_idempotency_key_is_repeated(make_rules) -> None:
    rules = make_rules()
    first = submit(rules, [spec(1), spec(2)], key="k1")
    lease(rules, "w1", 1)

    again = submit(rules, [spec(1), spec(2)], key="k1")

    assert ids(again) == ids(first) and not any(r.created for r in again)
    assert [r.state for r in again] == [JobState.RUNNING, JobState.QUEUED]
    assert rules.lanes.depth() == 1


def test_submit_raises_idempotency_conflict_when_a_key_is_reused_for_other_content(
    make_rules,
) -> None:
    rules = make_rules()
    submit(rules, [spec(1)], key="k1")

    with pytest.raises(IdempotencyConflict) as info:
        submit(rules, [spec(2)], key="k1")

    assert "k1" in info.value.message
    assert rules.lanes.depth() == 1 and rules.store.counts()[JobState.QUEUED] == 1


def test_submit_raises_queue_full_and_writes_nothing_when_the_cap_would_be_passed(
    make_rules,
) -> None:
    rules = make_rules(queue_max_depth=3)
    submit(rules, [spec(1), spec(2)])

    with pytest.raises(QueueFull) as info:
        submit(rules, [spec(3), spec(4)])

    assert "RAYLENS_QUEUE_MAX_DEPTH=3" in info.value.message
    assert rules.lanes.depth() == 2 and rules.store.counts()[JobState.QUEUED] == 2
    lease(rules, "w1", 2)  # leased jobs no longer count against the cap
    assert len(submit(rules, [spec(3), spec(4), spec(5)])) == 3


# ---- retry ----------------------------------------------------------------------------------
def test_retry_requeues_failed_jobs_with_attempts_reset_when_their_code_matches(
    make_rules,
) -> None:
    rules = make_rules()
    a, b, c = ids(submit(rules, [spec(1), spec(2), spec(3)]))
    lease(rules, "w1", 3)
    ack(
        rules,
        "w1",
        done=[(c, {})],
        failed=[
            Failure(a, ErrorCode.TRUNCATED_IMAGE, "cut"),
            Failure(b, ErrorCode.CORRUPT_IMAGE, "bad"),
        ],
    )

    failed = rules.failed_ids(ErrorCode.TRUNCATED_IMAGE, limit=10)
    moved = rules.queue_retried(rules.requeue_failed(failed + [c, "unknown"]))

    assert failed == [a] and moved == [a]
    assert job(rules, a).state is JobState.QUEUED and job(rules, a).attempts == 0
    assert rules.lanes.queued_ids(Lane.NORMAL) == [a]
    assert rules.failed_ids(None, limit=10) == [b]


def test_retry_skips_a_failed_job_when_its_content_was_submitted_again(make_rules) -> None:
    rules = make_rules()
    (old,) = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)
    ack(rules, "w1", failed=[Failure(old, ErrorCode.CORRUPT_IMAGE, "bad")])
    (new,) = ids(submit(rules, [spec(1)]))  # a failed content key is replaced by a new job

    assert new != old and rules.requeue_failed([old]) == []


# ---- restart --------------------------------------------------------------------------------
def test_rebuild_reloads_every_non_terminal_job_when_the_queue_restarts(make_rules) -> None:
    rules = make_rules()
    done, running, bulk, normal, interactive = ids(
        submit(
            rules,
            [spec(1), spec(2), spec(3, Lane.BULK), spec(4), spec(5, Lane.INTERACTIVE)],
        )
    )
    assert [j.id for j in lease(rules, "w1", 2)] == [interactive, done]
    ack(rules, "w1", done=[(done, {})])
    rules.store.put([job(rules, interactive).moved(JobState.QUEUED, note="nack")])
    assert [j.id for j in lease(rules, "w2", 1)] == [running]

    restarted = make_rules()

    assert restarted.rebuilt == {"queued": 3, "running": 1}
    assert restarted.lanes.queued_ids(Lane.INTERACTIVE) == [interactive]
    assert restarted.lanes.queued_ids(Lane.NORMAL) == [normal]
    assert restarted.lanes.queued_ids(Lane.BULK) == [bulk]
    lease_found = restarted.lanes.lease_of(running)
    assert lease_found is not None and lease_found.worker_id is None
    assert restarted.lanes.lease_of(done) is None and not restarted.lanes.is_queued(done)
    assert restarted.stats(restarted.store.counts())["rebuilt"] == {"queued": 3, "running": 1}


def test_rebuild_lets_the_first_heartbeat_claim_a_running_job_when_the_queue_restarted(
    make_rules,
) -> None:
    rules = make_rules()
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)

    restarted = make_rules()

    assert restarted.heartbeat("w1", [job_id]) == 1
    assert restarted.heartbeat("w2", [job_id]) == 0
    assert restarted.nack_failures("w1", [job_id], "stop")[0].job_id == job_id


def test_rebuild_requeues_a_running_job_when_its_worker_never_acks(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "gone", 1)
    restarted = make_rules(lease_timeout_s=5.0)

    failures = restarted.expired_failures(now=after_lease_period(restarted))
    ack(restarted, "reaper", failed=failures)

    assert "worker unknown" in failures[0].message
    assert job(restarted, job_id).state is JobState.QUEUED and restarted.lanes.depth() == 1


# ---- counts ---------------------------------------------------------------------------------
def test_job_counts_follow_acks_and_retries_when_the_terminal_counts_were_read(
    make_rules,
) -> None:
    rules = make_rules()
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    rules.resync_terminal()
    lease(rules, "w1", 2)
    ack(rules, "w1", done=[(a, {})], failed=[Failure(b, ErrorCode.CORRUPT_IMAGE, "bad")])
    assert rules.job_counts() == {"queued": 0, "running": 0, "done": 1, "failed": 1}

    rules.queue_retried(rules.requeue_failed([b]))

    assert rules.job_counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    stats = rules.stats(rules.store.counts())
    assert stats["depth"] == {"interactive": 0, "normal": 1, "bulk": 0}
    assert stats["jobs"] == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    assert stats["counters"]["acked"] == 1 and stats["max_depth"] == rules.settings.queue_max_depth


# ---- store faults: memory follows the store (invariant 11) ----------------------------------
class FlakyStore:
    """The real SQLite store, with StoreUnavailable raised on the next N calls of a method.

    A keyed create takes the generic two-write path (create_or_get, then put_idempotency, as
    on Redis), so a failure can land between the two writes; SQLite's own one-transaction
    path is tested apart."""

    create_or_get_keyed = JobStore.create_or_get_keyed

    def __init__(self, inner: SqliteJobStore) -> None:
        self._inner = inner
        self._fail: dict[str, int] = {}

    def fail_next(self, method: str, n: int = 1) -> None:
        self._fail[method] = n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._fail.get(name, 0) > 0:
                self._fail[name] -= 1
                raise StoreUnavailable(f"injected: {name} failed")
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def flaky_rules(make_rules) -> tuple[QueueRules, FlakyStore]:
    rules = make_rules(lease_timeout_s=5.0)
    flaky = FlakyStore(rules.store)
    rules.store = flaky  # type: ignore[assignment]
    return rules, flaky


def tokens_of(leased: Sequence[Job]) -> dict[str, int]:
    """The fencing tokens a worker sends back with its ack (as the Worker does)."""
    return {j.id: j.lease_token for j in leased}


def assert_settled(rules: QueueRules, job_ids: Sequence[str]) -> None:
    """Every job is terminal and nothing of it is left in the lanes or leases."""
    for job_id in job_ids:
        assert job(rules, job_id).state in (JobState.DONE, JobState.FAILED), job_id
        assert rules.lanes.lease_of(job_id) is None and not rules.lanes.is_queued(job_id)


def test_ack_keeps_the_leases_when_its_store_write_fails_and_lands_on_retry(flaky_rules) -> None:
    rules, flaky = flaky_rules
    submitted = ids(submit(rules, [spec(1), spec(2)]))
    leased = lease(rules, "w1", 2)
    done = [(submitted[0], {"n": 1})]
    failed = [Failure(submitted[1], ErrorCode.CORRUPT_IMAGE, "bad")]

    flaky.fail_next("put")
    with pytest.raises(StoreUnavailable):
        ack(rules, "w1", done=done, failed=failed, tokens=tokens_of(leased))

    assert all(job(rules, j).state is JobState.RUNNING for j in submitted)
    assert all(rules.lanes.lease_of(j) is not None for j in submitted)
    assert rules.counters["acked"] == 0
    counts = ack(rules, "w1", done=done, failed=failed, tokens=tokens_of(leased))
    assert counts == {"done": 1, "failed": 1, "requeued": 0}
    assert_settled(rules, submitted)


def test_reap_keeps_the_expired_lease_when_its_store_write_fails_and_requeues_next_tick(
    flaky_rules,
) -> None:
    rules, flaky = flaky_rules
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "gone", 1)

    flaky.fail_next("put")
    with pytest.raises(StoreUnavailable):
        reap(rules, now=after_lease_period(rules))
    assert job(rules, job_id).state is JobState.RUNNING and rules.lanes.lease_of(job_id)

    assert reap(rules, now=after_lease_period(rules)) == 1
    assert job(rules, job_id).state is JobState.QUEUED and rules.lanes.is_queued(job_id)
    leased = lease(rules, "w2", 1)
    ack(rules, "w2", done=[(job_id, {})], tokens=tokens_of(leased))
    assert_settled(rules, [job_id])


def test_nack_and_release_keep_the_leases_when_their_store_write_fails(flaky_rules) -> None:
    rules, flaky = flaky_rules
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    lease(rules, "w1", 1)
    lease(rules, "w2", 1)

    flaky.fail_next("put", 2)
    with pytest.raises(StoreUnavailable):
        ack(rules, "w1", failed=rules.nack_failures("w1", [a], "stopping"))
    with pytest.raises(StoreUnavailable):
        ack(rules, "supervisor", failed=rules.release_failures("w2", "replaced"))
    assert rules.lanes.lease_of(a) is not None and rules.lanes.lease_of(b) is not None

    ack(rules, "w1", failed=rules.nack_failures("w1", [a], "stopping"))
    ack(rules, "supervisor", failed=rules.release_failures("w2", "replaced"))
    assert rules.lanes.depth() == 2
    leased = lease(rules, "w3", 2)
    ack(rules, "w3", done=[(a, {}), (b, {})], tokens=tokens_of(leased))
    assert_settled(rules, [a, b])


def test_submit_queues_the_created_jobs_when_the_idempotency_write_fails(flaky_rules) -> None:
    rules, flaky = flaky_rules
    specs = [spec(1), spec(2)]

    flaky.fail_next("put_idempotency")
    with pytest.raises(StoreUnavailable):
        submit(rules, specs, key="k1")
    assert rules.lanes.depth() == 2  # committed jobs are in a lane whatever failed after

    again = submit(rules, specs, key="k1")  # the client's retry dedups onto the same jobs
    assert rules.lanes.depth() == 2
    leased = lease(rules, "w1", 5)
    assert sorted(j.id for j in leased) == sorted(ids(again))
    ack(rules, "w1", done=[(j.id, {}) for j in leased], tokens=tokens_of(leased))
    assert_settled(rules, ids(again))


def test_a_keyed_submit_on_sqlite_writes_its_jobs_and_key_in_one_transaction(
    make_rules, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit per keyed upload: when the key's write fails, the jobs are not committed
    either (nothing to queue, nothing stranded), and the client's retry creates them."""
    rules = make_rules()
    store = rules.store
    assert isinstance(store, SqliteJobStore)
    specs = [spec(1), spec(2)]
    commits = []
    real = store._transaction

    def counted(action: str) -> Any:
        commits.append(action)
        return real(action)

    monkeypatch.setattr(store, "_transaction", counted)
    # The key's write fails inside the transaction.
    monkeypatch.setattr(SqliteJobStore, "_put_idempotency_in", staticmethod(_raise_unavailable))
    with pytest.raises(StoreUnavailable):
        submit(rules, specs, key="k1")
    assert rules.lanes.depth() == 0 and store.counts().get("queued", 0) == 0
    monkeypatch.undo()

    commits.clear()
    monkeypatch.setattr(store, "_transaction", counted)
    made = submit(rules, specs, key="k1")
    assert commits == ["create_or_get"]  # jobs, events and key: one transaction
    assert rules.lanes.depth() == 2 and all(r.created for r in made)
    assert submit(rules, specs, key="k1") == [
        type(r)(r.job_id, False, r.state, r.created_at) for r in made
    ]


def _raise_unavailable(*args: Any) -> None:
    raise StoreUnavailable("injected: the key's write failed")


def test_submit_queues_an_existing_queued_job_when_no_lane_holds_it(make_rules) -> None:
    rules = make_rules()
    orphan = Job.new(spec(1), MODEL, now=time.time())
    rules.store.create_or_get([orphan])  # committed, but the queue never heard of it

    (result,) = submit(rules, [spec(1)])

    assert result.job_id == orphan.id and not result.created
    assert rules.lanes.is_queued(orphan.id)


# ---- fencing tokens: a stale ack never overrides the current holder (invariant 11) ----------
def test_stale_failure_ack_is_ignored_when_the_lease_was_given_to_another_worker(
    make_rules,
) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    (job_id,) = ids(submit(rules, [spec(1)]))
    old = tokens_of(lease(rules, "A", 1))
    reap(rules, now=after_lease_period(rules))
    new = tokens_of(lease(rules, "B", 1))
    assert new[job_id] > old[job_id]

    counts = ack(rules, "A", failed=[Failure(job_id, ErrorCode.INTERNAL, "late", True)], tokens=old)

    assert counts == {"done": 0, "failed": 0, "requeued": 0}
    assert job(rules, job_id).state is JobState.RUNNING and job(rules, job_id).attempts == 2
    held = rules.lanes.lease_of(job_id)
    assert held is not None and held.worker_id == "B"
    assert ack(rules, "B", done=[(job_id, {"by": "B"})], tokens=new)["done"] == 1
    assert job(rules, job_id).result == {"by": "B"}
    assert_settled(rules, [job_id])


def test_stale_done_ack_is_ignored_and_keeps_the_lease_when_another_worker_holds_the_job(
    make_rules,
) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    (job_id,) = ids(submit(rules, [spec(1)]))
    old = tokens_of(lease(rules, "A", 1))
    reap(rules, now=after_lease_period(rules))
    new = tokens_of(lease(rules, "B", 1))

    assert ack(rules, "A", done=[(job_id, {"by": "A"})], tokens=old)["done"] == 0

    held = rules.lanes.lease_of(job_id)
    assert held is not None and held.worker_id == "B"
    assert job(rules, job_id).state is JobState.RUNNING
    assert ack(rules, "B", done=[(job_id, {"by": "B"})], tokens=new)["done"] == 1
    assert job(rules, job_id).result == {"by": "B"}


def test_stale_failure_ack_is_ignored_when_the_job_was_requeued_after_expiry(make_rules) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    (job_id,) = ids(submit(rules, [spec(1)]))
    old = tokens_of(lease(rules, "A", 1))
    reap(rules, now=after_lease_period(rules))

    ack(rules, "A", failed=[Failure(job_id, ErrorCode.CORRUPT_IMAGE, "late")], tokens=old)

    assert job(rules, job_id).state is JobState.QUEUED and rules.lanes.is_queued(job_id)


# ---- monotonic deadlines, the depth cap under concurrent submits ----------------------------
def test_lease_does_not_expire_when_the_wall_clock_jumps_forward(make_rules, monkeypatch) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    submit(rules, [spec(1)])
    lease(rules, "w1", 1)
    wall = time.time()
    monkeypatch.setattr(time, "time", lambda: wall + 86_400.0)

    assert rules.expired_failures() == []


def test_depth_cap_holds_when_two_submits_are_admitted_before_either_is_written(
    make_rules,
) -> None:
    rules = make_rules(queue_max_depth=3)
    now = time.time()

    rules.new_jobs([spec(1), spec(2)], now)  # admitted; its store write still in flight
    with pytest.raises(QueueFull):
        rules.new_jobs([spec(3), spec(4)], now)


def test_depth_cap_admits_again_when_a_failed_store_write_was_rolled_back(flaky_rules) -> None:
    rules, flaky = flaky_rules
    rules.settings = rules.settings.model_copy(update={"queue_max_depth": 3})

    flaky.fail_next("create_or_get")
    with pytest.raises(StoreUnavailable):
        submit(rules, [spec(1), spec(2), spec(3)])

    assert len(submit(rules, [spec(1), spec(2), spec(3)])) == 3
    assert rules.lanes.depth() == 3


# ---- infrastructure faults cost no attempt (invariant 10) -----------------------------------
def infra(job_id: str, code: ErrorCode = ErrorCode.INDEX_UNAVAILABLE) -> Failure:
    """What a worker acks for a job it could not finish because the index (or store) is down."""
    return Failure(job_id, code, "index actor unavailable: test", retryable=True, infra=True)


@pytest.mark.parametrize("code", [ErrorCode.INDEX_UNAVAILABLE, ErrorCode.STORE_UNAVAILABLE])
def test_infra_failure_requeues_without_using_an_attempt_when_a_dependency_is_down(
    make_rules, code: ErrorCode
) -> None:
    rules = make_rules(max_attempts=3)
    (job_id,) = ids(submit(rules, [spec(1)]))

    for _ in range(10):  # far more outages than the job has attempts
        leased = lease(rules, "w1", 1)
        assert leased[0].attempts == 1
        counts = ack(rules, "w1", failed=[infra(job_id, code)], tokens=tokens_of(leased))
        assert counts == {"done": 0, "failed": 0, "requeued": 1}
        queued = job(rules, job_id)
        assert queued.state is JobState.QUEUED and queued.attempts == 0
        assert rules.lanes.queued_ids(Lane.NORMAL) == [job_id]

    leased = lease(rules, "w1", 1)
    ack(rules, "w1", done=[(job_id, {})], tokens=tokens_of(leased))
    finished = job(rules, job_id)
    assert finished.state is JobState.DONE and finished.attempts == 1
    assert rules.counters["dead_letter"] == 0 and rules.counters["infra_requeued"] == 10


def test_infra_failure_keeps_the_attempts_a_job_used_before_when_it_is_requeued(
    make_rules,
) -> None:
    rules = make_rules(lease_timeout_s=5.0, max_attempts=2)
    (job_id,) = ids(submit(rules, [spec(1)]))
    lease(rules, "crashed", 1)
    reap(rules, now=after_lease_period(rules))  # attempt 1 used by a crash

    leased = lease(rules, "w2", 1)
    ack(rules, "w2", failed=[infra(job_id)], tokens=tokens_of(leased))

    assert job(rules, job_id).attempts == 1  # the crash still counts, the outage does not
    leased = lease(rules, "w2", 1)
    ack(
        rules,
        "w2",
        failed=[Failure(job_id, ErrorCode.MODEL_ERROR, "x", True)],
        tokens=tokens_of(leased),
    )
    assert job(rules, job_id).error_code is ErrorCode.DEAD_LETTER


def test_stale_ack_is_ignored_when_an_infra_release_gave_the_attempt_back(make_rules) -> None:
    rules = make_rules()
    (job_id,) = ids(submit(rules, [spec(1)]))
    old = tokens_of(lease(rules, "A", 1))
    ack(rules, "A", failed=[infra(job_id)], tokens=old)
    new_lease = lease(rules, "B", 1)
    new = tokens_of(new_lease)
    assert new_lease[0].attempts == 1 and new[job_id] != old[job_id]  # same attempt, new lease

    # A's ack arrives again (its first answer was lost): it must not touch B's lease.
    again = ack(rules, "A", failed=[infra(job_id)], tokens=old)
    late = ack(rules, "A", failed=[Failure(job_id, ErrorCode.INTERNAL, "late", True)], tokens=old)

    assert again == late == {"done": 0, "failed": 0, "requeued": 0}
    held = rules.lanes.lease_of(job_id)
    assert held is not None and held.worker_id == "B"
    assert job(rules, job_id).state is JobState.RUNNING and job(rules, job_id).attempts == 1
    assert ack(rules, "B", done=[(job_id, {"by": "B"})], tokens=new)["done"] == 1
    assert_settled(rules, [job_id])


# ---- a job whose lease was reclaimed is retried alone (invariant 5) -------------------------
def test_lease_takes_each_reclaimed_job_alone_when_their_batch_crashed_its_worker(
    make_rules,
) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    batch = ids(submit(rules, [spec(i) for i in range(4)]))
    lease(rules, "crashed", 4)
    reap(rules, now=after_lease_period(rules))
    fresh = ids(submit(rules, [spec(10), spec(11)]))

    taken = [[j.id for j in lease(rules, "w2", 8)] for _ in range(5)]

    assert taken == [[batch[0]], [batch[1]], [batch[2]], [batch[3]], fresh]


def test_lease_takes_each_released_job_alone_when_its_worker_was_replaced(make_rules) -> None:
    rules = make_rules()
    batch = ids(submit(rules, [spec(i) for i in range(3)]))
    lease(rules, "stuck", 3)
    ack(rules, "supervisor", failed=rules.release_failures("stuck", "replaced"))

    assert [[j.id for j in lease(rules, "w2", 8)] for _ in range(3)] == [[b] for b in batch]


def test_rebuilt_queue_still_leases_a_reclaimed_job_alone_when_the_queue_restarted(
    make_rules,
) -> None:
    rules = make_rules(lease_timeout_s=5.0)
    batch = ids(submit(rules, [spec(i) for i in range(3)]))
    lease(rules, "crashed", 3)
    reap(rules, now=after_lease_period(rules))

    restarted = make_rules(lease_timeout_s=5.0)

    assert sorted(len(lease(restarted, "w2", 8)) for _ in range(3)) == [1, 1, 1]
    assert restarted.lanes.depth() == 0 and restarted.lanes.leased() == len(batch)


def test_infra_release_leases_a_fresh_batch_together_when_no_attempt_was_used(
    make_rules,
) -> None:
    rules = make_rules()
    batch = ids(submit(rules, [spec(i) for i in range(3)]))
    leased = lease(rules, "w1", 3)
    ack(rules, "w1", failed=[infra(j) for j in batch], tokens=tokens_of(leased))

    assert [j.id for j in lease(rules, "w1", 8)] == batch  # not suspects: one batch, in order


# ---- the worker's side of the ack: retried until it lands -----------------------------------
def test_worker_retries_its_ack_with_backoff_when_the_queue_answers_store_unavailable(
    monkeypatch,
) -> None:
    import threading
    from types import SimpleNamespace

    from raylens.actors import worker as worker_module

    sent: list[tuple[Any, ...]] = []
    failures_left = [3]

    class FakeQueue:
        class ack:  # noqa: N801 (a stand-in for the actor method)
            @staticmethod
            def remote(*args: Any) -> tuple[Any, ...]:
                return args

    def queue_call(make: Any, *, forever: bool = False) -> Any:
        args = make(FakeQueue)
        if failures_left[0]:
            failures_left[0] -= 1
            raise StoreUnavailable("store down")
        sent.append(args)
        return {"done": 1}

    sleeps: list[float] = []
    monkeypatch.setattr(worker_module.time, "sleep", sleeps.append)
    stub = SimpleNamespace(
        worker_id="w1",
        _queue_call=queue_call,
        _stop=threading.Event(),
        settings=SimpleNamespace(lease_timeout_s=5.0),
        stats=SimpleNamespace(last_progress_at=0.0),
    )

    worker_module.Worker._ack(stub, [("j1", {})], [], {"j1": 1})  # type: ignore[arg-type]

    assert sent == [("w1", [("j1", {})], [], {"j1": 1})]
    assert len(sleeps) == 3 and sleeps == sorted(sleeps) and sleeps[0] > 0


# ---- what an ingest follows its jobs by -----------------------------------------------------
def test_in_flight_is_true_for_queued_and_leased_jobs_and_false_once_acked_or_rebuilt(
    make_rules,
) -> None:
    rules = make_rules()
    a, b, c = ids(submit(rules, [spec(i) for i in range(3)]))
    leased = lease(rules, "w1", 1)
    assert [j.id for j in leased] == [a]
    assert rules.in_flight(a) and rules.in_flight(b) and rules.in_flight(c)

    ack(rules, "w1", done=[(a, {})], tokens={a: leased[0].lease_token})

    assert not rules.in_flight(a) and rules.in_flight(b)
    assert not rules.in_flight("no-such-job")
    # A restarted queue knows the same from the store alone.
    again = make_rules()
    assert (again.in_flight(a), again.in_flight(b), again.in_flight(c)) == (False, True, True)


# ---- records in memory: a lease and an ack read no row back ---------------------------------
class CountingStore:
    """The real SQLite store, counting the job rows read back (get_many)."""

    def __init__(self, inner: SqliteJobStore) -> None:
        self._inner = inner
        self.rows_read = 0

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        self.rows_read += len(job_ids)
        return self._inner.get_many(job_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def counted(rules: QueueRules) -> CountingStore:
    store = CountingStore(rules.store)  # type: ignore[arg-type]
    rules.store = store  # type: ignore[assignment]
    return store


def test_lease_and_ack_read_no_row_back_when_the_queue_wrote_the_jobs(make_rules) -> None:
    rules = make_rules()
    store = counted(rules)
    submitted = ids(submit(rules, [spec(i) for i in range(4)]))

    leased = lease(rules, "w1", 4)
    counts = ack(
        rules,
        "w1",
        done=[(j, {"n": 1}) for j in submitted[:3]],
        failed=[Failure(submitted[3], ErrorCode.INTERNAL, "retry me", retryable=True)],
        tokens=tokens_of(leased),
    )
    again = lease(rules, "w1", 4)  # the re-queued one, as written by the ack

    assert counts == {"done": 3, "failed": 0, "requeued": 1}
    assert store.rows_read == 0
    assert [j.id for j in again] == [submitted[3]]
    # What memory answered is what the store holds.
    assert again[0] == job(rules, submitted[3])
    assert [job(rules, j).state for j in submitted[:3]] == [JobState.DONE] * 3


def test_queue_reads_the_store_again_when_a_write_failed(flaky_rules) -> None:
    rules, flaky = flaky_rules
    submitted = ids(submit(rules, [spec(1), spec(2)]))
    leased = lease(rules, "w1", 2)
    flaky.fail_next("put")  # a write that raised may still have landed: memory is forgotten
    with pytest.raises(StoreUnavailable):
        ack(rules, "w1", done=[(j, {}) for j in submitted], tokens=tokens_of(leased))
    store = counted(rules)

    ack(rules, "w1", done=[(j, {}) for j in submitted], tokens=tokens_of(leased))

    assert store.rows_read == 2
    assert_settled(rules, submitted)


def test_queue_reads_every_record_from_the_store_when_its_cache_is_off(make_rules) -> None:
    rules = make_rules(queue_cache_jobs=0)
    store = counted(rules)
    submitted = ids(submit(rules, [spec(i) for i in range(3)]))
    leased = lease(rules, "w1", 3)
    ack(rules, "w1", done=[(j, {}) for j in submitted], tokens=tokens_of(leased))

    assert store.rows_read == 6  # three read to lease, three to ack
    assert rules.finished_outcomes(submitted) == ([], submitted)
    assert_settled(rules, submitted)


def test_queue_keeps_at_most_queue_cache_jobs_records_when_more_are_queued(make_rules) -> None:
    rules = make_rules(queue_cache_jobs=2)
    store = counted(rules)
    submitted = ids(submit(rules, [spec(i) for i in range(5)]))

    leased = lease(rules, "w1", 5)

    assert len(leased) == 5 and store.rows_read == 3  # two from memory, three read back
    assert all(job(rules, j).state is JobState.RUNNING for j in submitted)


def test_finished_outcomes_answer_from_memory_until_a_retry_requeues_the_job(make_rules) -> None:
    rules = make_rules()
    a, b, c = ids(submit(rules, [spec(i) for i in range(3)]))
    leased = lease(rules, "w1", 2)
    ack(
        rules,
        "w1",
        done=[(a, {})],
        failed=[Failure(b, ErrorCode.CORRUPT_IMAGE, "bad")],
        tokens=tokens_of(leased),
    )

    known, ask = rules.finished_outcomes([a, b, c, "no-such-job"])

    assert known == [job(rules, a).outcome(), job(rules, b).outcome()]
    assert known[0][1:3] == ("done", None) and known[1][1:3] == ("failed", "corrupt_image")
    assert ask == ["no-such-job"]  # c is queued: in flight, nothing to read
    rules.queue_retried(rules.requeue_failed([b]))
    assert rules.finished_outcomes([a, b]) == ([job(rules, a).outcome()], [])
    # A restarted queue answers the same from the store.
    assert make_rules().finished_outcomes([a, b]) == ([], [a])


# ---- delete -----------------------------------------------------------------------------------
def test_delete_cancels_a_queued_job_and_a_repeat_reports_its_tombstone(make_rules) -> None:
    rules = make_rules()
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    sha = job(rules, a).sha256

    removed, earlier = rules.delete_content([sha], "test")
    rules.forget_deleted(removed)

    assert [j.id for j in removed] == [a] and earlier == []
    assert not rules.in_flight(a) and rules.store.get(a) is None
    assert [j.id for j in lease(rules, "w1", 5)] == [b]  # the deleted one never runs
    again, earlier = rules.delete_content([sha], "test")
    assert again == [] and [t["job_id"] for t in earlier] == [a]


def test_ack_of_a_job_deleted_while_it_ran_is_ignored_and_names_its_content(make_rules) -> None:
    rules = make_rules()
    a, b = ids(submit(rules, [spec(1), spec(2)]))
    leased = lease(rules, "w1", 2)
    sha = job(rules, a).sha256

    removed, _ = rules.delete_content([sha], "test")
    rules.forget_deleted(removed)
    outcome = rules.apply_ack([(a, {"n": 1}), (b, {"n": 2})], [], tokens_of(leased))
    counts = rules.after_ack(outcome)

    assert outcome.deleted == {a: sha}  # the worker removes this content's points again
    assert counts == {"done": 1, "failed": 0, "requeued": 0}
    assert rules.store.get(a) is None and rules.store.tombstones([a])[a]["state"] == "running"
    assert rules.lanes.lease_of(a) is None and rules.lanes.leased() == 0
    assert job(rules, b).state is JobState.DONE


def test_lease_expiry_of_a_deleted_job_drops_its_lease_and_requeues_nothing(make_rules) -> None:
    rules = make_rules()
    [a] = ids(submit(rules, [spec(1)]))
    lease(rules, "w1", 1)
    removed, _ = rules.delete_content([job(rules, a).sha256], "test")
    rules.forget_deleted(removed)

    assert reap(rules, after_lease_period(rules)) == 1
    assert rules.lanes.leased() == 0 and rules.lanes.depth() == 0
    assert rules.store.get(a) is None


def test_delete_finds_every_job_of_the_content_and_a_resubmit_makes_a_new_job(make_rules) -> None:
    from raylens.cluster.jobs import Pipeline

    rules = make_rules()
    both = ids(submit(rules, [spec(1)]))[0]
    faces = ids(submit(rules, [spec(1).model_copy(update={"pipeline": Pipeline.FACES})]))[0]
    leased = lease(rules, "w1", 2)
    ack(rules, "w1", done=[(both, {}), (faces, {})], tokens=tokens_of(leased))
    assert rules.finished_outcomes([both])[0]  # answered from memory before the delete

    removed, _ = rules.delete_content([spec(1).sha256], "test")
    rules.forget_deleted(removed)

    assert sorted(j.id for j in removed) == sorted([both, faces])
    assert rules.finished_outcomes([both, faces]) == ([], [both, faces])  # memory forgot them
    [fresh] = submit(rules, [spec(1)])
    assert fresh.created and fresh.job_id not in (both, faces)
    assert make_rules().rebuilt == {"queued": 1, "running": 0}


# ---- which uploaded bytes a job still needs (keep_uploads, raylens gc) -------------------------
def test_payloads_needed_keeps_bytes_of_any_job_and_drops_orphans_when_keep_uploads_is_on(
    make_rules,
) -> None:
    rules = make_rules()
    [a] = ids(submit(rules, [spec(1)]))
    leased = lease(rules, "w1", 1)
    ack(rules, "w1", done=[(a, {})], tokens=tokens_of(leased))

    assert rules.payloads_needed([spec(1).sha256, spec(2).sha256]) == {spec(1).sha256}


def test_payloads_needed_keeps_only_unfinished_jobs_bytes_when_keep_uploads_is_off(
    make_rules,
) -> None:
    from raylens.cluster.jobs import Pipeline

    rules = make_rules(keep_uploads=False)
    [a] = ids(submit(rules, [spec(1)]))
    ids(submit(rules, [spec(1).model_copy(update={"pipeline": Pipeline.FACES})]))
    leased = lease(rules, "w1", 1)
    ack(rules, "w1", done=[(a, {})], tokens=tokens_of(leased))

    assert rules.payloads_needed([spec(1).sha256]) == {spec(1).sha256}  # the faces job waits
    leased = lease(rules, "w1", 1)
    ack(rules, "w1", done=[(leased[0].id, {})], tokens=tokens_of(leased))
    assert rules.payloads_needed([spec(1).sha256]) == set()


# ---- job records expire after RAYLENS_JOB_RETENTION_S --------------------------------------------
def test_expire_finished_removes_only_records_finished_longer_ago_than_the_retention(
    make_rules,
) -> None:
    rules = make_rules(job_retention_s=100.0)
    a, b, c, d = ids(submit(rules, [spec(i) for i in range(4)]))
    leased = lease(rules, "w1", 3)
    ack(
        rules,
        "w1",
        done=[(a, {}), (b, {})],
        failed=[Failure(c, ErrorCode.CORRUPT_IMAGE, "bad")],
        tokens=tokens_of(leased),
    )
    finished_at = job(rules, b).updated_at

    assert rules.expire_finished(now=finished_at + 50) == []  # not old enough yet
    gone = rules.expire_finished(now=finished_at + 101)
    rules.forget_deleted(gone)

    assert sorted(j.id for j in gone) == sorted([a, b, c])
    assert all(rules.store.get(j) is None for j in (a, b, c))
    assert rules.store.tombstones([a, b, c]) == {}  # expiry bounds the store: no tombstones
    assert job(rules, d).state is JobState.QUEUED and rules.in_flight(d)
    assert rules.finished_outcomes([a]) == ([], [a])
    assert make_rules(job_retention_s=0.0).expire_finished(now=finished_at + 10**6) == []
