"""Integration: the supervisor scales workers on a real local Ray cluster (tiny model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.cluster import intake
from raylens.cluster.jobs import JobState, Lane, Pipeline

from _images import write_images
from _system_fixtures import long_test, wait_terminal

pytestmark = pytest.mark.integration


def _supervisor(settings):
    return ray.get_actor(settings.supervisor_actor_name, namespace=settings.namespace)


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def _submit_backlog(settings, tmp_path: Path, n: int) -> tuple[object, list[str]]:
    queue = launch.queue_handle(settings)
    specs = [
        intake.spec_for_path(p, Lane.BULK, pipeline=Pipeline.EMBED)
        for p in write_images(tmp_path / "imgs", n)
    ]
    return queue, [r.job_id for r in ingest.submit(queue, specs, settings)]


def test_a_backlog_adds_a_worker_and_idleness_drains_and_removes_it_failing_no_job(
    tmp_path: Path, settings_for, running
) -> None:
    settings = settings_for(
        num_workers=1,
        min_workers=1,
        max_workers=2,
        scale_up_backlog=8,
        scale_cooldown_s=0,
        scale_down_idle_s=3,
        supervise_interval_s=0.5,
        max_batch_size=2,
        fault_inject="hang:0.5",  # 4 jobs/s: a backlog one worker needs ~30 s to clear
    )
    running(settings)
    queue, ids = _submit_backlog(settings, tmp_path, 120)

    # Up: the backlog (120 queued for 1 worker, over 8 each) adds raylens-worker-1, which works.
    _wait(
        lambda: "raylens-worker-1" in launch.worker_names(settings),
        60,
        "a second worker",
    )
    worker1 = ray.get_actor("raylens-worker-1", namespace=settings.namespace)
    _wait(lambda: ray.get(worker1.report.remote())["images"] > 0, 120, "worker-1 to embed")

    jobs = wait_terminal(queue, ids, timeout_s=240)
    assert all(j.state is JobState.DONE for j in jobs)

    # Down: idle 3 s with nothing queued -> drained and removed, back to min_workers.
    _wait(lambda: len(launch.worker_names(settings)) == 1, 60, "an idle worker to be removed")
    report = ray.get(_supervisor(settings).report.remote())
    actions = [(h["action"], h["worker"]) for h in report["scale_history"]]
    assert actions[0] == ("up", "raylens-worker-1"), actions
    assert actions[1][0] == "down" and len(actions) == 2, actions  # whichever idled first
    assert report["replaced"] == [], report["replaced"]
    # The scale-down failed no job and cost none an attempt: nothing was handed back by a
    # stopping worker (a lease that expired on a loaded machine would be another matter).
    jobs = ray.get(queue.states.remote(ids))
    assert all(j.state is JobState.DONE for j in jobs)
    given_back = [j.id for j in jobs if any("stopping" in (t.note or "") for t in j.history)]
    assert given_back == [], given_back
    attempts = sorted({j.attempts for j in jobs})
    print(f"scale history {actions}; attempts seen {attempts}")


@long_test
def test_a_worker_the_cluster_cannot_place_stays_pending_and_is_not_replaced(
    tmp_path: Path, settings_for, running
) -> None:
    # 4 CPUs in the test cluster; workers of 3 CPUs: a second one cannot be placed. A pending
    # actor is a resource demand, which is what makes Ray's autoscaler add a node on a cluster.
    settings = settings_for(
        num_workers=1,
        min_workers=1,
        max_workers=3,
        worker_num_cpus=3,
        scale_up_backlog=4,
        supervise_interval_s=0.5,
        scale_cooldown_s=0,
        max_batch_size=2,
        fault_inject="hang:0.5",
    )
    running(settings)
    queue, job_ids = _submit_backlog(settings, tmp_path, 40)
    _wait(
        lambda: "raylens-worker-1" in launch.worker_names(settings),
        30,
        "the backlog to add a worker",
    )
    time.sleep(3)  # a few supervisor rounds with the pending worker and the backlog still there
    import ray._private.state as gcs  # the GCS actor table; the state API needs a dashboard

    mine = {
        n: ray.get_actor(n, namespace=settings.namespace) for n in launch.worker_names(settings)
    }
    ids = {h._actor_id.hex(): n for n, h in mine.items()}
    states = {ids[k]: a["State"] for k, a in gcs.actors().items() if k in ids}
    assert states == {"raylens-worker-0": "ALIVE", "raylens-worker-1": "PENDING_CREATION"}
    report = ray.get(_supervisor(settings).report.remote())
    assert report["replaced"] == []  # pending is not hung
    assert [h["action"] for h in report["scale_history"]] == ["up"]  # no more while pending
    jobs = wait_terminal(queue, job_ids, timeout_s=120)
    assert all(j.state is JobState.DONE for j in jobs)
    # A pending actor would never answer the teardown's drain call: remove it first.
    ray.kill(ray.get_actor("raylens-worker-1", namespace=settings.namespace), no_restart=True)
