"""Unit: job states, allowed transitions, timestamps and the record's round trip."""

from __future__ import annotations

import pytest

from raylens.cluster.index import point_id
from raylens.cluster.jobs import Job, JobSpec, JobState, Lane, SourceKind
from raylens.errors import ErrorCode, InvalidTransition

SHA = "ab" * 32


def _job() -> Job:
    spec = JobSpec(source_kind=SourceKind.PATH, source="/x.jpg", sha256=SHA, size_bytes=3)
    return Job.new(spec, "ViT-B-32:tag", now=100.0)


def test_job_records_every_transition_with_its_time_when_it_moves() -> None:
    job = _job().moved(JobState.RUNNING, now=101.0, attempts=1)
    job = job.moved(JobState.DONE, now=102.5, result={"dim": 512})

    assert [t.state for t in job.history] == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
    assert job.timestamps() == {"queued": 100.0, "running": 101.0, "done": 102.5}
    assert job.attempts == 1 and job.result == {"dim": 512} and job.state.terminal


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (JobState.QUEUED, JobState.DONE),
        (JobState.DONE, JobState.QUEUED),
        (JobState.DONE, JobState.FAILED),
        (JobState.FAILED, JobState.DONE),
    ],
)
def test_job_refuses_the_move_when_the_transition_is_not_allowed(start, to) -> None:
    job = _job().model_copy(update={"state": start})
    with pytest.raises(InvalidTransition):
        job.moved(to)


def test_failed_job_carries_code_and_message_when_it_fails() -> None:
    job = (
        _job()
        .moved(JobState.RUNNING, attempts=1)
        .moved(JobState.FAILED, error=(ErrorCode.TRUNCATED_IMAGE, "cut at 512 bytes"))
    )
    again = Job.from_json(job.to_json())
    assert again == job
    assert again.error_code is ErrorCode.TRUNCATED_IMAGE and again.error_message


def test_content_key_differs_when_the_model_differs() -> None:
    spec = JobSpec(
        source_kind=SourceKind.UPLOAD, source=SHA, sha256=SHA, size_bytes=1, lane=Lane.INTERACTIVE
    )
    assert spec.content_key("a") != spec.content_key("b")
    assert spec.content_key("a") == spec.content_key("a")


def test_point_id_is_stable_for_the_same_content_and_model_when_computed_twice() -> None:
    assert point_id(SHA, "m1") == point_id(SHA, "m1")
    assert point_id(SHA, "m1") != point_id(SHA, "m2")
    assert point_id(SHA, "m1") != point_id("cd" * 32, "m1")
