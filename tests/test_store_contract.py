"""The JobStore contract, run against both backends: SQLite (a file) and a real redis-server."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raylens.cluster.jobs import Job, JobSpec, JobState, Lane, SourceKind
from raylens.cluster.store import JobStore
from raylens.cluster.store_redis import RedisJobStore
from raylens.cluster.store_sqlite import SqliteJobStore
from raylens.errors import ErrorCode, StoreUnavailable

from _ports import free_port
from _redis_server import RedisServer

MODEL = "ViT-T-test"
T0 = 1_700_000_000.0


def spec(n: int, lane: Lane = Lane.NORMAL) -> JobSpec:
    sha = hashlib.sha256(f"content-{n}".encode()).hexdigest()
    return JobSpec(source_kind=SourceKind.UPLOAD, source=sha, sha256=sha, size_bytes=n, lane=lane)


def new_job(n: int, now: float = T0, lane: Lane = Lane.NORMAL) -> Job:
    return Job.new(spec(n, lane), MODEL, now=now)


def ids(jobs: list[Job] | list[Job | None]) -> list[str | None]:
    return [j.id if j is not None else None for j in jobs]


StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one shared backend (one file, or one Redis db); closes them after."""
    opened: list[JobStore] = []

    def factory() -> JobStore:
        if request.param == "sqlite":
            store: JobStore = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisJobStore(url, prefix="test")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> JobStore:
    return open_store()


# ---- create_or_get ------------------------------------------------------------------------------
def test_create_or_get_creates_then_returns_the_existing_job_when_content_is_submitted_again(
    store: JobStore,
) -> None:
    first = new_job(1)
    [(stored, created)] = store.create_or_get([first])
    assert created and stored.id == first.id

    [(again, created_again)] = store.create_or_get([new_job(1, now=T0 + 5)])
    assert not created_again
    assert again.id == first.id and again.created_at == T0
    assert store.counts()[JobState.QUEUED] == 1
    assert store.find_by_content(first.content_key) == first


def test_create_or_get_returns_one_job_when_a_batch_holds_the_same_content_twice(
    store: JobStore,
) -> None:
    a, b, c = new_job(1), new_job(2), new_job(1)
    result = store.create_or_get([a, b, c])
    assert [(j.id, created) for j, created in result] == [(a.id, True), (b.id, True), (a.id, False)]
    assert store.get(c.id) is None


def test_create_or_get_makes_a_new_job_when_the_content_key_holds_a_failed_job(
    store: JobStore,
) -> None:
    old = new_job(1)
    store.create_or_get([old])
    store.put([old.moved(JobState.FAILED, now=T0 + 1, error=(ErrorCode.CORRUPT_IMAGE, "bad"))])

    fresh = new_job(1, now=T0 + 2)
    [(stored, created)] = store.create_or_get([fresh])
    assert created and stored.id == fresh.id != old.id
    assert store.find_by_content(fresh.content_key).id == fresh.id  # type: ignore[union-attr]
    assert store.get(old.id).state is JobState.FAILED  # type: ignore[union-attr]
    assert store.counts() == {
        JobState.QUEUED: 1,
        JobState.RUNNING: 0,
        JobState.DONE: 0,
        JobState.FAILED: 1,
    }


# ---- delete -------------------------------------------------------------------------------------
def test_jobs_for_content_finds_every_job_of_a_content_whatever_its_pipeline_or_model(
    store: JobStore,
) -> None:
    from raylens.cluster.jobs import Pipeline

    old = new_job(1)
    store.create_or_get([old])
    store.put([old.moved(JobState.FAILED, now=T0 + 1, error=(ErrorCode.CORRUPT_IMAGE, "bad"))])
    again = new_job(1, now=T0 + 2)
    faces = Job.new(spec(1).model_copy(update={"pipeline": Pipeline.FACES}), MODEL, now=T0 + 3)
    other_model = Job.new(spec(1), "another-model", now=T0 + 4)
    put_only = Job.new(spec(1), "third-model", now=T0 + 5)
    store.create_or_get([again, faces, other_model, new_job(2)])
    store.put([put_only])  # written without create_or_get: findable too

    found = store.jobs_for_content(spec(1).sha256)

    assert ids(found) == [old.id, again.id, faces.id, other_model.id, put_only.id]
    assert store.jobs_for_content(spec(99).sha256) == []


