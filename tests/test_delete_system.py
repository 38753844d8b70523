"""Delete on the real parts (local Ray, SQLite, the embedded engine, the tiny model): a job
deleted while its worker runs it stays deleted, a file ingested by path is never touched, and
the `raylens delete` verb. Every inference stalls (fault drill hang:2.5), so a job can be
caught running."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.actors.api import ClusterAPI
from raylens.cli.commands import cmd_delete
from raylens.cluster.index import point_id
from raylens.cluster.jobs import Job, JobState, Lane, Pipeline
from raylens.cluster.settings import Settings

from _images import image_bytes
from _system_fixtures import tiny_settings

pytestmark = pytest.mark.integration

HANG_S = 2.5


@pytest.fixture(scope="module")
def system(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    settings = tiny_settings(
        tmp_path_factory.mktemp("delete") / "data",
        tiny_model,
        faces_enabled=False,
        fault_inject=f"hang:{HANG_S}",
        lease_timeout_s=30,
    )
    launch.start(settings)
    yield settings
    launch.stop(settings, timeout_s=5)


def call(coro: Any) -> Any:
    return asyncio.run(coro)


def job_of(settings: Settings, job_id: str) -> Job | None:
    return ray.get(launch.queue_handle(settings).states.remote([job_id]))[0]


def wait_for(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def worker_batches(settings: Settings) -> int:
    return sum(ray.get(w.report.remote())["batches"] for w in launch.worker_handles(settings))


def image_points(settings: Settings) -> list[str]:
    return list(ray.get(launch.index_handle(settings).point_ids.remote()))


def test_a_job_deleted_while_it_runs_does_not_bring_its_vectors_back(system: Settings) -> None:
    api = ClusterAPI(system)
    data = image_bytes(7001, (80, 60))
    [sub] = call(api.submit_uploads([("racing.jpg", data)], pipeline=Pipeline.EMBED))
    job_id, sha = sub["id"], sub["sha256"]
    done_before = worker_batches(system)
    wait_for(
        "the job to run",
        lambda: (j := job_of(system, job_id)) is not None and j.state is JobState.RUNNING,
    )

    out = call(api.delete_jobs([job_id], "test"))

    assert out["jobs"]["by_state"] == {"running": 1} and out["jobs"]["cancelled"] == 1
    assert out["payloads"]["removed"] == 1
    # The worker is still in its (stalled) inference: it stores the vector after the delete,
    # then acks; the ack tells it the job was deleted, and it removes the vector again.
    wait_for("the worker's batch", lambda: worker_batches(system) > done_before, HANG_S * 8)
    model_id = ray.get(launch.worker_handles(system)[0].report.remote())["model_id"]
    wait_for(
        "the late vector to be removed",
        lambda: point_id(sha, model_id) not in image_points(system),
        10,
    )
    assert job_of(system, job_id) is None
    again = call(api.delete_jobs([job_id], "test"))
    assert again["jobs"]["deleted_before"] == [job_id] and again["points"]["images"] == 0
    api.close()


def test_delete_of_a_file_ingested_by_path_leaves_the_file(
    system: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / "keep-me.jpg"
    path.write_bytes(image_bytes(7002, (72, 48)))
    summary = ingest.ingest(
        system,
        folder,
        launch.queue_handle(system),
        Lane.NORMAL,
        progress=False,
        pipeline=Pipeline.EMBED,
    )
    assert summary.done == 1, summary

    api = ClusterAPI(system)
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    out = call(api.delete_content([sha], "test"))
    api.close()

    assert out["jobs"]["removed"] == 1 and out["points"]["images"] == 1
    assert out["payloads"] == {"removed": 0, "bytes": 0}
    assert path.is_file()  # raylens does not own files ingested by path


def test_the_delete_verb_reports_counts_as_json_and_exits_3_for_an_unknown_id(
    system: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ClusterAPI(system)
    [sub] = call(api.submit_uploads([("cli.jpg", image_bytes(7003, (64, 64)))]))
    wait_for(
        "the job to finish",
        lambda: (j := job_of(system, sub["id"])) is not None and j.state is JobState.DONE,
        HANG_S * 8,
    )
    api.close()
    args = argparse.Namespace(ids=[sub["id"], "no-such-job"], sha256=[], json=True, address=None)

    rc = cmd_delete(system, args)

    out = json.loads(capsys.readouterr().out)
    assert rc == 3 and out["not_found"] == ["no-such-job"]
    assert out["total"]["jobs"] == 1 and out["total"]["images"] == 1
    assert out["total"]["payloads"] == 1 and out["deleted"][0]["by"].startswith("cli")
    assert job_of(system, sub["id"]) is None


def test_gc_removes_only_payloads_no_job_needs_and_status_counts_their_bytes(
    system: Settings,
) -> None:
    from raylens.cluster.payloads import open_payload_store

    api = ClusterAPI(system)
    [sub] = call(api.submit_uploads([("kept.jpg", image_bytes(7004, (64, 64)))]))
    api.close()
    # A crash between the payload write and the job write leaves bytes no job names.
    payloads = open_payload_store(system)
    orphan = image_bytes(7005, (64, 64))
    orphan_key = payloads.put(orphan)
    assert payloads.exists(orphan_key), (orphan_key, system.payload_dir)
    before = launch.status(system)["payloads"]

    young = ClusterAPI(system)  # the default minimum age protects a fresh orphan
    left = call(young.collect_garbage())
    young.close()
    assert left["removed"] == 0 and left["young"] >= 2 and payloads.exists(orphan_key)
    aged = ClusterAPI(system.model_copy(update={"gc_min_age_s": 0.0}))
    dry = call(aged.collect_garbage(dry_run=True))
    real = call(aged.collect_garbage())
    again = call(aged.collect_garbage())
    aged.close()

    assert dry["orphans"] == 1 and dry["orphan_bytes"] == len(orphan) and dry["removed"] == 0
    assert real["removed"] == 1 and real["freed_bytes"] == len(orphan)
    assert not payloads.exists(orphan_key) and payloads.exists(sub["sha256"])
    assert again["orphans"] == 0
    after = launch.status(system)["payloads"]
    assert after["count"] == before["count"] - 1
    assert after["bytes"] == before["bytes"] - len(orphan)
