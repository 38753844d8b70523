"""Concurrent uploads share queue calls, on a real queue actor (local Ray, SQLite), issue 13.

Only the queue runs (no workers), so what it holds is exactly what was submitted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from raylens.actors import launch
from raylens.actors.api import ClusterAPI
from raylens.cluster.jobs import JobState
from raylens.cluster.settings import Settings
from raylens.errors import QueueFull

from _images import image_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_only(
    ray_cluster: None, settings_for: Callable[..., Settings]
) -> Iterator[Callable[..., tuple[Settings, ClusterAPI]]]:
    started: list[tuple[Settings, ClusterAPI]] = []

    def start(**overrides: Any) -> tuple[Settings, ClusterAPI]:
        settings = settings_for(faces_enabled=False, **overrides)
        launch.start_queue(settings)
        started.append((settings, ClusterAPI(settings)))
        return started[-1]

    yield start
    for settings, api in started:
        api.close()
        ray.kill(launch.queue_handle(settings), no_restart=True)


def upload_all(api: ClusterAPI, images: list[bytes]) -> list[Any]:
    async def go() -> list[Any]:
        return await asyncio.gather(
            *(api.submit_uploads([(f"{i}.jpg", d)]) for i, d in enumerate(images)),
            return_exceptions=True,
        )

    return asyncio.run(go())


def test_concurrent_uploads_share_queue_calls_and_each_gets_its_own_durable_job(
    queue_only: Any,
) -> None:
    settings, api = queue_only()
    images = [image_bytes(8800 + i, (40, 40)) for i in range(24)]

    got = upload_all(api, images)

    assert all(isinstance(g, list) and len(g) == 1 for g in got), got
    ids = [g[0]["id"] for g in got]
    assert len(set(ids)) == 24 and all(g[0]["created"] for g in got)
    assert 1 <= api._submits.calls < 24  # shared calls, not one per upload
    jobs = ray.get(launch.queue_handle(settings).states.remote(ids))
    assert [j.state for j in jobs] == [JobState.QUEUED] * 24  # stored before the answer
    assert [j.sha256 for j in jobs] == [g[0]["sha256"] for g in got]


def test_a_full_queue_refuses_only_the_uploads_that_do_not_fit_when_calls_are_shared(
    queue_only: Any,
) -> None:
    """A shared call over the depth cap is QueueFull as a whole; its uploads are then tried one
    by one, so the ones that fit are accepted, as they would have been alone."""
    settings, api = queue_only(queue_max_depth=6)
    images = [image_bytes(8900 + i, (40, 40)) for i in range(10)]

    got = upload_all(api, images)

    accepted = [g[0]["id"] for g in got if isinstance(g, list)]
    refused = [g for g in got if isinstance(g, QueueFull)]
    assert len(accepted) == 6 and len(refused) == 4, got
    queue = launch.queue_handle(settings)
    assert ray.get(queue.depth.remote()) == 6  # nothing was created for a refused upload
    assert all(j.state is JobState.QUEUED for j in ray.get(queue.states.remote(accepted)))
