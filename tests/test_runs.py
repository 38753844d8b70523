"""Ingest runs: unit tests of the record's view, and a real system (tiny model, local Ray):
an ingest is a run with counts; one that stops early continues the same run when started
again on the same source; its jobs and events carry the run id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.actors.api import ClusterAPI
from raylens.cluster import runs
from raylens.cluster.jobs import JobState

from _images import write_images


def test_a_running_run_shows_speed_and_eta_and_a_silent_one_shows_interrupted() -> None:
    r = runs.new("/photos", "embed", None, now=1000.0)
    r.update(updated_at=1010.0, total=100, files=100)
    r["counts"].update(done=40, failed=10)
    v = runs.view(r, stale_s=60, now=1010.0)
    assert v["images_per_s"] == 5.0 and v["pending"] == 50 and v["eta_s"] == 10.0
    assert runs.view(r, stale_s=60, now=2000.0)["status"] == "interrupted"
    again = runs.resumed({**r, "status": "interrupted"}, "job-2", now=3000.0)
    assert again["id"] == r["id"] and again["attempts"] == 2 and again["started_at"] == 1000.0
    assert again["counts"]["done"] == 0 and again["attempt_started_at"] == 3000.0


@pytest.mark.integration
def test_an_ingest_is_a_run_and_an_interrupted_one_continues_its_run(
    tmp_path: Path, settings_for, running
) -> None:
    # Slowed batches and a short timeout: the first ingest stops (incomplete) part-way.
    settings = settings_for(
        fault_inject="hang:0.4", max_batch_size=4, lease_max_jobs=4, run_update_s=0.2
    )
    running(settings)
    write_images(tmp_path / "imgs", 24)
    queue = launch.queue_handle(settings)

    cut = settings.model_copy(update={"ingest_timeout_s": 1.5})
    first = ingest.ingest(cut, tmp_path / "imgs", queue, progress=False, keep_ids=True)
    assert not first.complete and first.run_id
    record = json.loads(ray.get(queue.run.remote(first.run_id)))
    assert record["status"] == "interrupted" and record["source"] == str(tmp_path / "imgs")

    second = ingest.ingest(settings, tmp_path / "imgs", queue, progress=False, keep_ids=True)
    assert second.complete and second.run_id == first.run_id
    api = ClusterAPI(settings)
    try:
        shown = asyncio.run(api.run(second.run_id))
        listed = asyncio.run(api.runs(10))
        events = asyncio.run(api.events("0", 0.0, None, ["done"], second.run_id))
    finally:
        api.close()
    assert shown["status"] == "complete" and shown["attempts"] == 2
    assert shown["counts"]["done"] == 24 and shown["total"] == 24 and shown["pending"] == 0
    assert listed[0]["id"] == second.run_id
    jobs = ray.get(queue.states.remote(second.job_ids))
    assert all(j.state is JobState.DONE and j.run_id == first.run_id for j in jobs)
    assert {e["job_id"] for e in events["events"]} == {j.id for j in jobs}


@pytest.mark.integration
def test_an_ingest_sees_its_end_when_it_happens_not_a_poll_interval_later(
    tmp_path: Path, settings_for, running
) -> None:
    # A poll interval far longer than the work: an ingest that slept between looks at its jobs
    # would take at least 30 s; following the run's events by long poll, it ends with its jobs.
    settings = settings_for(ingest_poll_s=30.0)
    running(settings)
    write_images(tmp_path / "imgs", 8)
    queue = launch.queue_handle(settings)

    summary = ingest.ingest(settings, tmp_path / "imgs", queue, progress=False)

    assert summary.complete and summary.done == 8
    assert summary.seconds < 20, summary
