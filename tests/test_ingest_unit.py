"""Unit: `raylens ingest` streams a folder (bounded memory), and counts what it finds.

The queue here is a stand-in (an in-memory dict of real Job records), so these tests pin the
ingest loop's own rules; tests/test_system.py and tests/test_cli.py run it on the real system.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from raylens.actors import ingest
from raylens.cluster import intake
from raylens.cluster.jobs import Job, JobSpec, JobState, Outcome, SubmitResult
from raylens.cluster.settings import Settings
from raylens.errors import SourceMissing


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeQueue:
    """submit dedups by content (as the real queue does); a job finishes the second time its
    state is asked for, so an ingest has to follow it for a while."""

    def __init__(self) -> None:
        self.by_key: dict[str, Job] = {}
        self.by_id: dict[str, Job] = {}
        self.asked: dict[str, int] = {}
        self.submits: list[int] = []
        self.submit = _Remote(self._submit)
        self.states = _Remote(self._states)
        self.outcomes = _Remote(self._outcomes)

    def add_done(self, spec: JobSpec, created_at: float) -> None:
        job = Job.new(spec, "m", now=created_at)
        job = job.moved(JobState.RUNNING, now=created_at).moved(JobState.DONE, now=created_at)
        self.by_key[job.content_key] = self.by_id[job.id] = job

    def _submit(self, specs: list[JobSpec]) -> list[SubmitResult]:
        self.submits.append(len(specs))
        out = []
        for spec in specs:
            key = spec.content_key("m")
            job = self.by_key.get(key)
            created = job is None
            if job is None:
                job = Job.new(spec, "m")
                self.by_key[key] = self.by_id[job.id] = job
            out.append(SubmitResult(job.id, created, job.state, job.created_at))
        return out

    def _states(self, ids: list[str]) -> list[Job | None]:
        out = []
        for job_id in ids:
            self.asked[job_id] = self.asked.get(job_id, 0) + 1
            job = self.by_id[job_id]
            if job.state is JobState.QUEUED and self.asked[job_id] >= 2:
                job = job.moved(JobState.RUNNING).moved(JobState.DONE, result={})
                self.by_id[job_id] = job
            out.append(job)
        return out

    def _outcomes(self, ids: list[str]) -> list[Outcome]:
        """As JobQueue.outcomes: only the finished jobs, as tuples."""
        return [
            (j.id, j.state.value, None, j.created_at, j.timestamps().get("done"))
            for j in self._states(ids)
            if j is not None and j.state.terminal
        ]

    def pending_now(self) -> int:
        return sum(1 for j in self.by_id.values() if not j.state.terminal)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest.ray, "get", lambda value: value)


def _files(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"img_{i:05d}.jpg"
        p.write_bytes(b"\xff\xd8\xff" + i.to_bytes(4, "big"))  # distinct content; never decoded
        out.append(p)
    return out


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(ingest_poll_s=0.001, ingest_chunk=50, max_batch_size=10)
    return Settings(**{**base, **kw})


def test_ingest_follows_at_most_max_pending_jobs_and_lists_lazily_when_the_folder_is_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path / "big", 2000)
    listed = [0]
    real_discover = intake.discover

    def counting(root: Path) -> Any:
        for p in real_discover(root):
            listed[0] += 1
            yield p

    monkeypatch.setattr(ingest, "discover", counting)
    queue = FakeQueue()
    seen_pending: list[int] = []
    listed_at_first_submit: list[int] = []
    submit = queue._submit

    def watched(specs: list[JobSpec]) -> list[SubmitResult]:
        if not listed_at_first_submit:
            listed_at_first_submit.append(listed[0])
        seen_pending.append(queue.pending_now())
        return submit(specs)

    queue.submit = _Remote(watched)
    settings = _settings(ingest_max_pending=120)

    summary = ingest.ingest(settings, tmp_path / "big", queue, progress=False)

    assert (summary.files, summary.submitted, summary.done, summary.failed) == (2000, 2000, 2000, 0)
    assert summary.complete and summary.job_ids == []  # ids are kept only on request
    # Listing is streamed: the first batch went out when at most two chunks had been listed.
    assert listed_at_first_submit[0] <= 10 + 50
    # Never more than max_pending (plus the chunk being submitted) followed at once.
    assert max(seen_pending) <= 120 + 50
    assert queue.submits[0] == 10  # the first chunk is one batch, so workers start at once


def test_ingest_counts_skipped_duplicates_and_unreadable_files_when_they_are_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mixed"
    files = _files(folder, 6)
    (folder / "copy_of_0.jpg").write_bytes(files[0].read_bytes())  # same content as img_00000
    queue = FakeQueue()
    queue.add_done(intake.spec_for_path(files[1], ingest.Lane.BULK), created_at=time.time() - 60)
    gone = folder / "gone.jpg"
    real_discover = intake.discover

    def with_a_vanished_file(root: Path) -> Any:
        yield gone  # listed, then deleted before it was hashed
        yield from real_discover(root)

    monkeypatch.setattr(ingest, "discover", with_a_vanished_file)

    summary = ingest.ingest(_settings(), folder, queue, progress=False, keep_ids=True)

    assert summary.files == 8
    assert (summary.submitted, summary.skipped, summary.duplicates) == (5, 1, 1)
    assert (summary.done, summary.failed, summary.failed_by_code) == (5, 1, {"source_missing": 1})
    assert summary.complete
    assert len(summary.job_ids) == 7  # one per submitted file; the unreadable one has no job


def test_ingest_raises_source_missing_when_the_folder_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing, match="does not exist"):
        ingest.ingest(_settings(), tmp_path / "nope", FakeQueue(), progress=False)


def test_discover_streams_media_files_in_a_stable_order_without_following_dir_symlinks(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for p in ["x.jpg", "notes.txt", "a/y.PNG", "b/z.mp4", "b/deep/w.webp"]:
        (root / p).write_bytes(b"x")
    os.symlink(root / "b", root / "link_to_b")
    os.symlink(root / "x.jpg", root / "a" / "x_link.jpg")

    first = list(intake.discover(root))
    second = list(intake.discover(root))

    assert first == second
    rel = sorted(str(p.relative_to(root)) for p in first)
    # The file symlink is resolved to its target; the directory symlink is not walked.
    assert rel == ["a/y.PNG", "b/deep/w.webp", "b/z.mp4", "x.jpg", "x.jpg"]


def test_latency_sample_stays_bounded_when_a_run_outgrows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "LATENCY_SAMPLE", 100)
    run = ingest._Run(_settings(), FakeQueue(), ingest.IngestSummary(path="."), None, 0.0, False)
    for i in range(10_000):
        run._latency(float(i))
    assert len(run.latencies) == 100
    assert 2000 < sum(run.latencies) / 100 < 8000  # a uniform sample of 0..9999, not the first 100


def test_ingest_gives_up_incomplete_at_its_timeout_when_nothing_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path / "stuck", 300)
    queue = FakeQueue()
    monkeypatch.setattr(queue, "_states", lambda ids: [queue.by_id[i] for i in ids])  # never done
    settings = _settings(ingest_max_pending=60, ingest_timeout_s=0.5)
    t0 = time.monotonic()

    summary = ingest.ingest(settings, tmp_path / "stuck", queue, progress=False)

    assert time.monotonic() - t0 < 10
    assert not summary.complete
    assert summary.done == 0 and summary.files < 300  # listing stopped at the pending cap
