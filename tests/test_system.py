"""Integration: real local Ray, SQLite store, Qdrant local mode, tiny OpenCLIP (real path)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.cluster import intake
from raylens.cluster.jobs import JobState, Lane

from _images import bad_inputs, write_images
from _system_fixtures import wait_terminal

pytestmark = pytest.mark.integration


def test_ingest_embeds_every_image_once_when_200_images_are_ingested_twice(
    tmp_path: Path, settings_for, running
) -> None:
    settings = settings_for(num_workers=2)
    running(settings)
    write_images(tmp_path / "imgs", 200)
    queue = launch.queue_handle(settings)

    first = ingest.ingest(settings, tmp_path / "imgs", queue, progress=False, keep_ids=True)

    assert (first.files, first.submitted, first.done, first.failed) == (200, 200, 200, 0)
    assert first.complete
    assert first.latency_p50_s is not None and first.latency_p99_s is not None
    assert 0 < first.latency_p50_s <= first.latency_p99_s <= first.seconds
    index = launch.index_handle(settings)
    assert ray.get(index.count.remote()) == 200
    ids = ray.get(index.point_ids.remote())
    assert len(set(ids)) == 200
    jobs = ray.get(queue.states.remote(first.job_ids))
    assert all(j.state is JobState.DONE and j.attempts == 1 for j in jobs)
    assert all({"queued", "running", "done"} <= set(j.timestamps()) for j in jobs)

    again = ingest.ingest(settings, tmp_path / "imgs", queue, progress=False)

    assert (again.submitted, again.skipped, again.done) == (0, 200, 0)
    assert ray.get(index.count.remote()) == 200
    # The model loaded once per worker process, however many batches it served.
    reports = [ray.get(w.report.remote()) for w in launch.worker_handles(settings)]
    assert len(reports) == 2
    assert all(r["load_count"] == 1 for r in reports)
    # Leases start at one model batch and grow with the worker's measured speed, never past
    # lease_max_jobs.
    assert sum(r["batches"] for r in reports) >= 200 // settings.lease_max_jobs
    assert all(
        settings.max_batch_size <= r["next_lease_jobs"] <= settings.lease_max_jobs for r in reports
    )
    assert sum(r["images"] for r in reports) == 200


def test_batch_fails_only_bad_inputs_when_good_and_bad_images_are_mixed(
    tmp_path: Path, settings_for, running
) -> None:
    settings = settings_for(max_batch_size=32, batch_wait_ms=200)
    running(settings)
    folder = tmp_path / "mixed"
    good = write_images(folder, 12)
    bad = bad_inputs(folder)
    worker = launch.worker_handles(settings)[0]
    pid_before = ray.get(worker.report.remote())["pid"]

    summary = ingest.ingest(
        settings, folder, launch.queue_handle(settings), progress=False, keep_ids=True
    )

    assert summary.done == len(good)
    assert summary.failed_by_code == {code: 1 for code in bad}
    jobs = ray.get(launch.queue_handle(settings).states.remote(summary.job_ids))
    by_name = {j.name: j for j in jobs}
    for code, path in bad.items():
        job = by_name[path.name]
        assert job.state is JobState.FAILED
        assert job.error_code is not None and job.error_code.value == code
        assert job.error_message
        assert job.attempts == 1  # input errors are never retried
    report = ray.get(worker.report.remote())
    assert report["pid"] == pid_before
    assert report["load_count"] == 1


def test_every_job_ends_done_when_a_worker_is_killed_mid_batch(
    tmp_path: Path, settings_for, running
) -> None:
    settings = settings_for(max_batch_size=4, lease_timeout_s=4, prefetch_batches=2)
    running(settings)
    write_images(tmp_path / "imgs", 240)
    queue = launch.queue_handle(settings)
    specs = [intake.spec_for_path(p, Lane.BULK) for p in sorted((tmp_path / "imgs").rglob("*.*"))]
    ids = [r.job_id for r in ingest.submit(queue, specs, settings)]
    worker = launch.worker_handles(settings)[0]
    pid_before = ray.get(worker.report.remote())["pid"]
    deadline = time.monotonic() + 60
    while ray.get(worker.report.remote())["images"] < 8:
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.05)

    ray.kill(worker, no_restart=False)  # SIGKILL-like; Ray restarts the actor

    jobs = wait_terminal(queue, ids, timeout_s=240)
    assert all(j.state is JobState.DONE for j in jobs), {j.state for j in jobs}
    retried = [j for j in jobs if j.attempts >= 2]
    assert retried, "the killed worker held leases; their jobs must show a second attempt"
    assert all(j.attempts <= settings.max_attempts for j in jobs)
    assert all([t.state for t in j.history].count(JobState.RUNNING) == j.attempts for j in retried)
    report = ray.get(worker.report.remote())
    assert report["pid"] != pid_before and report["load_count"] == 1
    assert ray.get(launch.index_handle(settings).count.remote()) == 240


def test_nothing_is_lost_when_the_queue_actor_is_killed_during_work(
    tmp_path: Path, settings_for, running
) -> None:
    settings = settings_for(max_batch_size=2)
    running(settings)
    write_images(tmp_path / "imgs", 160)
    queue = launch.queue_handle(settings)
    specs = [intake.spec_for_path(p, Lane.BULK) for p in sorted((tmp_path / "imgs").rglob("*.*"))]
    ids = [r.job_id for r in ingest.submit(queue, specs, settings)]

    killed_at = time.time()
    ray.kill(queue, no_restart=False)  # Ray restarts it; __init__ rebuilds from the store

    deadline = time.monotonic() + 60
    while True:  # until the restarted instance answers (the kill itself is asynchronous)
        try:
            stats = ray.get(queue.stats.remote(), timeout=10)
            if stats["started_at"] > killed_at:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            pass
        assert time.monotonic() < deadline, "queue actor did not come back"
        time.sleep(0.2)
    assert stats["rebuilt"]["queued"] + stats["rebuilt"]["running"] > 0
    jobs = wait_terminal(queue, ids, timeout_s=240)
    assert all(j.state is JobState.DONE for j in jobs)
    assert ray.get(launch.index_handle(settings).count.remote()) == 160


def test_interactive_jobs_are_leased_before_bulk_when_both_are_queued(
    tmp_path: Path, settings_for, ray_cluster
) -> None:
    settings = settings_for()
    queue = launch.start_queue(settings)  # no workers: the test leases by hand
    try:
        paths = write_images(tmp_path / "imgs", 6)
        bulk = [intake.spec_for_path(p, Lane.BULK) for p in paths[:3]]
        inter = [intake.spec_for_path(p, Lane.INTERACTIVE) for p in paths[3:]]
        normal = [intake.spec_for_path(p, Lane.NORMAL) for p in paths[:1]]
        ingest.submit(queue, bulk, settings)
        inter_ids = {r.job_id for r in ingest.submit(queue, inter, settings)}
        # Same content as a bulk job already queued: the existing job is returned, not a new one.
        dup = ingest.submit(queue, normal, settings)[0]
        assert not dup.created

        leased = ray.get(queue.lease.remote("by-hand", 3, 1.0))

        assert {j.id for j in leased} == inter_ids
        assert all(j.state is JobState.RUNNING and j.attempts == 1 for j in leased)
    finally:
        launch.stop(settings, timeout_s=1)