def test_delete_removes_the_jobs_frees_their_content_keys_and_leaves_tombstones(
    store: JobStore, open_store: StoreFactory
) -> None:
    a, b = new_job(1), new_job(2)
    store.create_or_get([a, b])
    running = a.moved(JobState.RUNNING, now=T0 + 1, attempts=1)
    store.put([running])

    store.delete([running], by="test", at=T0 + 5)
    store.delete([running], by="test", at=T0 + 6)  # a repeat is no error

    reader = open_store()  # what another process sees
    assert reader.get(a.id) is None and reader.get_many([a.id, b.id])[1] is not None
    assert reader.find_by_content(a.content_key) is None
    assert reader.jobs_for_content(a.sha256) == []
    assert reader.counts()[JobState.RUNNING] == 0 and reader.counts()[JobState.QUEUED] == 1
    assert a.id not in ids(reader.list(limit=10)[0])
    tomb = reader.tombstones([a.id, b.id, "no-such-job"])
    assert list(tomb) == [a.id]
    assert tomb[a.id]["sha256"] == a.sha256 and tomb[a.id]["state"] == "running"
    assert tomb[a.id]["by"] == "test" and tomb[a.id]["deleted_at"] == T0 + 6
    assert "source" not in tomb[a.id]
    assert [t["job_id"] for t in reader.tombstones_for_content(a.sha256)] == [a.id]
    assert reader.tombstones_for_content(b.sha256) == []
    # The content can be submitted again: a new job
    [(fresh, created)] = reader.create_or_get([new_job(1, now=T0 + 7)])
    assert created and fresh.id != a.id
    # A record expired by age leaves no tombstone.
    reader.delete([fresh], by="retention", at=T0 + 8, tombstones=False)
    assert reader.get(fresh.id) is None and reader.tombstones([fresh.id]) == {}
    assert [t["job_id"] for t in reader.tombstones_for_content(a.sha256)] == [a.id]


def test_create_or_get_reports_created_when_the_same_job_is_stored_twice(
    store: JobStore,
) -> None:
    # A retried call (the first reply was lost) must not hide the job from its caller.
    job = new_job(1)
    store.create_or_get([job])
    [(stored, created)] = store.create_or_get([job])
    assert created and stored.id == job.id


