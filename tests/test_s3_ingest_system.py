"""Integration: `raylens ingest s3://bucket/prefix` on a real local Ray cluster, the tiny OpenCLIP
model and a real S3-compatible server (moto, IAM authentication on).

The workers read the objects themselves with the AWS_* variables of their own environment:
Ray workers inherit the environment of the process that started Ray, so this module sets them
before its Ray cluster starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from raylens.actors import ingest, launch
from raylens.cli.main import main
from raylens.cluster.jobs import JobState, SourceKind
from raylens.cluster.objects import ObjectStores, ObjectUri
from raylens.errors import BucketMissing, StorageAuth

from _images import image_bytes
from _s3_server import S3Server, put_objects, start_s3_server, stop_s3_server

pytestmark = pytest.mark.integration

BUCKET = "photos"


@pytest.fixture(scope="module", autouse=True)
def s3() -> Iterator[S3Server]:
    """moto on a loopback port, its AWS_* variables in this process (and so in the Ray
    workers started after it), and a bucket of JPEGs under `trip/` and one key beside it."""
    if ray.is_initialized():  # workers must start with the variables below
        ray.shutdown()
    server, handle = start_s3_server()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        server.client().create_bucket(Bucket=BUCKET)
        objs = {f"trip/day{i % 2}/img_{i:03d}.jpg": image_bytes(i) for i in range(12)}
        objs["trip/notes.txt"] = b"not an image"
        objs["trip-2/elsewhere.jpg"] = image_bytes(500)
        put_objects(server, BUCKET, objs)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_s3_server(server, handle)


def test_s3_ingest_embeds_objects_by_uri_and_skips_them_when_run_again(
    settings_for: Any, running: Any
) -> None:
    settings = settings_for(faces_enabled=False)
    running(settings)
    queue = launch.queue_handle(settings)
    uri = f"s3://{BUCKET}/trip"

    first = ingest.ingest(settings, uri, queue, progress=False, keep_ids=True)

    assert (first.files, first.submitted, first.done, first.failed) == (12, 12, 12, 0)
    assert first.complete and first.path == uri
    jobs = ray.get(queue.states.remote(first.job_ids))
    assert all(j.state is JobState.DONE and j.source_kind is SourceKind.URI for j in jobs)
    assert {j.source for j in jobs} == {
        f"s3://{BUCKET}/trip/day{i % 2}/img_{i:03d}.jpg" for i in range(12)
    }
    hits = launch.search_text(settings, "a colourful pattern", top_k=5)
    assert len(hits) == 5
    assert all(h["payload"]["source"].startswith(f"{uri}/") for h in hits)
    assert all(h["payload"]["source_kind"] == "uri" for h in hits)

    again = ingest.ingest(settings, uri, queue, progress=False)

    assert (again.files, again.submitted, again.skipped, again.done) == (12, 0, 12, 0)
    assert ray.get(launch.index_handle(settings).count.remote()) == 12


def test_s3_ingest_fails_only_the_vanished_objects_when_objects_are_deleted_mid_ingest(
    s3: S3Server, settings_for: Any, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One object is deleted after it is listed and before the client reads it; another after
    the client hashed it and before a worker reads it: each fails alone with source_missing."""
    settings = settings_for(faces_enabled=False)
    running(settings)
    queue = launch.queue_handle(settings)
    put_objects(s3, BUCKET, {f"vanish/{i}.jpg": image_bytes(1000 + i) for i in range(6)})
    client = s3.client()
    real_listing = ObjectStores.list_media
    real_spec = ingest.spec_for_object

    def listing(self: ObjectStores, where: ObjectUri) -> Iterator[str]:
        for uri in real_listing(self, where):
            if uri.endswith("/0.jpg"):  # listed, then gone before the client reads it
                client.delete_object(Bucket=BUCKET, Key="vanish/0.jpg")
            yield uri

    def spec(uri: str, stores: ObjectStores, *args: Any) -> Any:
        out = real_spec(uri, stores, *args)
        if uri.endswith("/1.jpg"):  # hashed, then gone before a worker reads it
            client.delete_object(Bucket=BUCKET, Key="vanish/1.jpg")
        return out

    monkeypatch.setattr(ObjectStores, "list_media", listing)
    monkeypatch.setattr(ingest, "spec_for_object", spec)

    summary = ingest.ingest(settings, f"s3://{BUCKET}/vanish", queue, progress=False)

    assert (summary.files, summary.submitted, summary.done, summary.failed) == (6, 5, 4, 2)
    assert summary.failed_by_code == {"source_missing": 2} and summary.complete


def test_s3_ingest_stops_with_its_code_when_the_bucket_is_missing_or_credentials_are_wrong(
    settings_for: Any, running: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    settings = settings_for(faces_enabled=False)
    running(settings)
    queue = launch.queue_handle(settings)

    with pytest.raises(BucketMissing, match="no-such-bucket"):
        ingest.ingest(settings, "s3://no-such-bucket/trip", queue, progress=False)
    # The command line: exit 1, one line naming the code, no traceback.
    monkeypatch.setenv("RAYLENS_NAMESPACE", settings.namespace)
    assert main(["ingest", "s3://no-such-bucket/trip", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("raylens: error [bucket_missing]: ") and "\n" not in err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # this process only
    with pytest.raises(StorageAuth, match="SignatureDoesNotMatch"):
        ingest.ingest(settings, f"s3://{BUCKET}/trip", queue, progress=False)
    assert main(["ingest", f"s3://{BUCKET}/trip", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("raylens: error [storage_auth]: ") and "\n" not in err
    assert ray.get(queue.stats.remote())["jobs"].get("queued", 0) == 0
