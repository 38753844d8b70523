"""Metrics (cluster/metrics.py): recording never raises; a real local cluster exports them.

The integration test starts its own local Ray (this module's `ray_cluster` overrides the shared
one) with the node's Prometheus port set and a 1 s report interval, runs 6 jobs on the tiny
model and scrapes http://127.0.0.1:<port>/metrics, where Ray prefixes every name with `ray_`.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from raylens.actors import ingest, launch, metrics
from raylens.cluster import intake
from raylens.cluster.jobs import Lane

from _images import write_images
from _ports import free_port

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def test_recording_does_nothing_and_never_raises_when_ray_is_not_initialised() -> None:
    metrics.QUEUE_DEPTH.set(3, lane="bulk")
    metrics.QUEUE_DEPTH.set(3)  # a missing tag would be refused by Ray; never raised here
    metrics.JOBS_FINISHED.inc(0, outcome="done", code="none")  # Ray refuses increments <= 0
    metrics.record_batch("w", 4, decode=0.1, infer=None)
    metrics.record_workers([{"stalled_s": 0.0}, RuntimeError("gone")], 300.0)
    metrics.record_memory("w", "cpu")
    assert (metrics.process_rss() or 0) > 0
    assert all(m.name.startswith("raylens_") and m.description for m in metrics.ALL)
    assert len({m.name for m in metrics.ALL}) == len(metrics.ALL)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[int]:
    """This module's own local Ray: metrics on a known port, reported every second."""
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        namespace="raylens-tests",
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield port
    ray.shutdown()


def scrape(port: int) -> tuple[str, list[Sample]]:
    """The node's Prometheus text, and its raylens samples as (name, labels, value)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1).startswith("ray_raylens_"):
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return text, samples


def total(samples: list[Sample], name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels` (None when there is none)."""
    found = [
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    ]
    return sum(found) if found else None


def problems(samples: list[Sample], jobs: int) -> list[str]:
    """What is not (yet) as expected after `jobs` jobs ran; [] when everything is."""

    def some(name: str, **labels: str) -> float:
        return total(samples, name, **labels) or 0.0

    depth = {lab.get("lane"): v for n, lab, v in samples if n == "ray_raylens_queue_depth"}
    stages = {
        stage: some("ray_raylens_batch_stage_seconds_count", stage=stage)
        for stage in ("decode", "infer", "faces", "write")
    }
    checks = {
        "jobs finished (done) == jobs": total(
            samples, "ray_raylens_jobs_finished_total", outcome="done", code="none"
        )
        == jobs,
        "no job failed": total(samples, "ray_raylens_jobs_finished_total", outcome="failed")
        is None,
        "attempts observed once per job": some("ray_raylens_job_attempts_count", outcome="done")
        == jobs,
        "one attempt each (bucket le=1)": some(
            "ray_raylens_job_attempts_bucket", outcome="done", le="1.0"
        )
        == jobs,
        "jobs gauge: done == jobs": total(samples, "ray_raylens_jobs", state="done") == jobs,
        "jobs gauge: queued == 0": total(samples, "ray_raylens_jobs", state="queued") == 0,
        "jobs gauge: running == 0": total(samples, "ray_raylens_jobs", state="running") == 0,
        "queue depth 0 in each lane": depth == {"interactive": 0, "normal": 0, "bulk": 0},
        "oldest age 0 when empty": total(samples, "ray_raylens_queue_oldest_age_seconds") == 0,
        "1 to jobs batches": 1 <= some("ray_raylens_batch_size_count") <= jobs,
        "every stage observed": all(n >= 1 for n in stages.values()),
        "model load seconds > 0": some("ray_raylens_model_load_seconds") > 0,
        "worker memory (cpu RSS) > 0": some("ray_raylens_worker_memory_bytes", device="cpu") > 0,
        "workers ready >= 1": some("ray_raylens_workers", state="ready") >= 1,
        "workers declared >= 1": some("ray_raylens_workers", state="declared") >= 1,
    }
    return [what for what, ok in checks.items() if not ok]


@pytest.mark.integration
def test_raylens_metrics_are_scraped_from_the_node_when_six_jobs_ran(
    tmp_path: Path, settings_for, running, ray_cluster: int
) -> None:
    port = ray_cluster
    settings = settings_for(supervise_interval_s=0.5, lease_check_interval_s=0.2)
    running(settings)
    write_images(tmp_path / "imgs", 6)

    summary = ingest.ingest(
        settings, tmp_path / "imgs", launch.queue_handle(settings), progress=False
    )
    assert (summary.done, summary.failed) == (6, 0)

    t0 = time.monotonic()
    deadline = t0 + 30  # Ray exports every metrics_report_interval_ms (1 s here)
    while True:
        text, samples = scrape(port)
        missing = problems(samples, jobs=6)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    raylens_lines = [ln for ln in text.splitlines() if "raylens_" in ln]
    assert not missing, "\n".join([f"not as expected: {missing}", *raylens_lines])
    print(f"complete {time.monotonic() - t0:.1f}s after the jobs finished")  # pytest -rP
    print("\n".join(raylens_lines))
    report = ray.get(launch.worker_handles(settings)[0].report.remote())
    clip_load = total(samples, "ray_raylens_model_load_seconds", model=report["model_id"])
    assert clip_load is not None and abs(clip_load - report["load_seconds"]) < 0.01
    for name, kind in [
        ("ray_raylens_queue_depth", "gauge"),
        ("ray_raylens_jobs_finished_total", "counter"),
        ("ray_raylens_batch_size", "histogram"),
        ("ray_raylens_batch_stage_seconds", "histogram"),
    ]:
        assert f"# TYPE {name} {kind}" in text
    assert "# HELP ray_raylens_worker_memory_bytes Memory in use by a worker." in text


@pytest.mark.integration
def test_queue_gauges_show_the_backlog_and_retries_when_no_worker_takes_the_jobs(
    tmp_path: Path, settings_for, ray_cluster: int
) -> None:
    settings = settings_for(lease_check_interval_s=0.2)
    queue = launch.start_queue(settings)  # no workers: the test leases by hand
    try:
        specs = [intake.spec_for_path(p, Lane.BULK) for p in write_images(tmp_path / "imgs", 3)]
        ingest.submit(queue, specs, settings)
        leased = ray.get(queue.lease.remote("by-hand", 1, 1.0))
        ray.get(queue.nack.remote("by-hand", [leased[0].id], "test gives it back"))
        time.sleep(1.0)  # the head of the lane has now waited a while

        deadline = time.monotonic() + 30
        while True:
            _, samples = scrape(ray_cluster)
            seen = {
                "bulk depth": total(samples, "ray_raylens_queue_depth", lane="bulk"),
                "queued": total(samples, "ray_raylens_jobs", state="queued"),
                "running": total(samples, "ray_raylens_jobs", state="running"),
                "retried": total(samples, "ray_raylens_jobs_retried_total", code="internal"),
            }
            age = total(samples, "ray_raylens_queue_oldest_age_seconds", lane="bulk") or 0.0
            want = {"bulk depth": 3, "queued": 3, "running": 0, "retried": 1}
            if (seen == want and age >= 1.0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seen == want
        assert 1.0 <= age < 60
    finally:
        launch.stop(settings, timeout_s=1)