def test_create_or_get_creates_exactly_one_job_when_8_threads_submit_the_same_content(
    open_store: StoreFactory,
) -> None:
    stores = [open_store() for _ in range(8)]  # one connection each, like separate processes
    stores[0].ping()  # schema created before the race starts
    barrier = threading.Barrier(len(stores))
    results: list[tuple[Job, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit(s: JobStore, i: int) -> None:
        try:
            barrier.wait(timeout=10)
            out = s.create_or_get([new_job(7, now=T0 + i)])
            with lock:
                results.extend(out)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(results) == 8
    created = [job for job, was_created in results if was_created]
    assert len(created) == 1
    assert {job.id for job, _ in results} == {created[0].id}
    assert stores[0].counts()[JobState.QUEUED] == 1


# ---- put / counts / iter_state -------------------------------------------------------------------
def test_counts_lists_every_state_with_zero_when_the_store_is_empty(store: JobStore) -> None:
    assert store.counts() == {state: 0 for state in JobState}


def test_put_moves_jobs_between_states_when_they_change_state(store: JobStore) -> None:
    jobs = [new_job(i, now=T0 + i) for i in range(5)]
    store.create_or_get(jobs)
    running = [j.moved(JobState.RUNNING, now=T0 + 10, attempts=1) for j in jobs[1:4]]
    store.put(running)
    store.put(
        [
            running[1].moved(JobState.DONE, now=T0 + 11, result={"dim": 512}),
            running[2].moved(JobState.FAILED, now=T0 + 11, error=(ErrorCode.MODEL_ERROR, "nan")),
        ]
    )
    assert store.counts() == {
        JobState.QUEUED: 2,
        JobState.RUNNING: 1,
        JobState.DONE: 1,
        JobState.FAILED: 1,
    }
    assert ids(list(store.iter_state(JobState.QUEUED))) == [jobs[0].id, jobs[4].id]
    assert ids(list(store.iter_state(JobState.RUNNING))) == [jobs[1].id]
    assert ids(list(store.iter_state(JobState.DONE))) == [jobs[2].id]
    assert ids(list(store.iter_state(JobState.FAILED))) == [jobs[3].id]
    assert ids(list(store.iter_nonterminal())) == [jobs[0].id, jobs[4].id, jobs[1].id]


def test_iter_state_returns_oldest_first_when_read_in_small_batches(store: JobStore) -> None:
    # Out-of-order inserts, and a submission batch sharing one created_at (ties break on id).
    times = [T0 + 5, T0 + 1, T0 + 3, T0 + 3, T0 + 3, T0 + 0.5, T0 + 9, T0 + 3]
    jobs = [new_job(i, now=t) for i, t in enumerate(times)]
    for job in jobs:
        store.create_or_get([job])
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id))]
    assert ids(list(store.iter_state(JobState.QUEUED, batch=2))) == expected
    assert ids(list(store.iter_state(JobState.QUEUED, batch=3))) == expected
    assert ids(list(store.iter_state(JobState.QUEUED))) == expected


