"""Unit: webhook bodies, signatures, callback URL checks and retry delays (cluster/webhooks.py)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from raylens.cluster import webhooks
from raylens.cluster.jobs import Job, JobSpec, JobState, SourceKind
from raylens.errors import InvalidRequest

SECRET = "s" * 32


def done_job() -> Job:
    sha = hashlib.sha256(b"x").hexdigest()
    spec = JobSpec(
        source_kind=SourceKind.UPLOAD,
        source=sha,
        sha256=sha,
        size_bytes=1,
        callback_url="https://example.com/hook",
    )
    job = Job.new(spec, "m").moved(JobState.RUNNING, attempts=1)
    return job.moved(JobState.DONE, result={"point_id": "p1"})


def test_the_body_names_the_job_and_its_outcome() -> None:
    job = done_job()
    assert job.callback_url == "https://example.com/hook"
    doc = json.loads(webhooks.body(job, "42"))
    assert doc["type"] == "job.done" and doc["event_id"] == "42"
    assert doc["job"]["id"] == job.id and doc["job"]["point_id"] == "p1"


def test_a_receiver_accepts_the_signature_and_rejects_tampering_and_replays() -> None:
    payload = webhooks.body(done_job(), "1")
    header = webhooks.sign(SECRET, payload)
    assert webhooks.verify(SECRET, payload, header)
    assert not webhooks.verify(SECRET, payload + b" ", header)  # another body
    assert not webhooks.verify("t" * 32, payload, header)  # another secret
    old = webhooks.sign(SECRET, payload, at=time.time() - 3600)
    assert not webhooks.verify(SECRET, payload, old)  # a replay an hour later
    assert not webhooks.verify(SECRET, payload, "garbage")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http:///nohost",
        "http://user:pw@example.com/x",
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "https://example.com/" + "x" * 3000,
    ],
)
def test_unsafe_or_malformed_callback_urls_are_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidRequest):
        webhooks.check_url(url, allow_private=False)


def test_private_targets_are_allowed_only_by_the_setting() -> None:
    url = "http://127.0.0.1:8080/hook"
    assert webhooks.check_url(url, allow_private=True) == url
    with pytest.raises(InvalidRequest):
        webhooks.check_url("ftp://127.0.0.1/x", allow_private=True)  # the scheme still counts


def test_retry_delays_double_and_are_capped() -> None:
    assert [webhooks.next_delay(n, 1.0, 5.0) for n in range(1, 6)] == [1, 2, 4, 5, 5]
