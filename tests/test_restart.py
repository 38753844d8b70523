"""Integration: a full Ray restart with the Redis job store and Redis payloads loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.cluster import intake
from raylens.cluster.jobs import JobState, Lane, SourceKind
from raylens.cluster.payloads import open_payload_store

from _images import image_bytes, write_images
from _system_fixtures import start_ray, tiny_settings, wait_terminal

pytestmark = pytest.mark.integration


def test_every_job_finishes_when_ray_is_restarted_with_the_redis_store(
    tmp_path: Path, tiny_model, redis_url: str
) -> None:
    if ray.is_initialized():
        ray.shutdown()
    settings = tiny_settings(tmp_path / "data", tiny_model, redis_url=redis_url, lease_timeout_s=3)
    assert settings.uses_redis_payloads
    payloads = open_payload_store(settings)
    specs = [intake.spec_for_path(p, Lane.BULK) for p in write_images(tmp_path / "imgs", 50)]
    specs += [
        intake.spec_for_upload(image_bytes(1000 + i), payloads, settings, Lane.NORMAL, f"u{i}.jpg")
        for i in range(10)
    ]
    start_ray()
    try:
        queue = launch.start_queue(settings)  # no workers yet: jobs stay queued
        ids = [r.job_id for r in ingest.submit(queue, specs, settings)]
        in_flight = ray.get(queue.lease.remote("worker-that-dies-with-ray", 5, 2.0))
        assert len(in_flight) == 5
    finally:
        ray.shutdown()  # the whole cluster goes away: queue actor, leases, everything in memory

    start_ray()
    try:
        launch.start(settings)
        queue = launch.queue_handle(settings)
        rebuilt = ray.get(queue.stats.remote())["rebuilt"]
        assert rebuilt == {"queued": 55, "running": 5}

        jobs = wait_terminal(queue, ids, timeout_s=240)

        assert all(j.state is JobState.DONE for j in jobs), [j.error_message for j in jobs]
        by_id = {j.id: j for j in jobs}
        assert all(by_id[j.id].attempts == 2 for j in in_flight)
        assert sum(1 for j in jobs if j.source_kind is SourceKind.UPLOAD) == 10
        assert ray.get(launch.index_handle(settings).count.remote()) == 60
    finally:
        launch.stop(settings, timeout_s=5)
        ray.shutdown()