# ---- list ---------------------------------------------------------------------------------------
def page_all(store: JobStore, state: JobState | None, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page, cursor = store.list(state=state, limit=limit, cursor=cursor)
        assert len(page) <= limit
        seen.extend(j.id for j in page)
        if cursor is None:
            return seen
    raise AssertionError("list() never returned a last page")


def test_list_pages_through_every_job_newest_first_when_following_the_cursor(
    store: JobStore,
) -> None:
    jobs = [new_job(i, now=T0 + i // 4) for i in range(23)]  # groups of 4 share created_at
    store.create_or_get(jobs)
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]
    for limit in (1, 4, 5, 23, 100):
        assert page_all(store, None, limit) == expected, f"limit={limit}"


def test_list_returns_no_cursor_when_the_page_holds_the_last_job(store: JobStore) -> None:
    store.create_or_get([new_job(i, now=T0 + i) for i in range(4)])
    page, cursor = store.list(limit=4)
    assert len(page) == 4 and cursor is None
    assert store.list(state=JobState.DONE) == ([], None)


def test_list_returns_only_that_state_when_filtered_by_state(store: JobStore) -> None:
    jobs = [new_job(i, now=T0 + i) for i in range(10)]
    store.create_or_get(jobs)
    store.put([j.moved(JobState.RUNNING, now=T0 + 20) for j in jobs[::3]])
    running = [j.id for j in reversed(jobs[::3])]
    queued = [j.id for j in reversed(jobs) if j.id not in running]
    assert page_all(store, JobState.RUNNING, 2) == running
    assert page_all(store, JobState.QUEUED, 2) == queued
    assert page_all(store, JobState.DONE, 2) == []


def test_list_neither_skips_nor_repeats_when_the_cursor_job_leaves_the_state(
    store: JobStore,
) -> None:
    jobs = [new_job(i, now=T0 + i // 2) for i in range(8)]
    store.create_or_get(jobs)
    page, cursor = store.list(state=JobState.QUEUED, limit=3)
    store.put([page[-1].moved(JobState.RUNNING, now=T0 + 30)])  # the cursor's own job moves
    rest, _ = store.list(state=JobState.QUEUED, limit=100, cursor=cursor)
    newest_first = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]
    assert ids(page) + ids(rest) == newest_first


def test_list_raises_value_error_when_the_cursor_was_not_made_by_the_store(
    store: JobStore,
) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.list(cursor="not a cursor")


# ---- reads --------------------------------------------------------------------------------------
def test_get_many_keeps_the_order_asked_when_some_ids_are_unknown(store: JobStore) -> None:
    jobs = [new_job(i, now=T0 + i) for i in range(3)]
    store.create_or_get(jobs)
    asked = [jobs[2].id, "nope", jobs[0].id, jobs[2].id, "0" * 32, jobs[1].id]
    assert ids(store.get_many(asked)) == [
        jobs[2].id,
        None,
        jobs[0].id,
        jobs[2].id,
        None,
        jobs[1].id,
    ]
    assert store.get_many([]) == []
    assert store.get("nope") is None
    assert store.find_by_content("nope") is None


def test_job_keeps_history_timestamps_error_and_result_when_read_back(store: JobStore) -> None:
    job = new_job(1, now=T0 + 0.123456789, lane=Lane.INTERACTIVE)
    store.create_or_get([job])
    job = job.moved(JobState.RUNNING, now=T0 + 1.5, attempts=1, note="worker-1")
    job = job.moved(JobState.QUEUED, now=T0 + 2.25, note="lease_expired: worker died")
    job = job.moved(JobState.RUNNING, now=T0 + 3.0, attempts=2, note="worker-2")
    failed = job.moved(JobState.FAILED, now=T0 + 4.0, error=(ErrorCode.MODEL_ERROR, "nan out"))
    store.put([failed])
    back = store.get(failed.id)
    assert back == failed
    assert back is not None
    assert back.timestamps() == {"queued": T0 + 2.25, "running": T0 + 3.0, "failed": T0 + 4.0}
    assert [t.note for t in back.history] == [
        None,
        "worker-1",
        "lease_expired: worker died",
        "worker-2",
        None,
    ]
    assert back.error_code is ErrorCode.MODEL_ERROR and back.attempts == 2
    assert back.lane is Lane.INTERACTIVE

    retried = back.moved(JobState.QUEUED, now=T0 + 5, attempts=0, note="retry")
    done = retried.moved(JobState.RUNNING, now=T0 + 6, attempts=1).moved(
        JobState.DONE, now=T0 + 7, result={"faces": 2, "dim": 512, "name": "ünïcødé.jpg"}
    )
    store.put([done])
    assert store.get_many([done.id]) == [done]
    assert store.list(state=JobState.DONE)[0] == [done]


# ---- backend specifics --------------------------------------------------------------------------
def test_idempotency_record_round_trips_and_expires_after_its_ttl(store: JobStore) -> None:
    assert store.get_idempotency("k1") is None
    store.put_idempotency("k1", "fp-a", ["j1", "j2"], ttl_s=60)
    store.put_idempotency("k2", "fp-b", ["j3"], ttl_s=0.05)
    assert store.get_idempotency("k1") == ("fp-a", ["j1", "j2"])
    time.sleep(0.2)
    assert store.get_idempotency("k2") is None
    assert store.get_idempotency("k1") == ("fp-a", ["j1", "j2"])


def test_a_keyed_create_remembers_the_ids_it_returned_existing_ones_included(
    store: JobStore,
) -> None:
    earlier = new_job(1)
    store.create_or_get([earlier])
    again, fresh = new_job(1), new_job(2)  # the same content as `earlier`, and new content

    stored = store.create_or_get_keyed([again, fresh], "k1", "fp-a", ttl_s=60)

    assert [(job.id, created) for job, created in stored] == [(earlier.id, False), (fresh.id, True)]
    assert store.get_idempotency("k1") == ("fp-a", [earlier.id, fresh.id])
    assert store.get(fresh.id) == fresh


def test_redis_store_raises_store_unavailable_when_the_server_is_unreachable() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisJobStore(url)
    calls: list[Callable[[], object]] = [
        store.ping,
        lambda: store.create_or_get([new_job(1)]),
        lambda: store.put([new_job(1)]),
        lambda: store.get("x"),
        lambda: store.list(),
        lambda: list(store.iter_state(JobState.QUEUED)),
        store.counts,
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert time.monotonic() - start < 3
        assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in info.value.message
        assert "s3cret" not in info.value.message
    store.close()


def test_redis_store_keeps_acknowledged_jobs_when_the_server_is_killed_and_restarted(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisJobStore(redis_url, prefix="test")
    jobs = [new_job(i, now=T0 + i) for i in range(20)]
    store.create_or_get(jobs)
    time.sleep(1.5)  # appendfsync everysec: give the AOF its fsync before the crash
    redis_server.kill()
    with pytest.raises(StoreUnavailable):
        store.counts()
    redis_server.start()
    assert store.counts()[JobState.QUEUED] == 20  # the same client reconnects by itself
    assert ids(list(store.iter_state(JobState.QUEUED))) == ids(jobs)
    # The server forgot its Lua script cache; create_or_get must load the script again.
    [(_, created)] = store.create_or_get([new_job(99, now=T0 + 99)])
    assert created and store.counts()[JobState.QUEUED] == 21
    store.close()


def test_redis_store_raises_store_unavailable_when_the_server_is_out_of_memory(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisJobStore(redis_url, prefix="test")
    store.create_or_get([new_job(0)])
    admin = redis_server.client()
    admin.config_set("maxmemory", "1")  # noeviction (the required policy) then refuses writes
    try:
        for call in (
            lambda: store.create_or_get([new_job(1)]),
            lambda: store.put([new_job(2)]),
        ):
            with pytest.raises(StoreUnavailable, match="maxmemory"):
                call()
        assert store.counts()[JobState.QUEUED] == 1  # reads still work, nothing half-written
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
        store.close()


def test_sqlite_store_shows_one_instances_writes_when_another_opens_the_same_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    writer, reader = SqliteJobStore(path), SqliteJobStore(path)
    jobs = [new_job(i, now=T0 + i) for i in range(3)]
    writer.create_or_get(jobs)
    writer.put([jobs[0].moved(JobState.RUNNING, now=T0 + 9)])
    assert reader.counts()[JobState.RUNNING] == 1
    assert reader.get_many([j.id for j in jobs])[1] == jobs[1]
    [(existing, created)] = reader.create_or_get([new_job(2, now=T0 + 50)])
    assert not created and existing.id == jobs[2].id
    writer.close()
    reader.close()


def test_sqlite_store_creates_the_parent_folder_when_it_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.sqlite3"
    store = SqliteJobStore(path)
    store.ping()
    assert path.is_file()
    store.close()


def test_sqlite_store_raises_store_unavailable_naming_the_file_when_another_writer_holds_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, busy_timeout_s=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is in the middle of a write
    try:
        with pytest.raises(StoreUnavailable, match=str(path)):
            store.create_or_get([new_job(1)])
        assert store.counts()[JobState.QUEUED] == 0  # WAL: readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.create_or_get([new_job(1)])  # and the store works once the lock is gone
    assert store.counts()[JobState.QUEUED] == 1
    store.close()


def test_meta_records_are_replaced_whole_and_seen_by_another_client(
    open_store: StoreFactory,
) -> None:
    writer, reader = open_store(), open_store()
    assert reader.get_meta("active_model") is None
    writer.put_meta("active_model", '{"model_id": "a"}')
    writer.put_meta("active_model", '{"model_id": "b", "note": "\u00e9"}')
    assert reader.get_meta("active_model") == '{"model_id": "b", "note": "\u00e9"}'
    assert reader.get_meta("other") is None


# ---- events (cluster/events.py) -------------------------------------------------------------


def _flow(store: JobStore, n: int = 3) -> list[Job]:
    """n jobs created, run and done (one of them failed instead); the records as stored."""
    jobs = [new_job(100 + i) for i in range(n)]
    store.create_or_get(jobs)
    running = [j.moved(JobState.RUNNING, attempts=1, leases=1) for j in jobs]
    store.put(running)
    finished = [
        j.moved(JobState.DONE, result={"point_id": f"p{i}", "faces": [{"point_id": f"f{i}"}]})
        if i
        else j.moved(JobState.FAILED, error=(ErrorCode.CORRUPT_IMAGE, "bad"))
        for i, j in enumerate(running)
    ]
    store.put(finished)
    return finished


def test_every_stored_transition_is_one_event_in_write_order(store: JobStore) -> None:
    start = store.last_event_id()
    assert store.events_after(None, 100) == []
    jobs = _flow(store)
    events = store.events_after(None, 100)
    assert [(e["job_id"], e["state"]) for e in events] == [
        *((j.id, "queued") for j in jobs),
        *((j.id, "running") for j in jobs),
        *((j.id, "failed" if i == 0 else "done") for i, j in enumerate(jobs)),
    ]
    assert events[-1]["point_ids"] == ["p2", "f2"] and events[-3]["point_ids"] == []
    assert events[-3]["error_code"] == "corrupt_image"
    assert events[3]["attempts"] == 1 and events[0]["lane"] == "normal"
    assert len({e["id"] for e in events}) == len(events)
    assert store.last_event_id() == events[-1]["id"] != start


def test_a_reader_resumes_after_any_event_without_gap_or_duplicate(store: JobStore) -> None:
    _flow(store, 4)
    everything = store.events_after(None, 1000)
    got: list[dict] = []
    after = None
    while True:  # pages of 5, each resumed from the last id read
        page = store.events_after(after, 5)
        if not page:
            break
        got += page
        after = page[-1]["id"]
    assert got == everything
    assert store.events_after(everything[-1]["id"], 10) == []


def test_a_content_already_held_and_a_delete_write_their_events(store: JobStore) -> None:
    job = new_job(7)
    store.create_or_get([job])
    store.create_or_get([new_job(7)])  # the same content: nothing written, no event
    store.delete([job], "test", T0 + 5)
    store.delete([new_job(8)], "retention", T0 + 5, tombstones=False)  # expiry: no event
    events = store.events_after(None, 100)
    assert [(e["job_id"], e["state"]) for e in events] == [(job.id, "queued"), (job.id, "deleted")]


def test_a_resume_from_before_trimmed_events_is_refused_not_a_silent_gap(store: JobStore) -> None:
    from raylens.errors import EventsExpired

    old = new_job(1, now=time.time() - 100)
    store.create_or_get([old])
    first = store.events_after(None, 10)
    time.sleep(0.01)
    cut = time.time()
    time.sleep(0.01)
    store.create_or_get([new_job(2, now=time.time())])
    assert store.trim_events(cut) == 1
    kept = store.events_after(None, 10)
    assert [e["job_id"] for e in kept] != [e["job_id"] for e in first] and len(kept) == 1
    with pytest.raises(EventsExpired):
        store.events_after("0" if isinstance(store, SqliteJobStore) else "0-0", 10)
    # From the last trimmed event on, nothing is missing: that resume is fine.
    assert store.events_after(first[-1]["id"], 10) == kept


def test_event_ids_the_store_never_made_are_refused(store: JobStore) -> None:
    with pytest.raises(ValueError):
        store.events_after("not-an-id", 10)


def test_a_store_opened_with_events_off_writes_none(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", events=False)
    store.create_or_get([new_job(1)])
    assert store.events_after(None, 10) == [] and store.last_event_id() == "0"
