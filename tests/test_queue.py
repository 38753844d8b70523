"""Integration: the queue actor alone (real Ray, real stores), leased by hand like a worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from raylens.actors import launch
from raylens.cluster import intake
from raylens.cluster.jobs import JobState, Lane
from raylens.errors import ErrorCode, QueueFull

from _images import write_images

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_for(ray_cluster):
    started = []

    def make(settings):
        started.append(settings)
        return launch.start_queue(settings)

    yield make
    for s in started:
        launch.stop(s, timeout_s=1)


def _specs(tmp_path: Path, n: int, lane: Lane = Lane.BULK):
    return [intake.spec_for_path(p, lane) for p in write_images(tmp_path / "imgs", n)]


def test_enqueue_refuses_with_queue_full_when_depth_would_pass_the_cap(
    tmp_path, settings_for, queue_for
) -> None:
    settings = settings_for(queue_max_depth=5)
    queue = queue_for(settings)
    specs = _specs(tmp_path, 8)
    ray.get(queue.submit.remote(specs[:4]))

    with pytest.raises(QueueFull) as info:
        ray.get(queue.submit.remote(specs[4:6]))

    assert "RAYLENS_QUEUE_MAX_DEPTH=5" in info.value.message
    stats = ray.get(queue.stats.remote())
    assert sum(stats["depth"].values()) == 4
    assert stats["jobs"]["queued"] == 4  # nothing written for the refused batch


def test_job_is_dead_lettered_when_its_lease_expires_max_attempts_times(
    tmp_path, settings_for, queue_for
) -> None:
    settings = settings_for(lease_timeout_s=0.5, lease_check_interval_s=0.1, max_attempts=3)
    queue = queue_for(settings)
    job_id = ray.get(queue.submit.remote(_specs(tmp_path, 1)))[0].job_id

    for attempt in range(1, 4):
        leased = ray.get(queue.lease.remote("hung-worker", 1, 5.0))
        assert [j.id for j in leased] == [job_id] and leased[0].attempts == attempt
        # never ack: the reaper re-queues (or dead-letters) it after the lease deadline
    deadline = time.monotonic() + 10
    while (job := ray.get(queue.states.remote([job_id]))[0]).state is not JobState.FAILED:
        assert time.monotonic() < deadline, job.state
        time.sleep(0.1)

    assert job.error_code is ErrorCode.DEAD_LETTER
    assert "3 attempts" in (job.error_message or "")
    assert [t.state for t in job.history].count(JobState.QUEUED) == 3
    assert ray.get(queue.lease.remote("w", 1, 0.3)) == []

    assert ray.get(queue.retry.remote([job_id])) == [job_id]
    assert ray.get(queue.states.remote([job_id]))[0].state is JobState.QUEUED


def test_late_ack_is_ignored_when_the_job_already_finished(
    tmp_path, settings_for, queue_for
) -> None:
    settings = settings_for()
    queue = queue_for(settings)
    job_id = ray.get(queue.submit.remote(_specs(tmp_path, 1)))[0].job_id
    ray.get(queue.lease.remote("w1", 1, 5.0))
    ray.get(queue.ack.remote("w1", [(job_id, {"n": 1})], []))

    counts = ray.get(queue.ack.remote("w2", [(job_id, {"n": 2})], []))

    job = ray.get(queue.states.remote([job_id]))[0]
    assert counts["done"] == 0
    assert job.state is JobState.DONE and job.result == {"n": 1}


def test_retry_failed_requeues_only_the_failed_jobs_with_the_code_asked_for(
    tmp_path, settings_for, queue_for
) -> None:
    from raylens.actors.queue import Failure

    queue = queue_for(settings_for())
    ids = [r.job_id for r in ray.get(queue.submit.remote(_specs(tmp_path, 4)))]
    leased = ray.get(queue.lease.remote("w", 4, 5.0))
    assert len(leased) == 4
    failures = [
        Failure(ids[0], ErrorCode.TRUNCATED_IMAGE, "cut"),
        Failure(ids[1], ErrorCode.CORRUPT_IMAGE, "bad"),
        Failure(ids[2], ErrorCode.TRUNCATED_IMAGE, "cut"),
    ]
    ray.get(queue.ack.remote("w", [(ids[3], {"ok": True})], failures))

    moved = ray.get(queue.retry_failed.remote(ErrorCode.TRUNCATED_IMAGE))
    assert sorted(moved) == sorted([ids[0], ids[2]])
    states = [j.state for j in ray.get(queue.states.remote(ids))]
    assert states == [JobState.QUEUED, JobState.FAILED, JobState.QUEUED, JobState.DONE]
    assert ray.get(queue.retry_failed.remote(None)) == [ids[1]]
    assert ray.get(queue.retry_failed.remote(None)) == []


def test_depth_cap_holds_when_submits_arrive_concurrently(
    tmp_path, settings_for, queue_for
) -> None:
    settings = settings_for(queue_max_depth=5)
    queue = queue_for(settings)
    specs = _specs(tmp_path, 12)

    refs = [queue.submit.remote(specs[i : i + 2]) for i in range(0, 12, 2)]  # all in flight
    admitted = refused = 0
    for ref in refs:
        try:
            admitted += len(ray.get(ref))
        except QueueFull:
            refused += 1

    stats = ray.get(queue.stats.remote())
    assert admitted <= 5 and refused >= 4
    assert sum(stats["depth"].values()) == admitted == stats["jobs"]["queued"]


def test_stale_failure_ack_is_ignored_when_another_worker_holds_the_lease(
    tmp_path, settings_for, queue_for
) -> None:
    from raylens.actors.queue import Failure

    settings = settings_for(lease_timeout_s=3.0, lease_check_interval_s=0.1, max_attempts=5)
    queue = queue_for(settings)
    job_id = ray.get(queue.submit.remote(_specs(tmp_path, 1)))[0].job_id
    (old,) = ray.get(queue.lease.remote("A", 1, 5.0))
    (new,) = ray.get(queue.lease.remote("B", 1, 15.0))  # after A's lease expired and was reaped
    assert new.attempts == old.attempts + 1

    late = [Failure(job_id, ErrorCode.INTERNAL, "late", retryable=True)]
    counts = ray.get(queue.ack.remote("A", [], late, {job_id: old.attempts}))

    assert counts == {"done": 0, "failed": 0, "requeued": 0}
    assert ray.get(queue.states.remote([job_id]))[0].state is JobState.RUNNING
    assert ray.get(queue.heartbeat.remote("B", [job_id])) == 1  # B's lease untouched
    done = ray.get(queue.ack.remote("B", [(job_id, {"by": "B"})], [], {job_id: new.attempts}))
    assert done["done"] == 1
    job = ray.get(queue.states.remote([job_id]))[0]
    assert job.state is JobState.DONE and job.result == {"by": "B"}


def test_uploaded_bytes_go_once_no_job_needs_them_when_keep_uploads_is_off(
    tmp_path, settings_for, queue_for
) -> None:
    from raylens.cluster.jobs import Pipeline
    from raylens.cluster.payloads import open_payload_store

    from _images import image_bytes

    settings = settings_for(keep_uploads=False)
    queue = queue_for(settings)
    payloads = open_payload_store(settings)
    data = image_bytes(4242)
    embed = intake.spec_for_upload(data, payloads, settings, Lane.NORMAL, "a.jpg", Pipeline.EMBED)
    faces = embed.model_copy(update={"pipeline": Pipeline.FACES})
    kept = image_bytes(4243)
    other = intake.spec_for_upload(kept, payloads, settings, Lane.NORMAL, "b.jpg", Pipeline.EMBED)
    ray.get(queue.submit.remote([embed, faces]))

    first = ray.get(queue.lease.remote("w1", 1))
    ray.get(queue.ack.remote("w1", [(first[0].id, {})], [], {first[0].id: first[0].lease_token}))
    assert payloads.exists(embed.sha256)  # the faces job still needs the bytes
    second = ray.get(queue.lease.remote("w1", 1))
    ray.get(queue.ack.remote("w1", [(second[0].id, {})], [], {second[0].id: second[0].lease_token}))

    assert not payloads.exists(embed.sha256)
    assert payloads.exists(other.sha256)  # never submitted: an orphan for raylens gc, not this
