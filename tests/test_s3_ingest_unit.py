"""Unit: object storage for `raylens ingest s3://...`: listing streams page by page, reads and
hashes go to a real S3-compatible server (moto), and every failure has its own code.

No Ray here: the ingest loop runs against the in-memory queue stand-in of test_ingest_unit."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from raylens.actors import ingest
from raylens.cluster import objects
from raylens.cluster.intake import spec_for_object
from raylens.cluster.jobs import Lane, SourceKind
from raylens.cluster.objects import ObjectStores, ObjectUri, is_object_uri
from raylens.cluster.settings import Settings
from raylens.errors import (
    BucketMissing,
    InvalidRequest,
    SourceMissing,
    StorageAuth,
    StorageUnavailable,
    TooLarge,
)

from _s3_server import S3Server, put_objects, s3_server  # noqa: F401
from test_ingest_unit import FakeQueue

BUCKET = "unit-pics"


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> S3Server:  # noqa: F811
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


@pytest.fixture
def aws_env(bucket: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The AWS_* variables of the fixture's user, in this process only."""
    for name, value in bucket.env().items():
        monkeypatch.setenv(name, value)
    return bucket


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        ingest_poll_s=0.001, ingest_chunk=50, max_batch_size=10, s3_max_retries=0
    )
    return Settings(**{**base, **kw})


def _jpeg(i: int) -> bytes:
    return b"\xff\xd8\xff" + i.to_bytes(4, "big")  # distinct content; never decoded here


def test_object_uri_parses_bucket_and_prefix_and_refuses_a_uri_without_a_bucket() -> None:
    assert ObjectUri.parse("s3://b/photos/2024") == ObjectUri("b", "photos/2024")
    assert ObjectUri.parse("s3://b") == ObjectUri("b", "")
    assert is_object_uri("S3://b/x") and not is_object_uri("/data/s3://x")
    with pytest.raises(InvalidRequest, match="names no bucket"):
        ObjectUri.parse("s3:///photos")


def test_listing_holds_one_page_when_a_million_keys_are_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000,000 keys stream through list_media in bounded memory: pages are made only as
    they are asked for (as the store's paged listing does), and none is kept."""
    total, page = 1_000_000, 1000
    pages_made = [0]

    def fake_list(store: Any, prefix: str | None, *, chunk_size: int) -> Iterator[list[dict]]:
        assert chunk_size == page and prefix == "big"
        for start in range(0, total, chunk_size):
            pages_made[0] += 1
            # One key in ten is not media (skipped by suffix).
            yield [
                {"path": f"big/{i:07d}.{'txt' if i % 10 == 0 else 'jpg'}", "size": 7}
                for i in range(start, start + chunk_size)
            ]

    import obstore

    monkeypatch.setattr(obstore, "list", fake_list)
    stores = ObjectStores(_settings(ingest_list_page=page))
    monkeypatch.setattr(stores, "store", lambda bucket: object())
    listing = stores.list_media(ObjectUri("b", "big"))

    first = next(listing)
    assert first == "s3://b/big/0000001.jpg" and pages_made[0] == 1  # lazily, page by page
    tracemalloc.start()
    try:
        n = 1 + sum(1 for _ in listing)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert n == total - total // 10 and pages_made[0] == total // page
    # One page of key dicts is about 0.3 MB; a list of 900,000 URIs would be over 70 MB.
    assert peak < 5 * 1024 * 1024, f"listing peak {peak / 1e6:.1f} MB"


def test_ingest_follows_at_most_max_pending_jobs_when_a_bucket_is_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ingest loop is the local one (same bounded pending set) on a stand-in listing of
    5,000 keys: the first jobs go out after one page, pending never passes the bound."""
    listed = [0]

    def listing(self: ObjectStores, where: ObjectUri) -> Iterator[str]:
        for i in range(5000):
            listed[0] += 1
            yield f"s3://{where.bucket}/k/{i:06d}.jpg"

    def fake_spec(uri: str, stores: Any, lane: Lane, pipeline: Any) -> Any:
        from raylens.cluster.jobs import JobSpec

        sha = hashlib.sha256(uri.encode()).hexdigest()
        return JobSpec(source_kind=SourceKind.URI, source=uri, sha256=sha, size_bytes=1, lane=lane)

    monkeypatch.setattr(ObjectStores, "list_media", listing)
    monkeypatch.setattr(ingest, "spec_for_object", fake_spec)
    monkeypatch.setattr(ingest.ray, "get", lambda value: value)
    queue = FakeQueue()
    pending_seen: list[int] = []
    listed_at_first: list[int] = []
    real_submit = queue._submit

    def watched(specs: list[Any]) -> Any:
        listed_at_first.append(listed[0]) if not listed_at_first else None
        pending_seen.append(queue.pending_now())
        return real_submit(specs)

    queue.submit = type(queue.submit)(watched)

    summary = ingest.ingest(_settings(ingest_max_pending=300), "s3://b/k", queue, progress=False)

    assert (summary.files, summary.submitted, summary.done) == (5000, 5000, 5000)
    assert summary.complete and summary.path == "s3://b/k"
    assert listed_at_first[0] <= 10 + 50
    assert max(pending_seen) <= 300 + 50


def test_listing_streams_media_keys_under_a_prefix_when_the_bucket_holds_450_keys(
    aws_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = {f"many/{i:05d}.jpg": _jpeg(i) for i in range(450)}
    objs |= {"many/readme.txt": b"not media", "many2/other.jpg": _jpeg(99_999)}
    put_objects(aws_env, BUCKET, objs)
    import obstore

    real_list = obstore.list
    pages = [0]

    def counting(*args: Any, **kw: Any) -> Iterator[Any]:
        for page in real_list(*args, **kw):
            pages[0] += 1
            yield page

    monkeypatch.setattr(obstore, "list", counting)
    stores = ObjectStores(_settings(ingest_list_page=50))
    listing = stores.list_media(ObjectUri(BUCKET, "many"))

    assert next(listing) == f"s3://{BUCKET}/many/00000.jpg" and pages[0] == 1
    rest = list(listing)

    assert len(rest) == 449 and pages[0] == 10  # 451 keys under many/, 50 a page
    assert f"s3://{BUCKET}/many2/other.jpg" not in rest  # a prefix is a folder, not a string
    # A trailing slash is the same folder; a URI naming one object lists that object.
    assert sum(1 for _ in stores.list_media(ObjectUri(BUCKET, "many/"))) == 450
    one = f"s3://{BUCKET}/many/00007.jpg"
    assert list(stores.list_media(ObjectUri.parse(one))) == [one]


def test_object_hash_and_read_return_its_bytes_when_the_object_exists(aws_env: S3Server) -> None:
    data = b"\xff\xd8\xff" + bytes(range(256)) * 9000  # over two read chunks
    put_objects(aws_env, BUCKET, {"read/a.jpg": data})
    uri = f"s3://{BUCKET}/read/a.jpg"
    stores = ObjectStores(_settings())

    spec = spec_for_object(uri, stores, Lane.BULK)
    sha = hashlib.sha256(data).hexdigest()

    assert (spec.source_kind, spec.source, spec.sha256) == (SourceKind.URI, uri, sha)
    assert (spec.size_bytes, spec.name) == (len(data), "a.jpg")
    assert stores.read(uri, len(data), "LIMIT", sha256=sha) == data
    with pytest.raises(TooLarge, match="LIMIT=100"):
        stores.read(uri, 100, "LIMIT")
    with pytest.raises(SourceMissing, match="changed since it was listed"):
        stores.read(uri, len(data), "LIMIT", sha256="0" * 64)


def test_each_storage_failure_has_its_own_code_when_listing_or_reading(
    aws_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_objects(aws_env, BUCKET, {"codes/a.jpg": _jpeg(1)})
    stores = ObjectStores(_settings())

    with pytest.raises(BucketMissing, match="no-such-bucket"):
        next(stores.list_media(ObjectUri("no-such-bucket", "x")))
    with pytest.raises(SourceMissing, match="no object has this prefix"):
        next(stores.list_media(ObjectUri(BUCKET, "nothing-here")))
    with pytest.raises(SourceMissing, match="no longer exists"):
        stores.sha256(f"s3://{BUCKET}/codes/gone.jpg")
    with pytest.raises(SourceMissing, match="no longer exists"):
        stores.read(f"s3://{BUCKET}/codes/gone.jpg", 1000, "LIMIT")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = ObjectStores(_settings())
    with pytest.raises(StorageAuth, match="SignatureDoesNotMatch"):
        next(wrong.list_media(ObjectUri(BUCKET, "codes")))
    with pytest.raises(StorageAuth):
        wrong.read(f"s3://{BUCKET}/codes/a.jpg", 1000, "LIMIT")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env.secret_access_key)
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StorageUnavailable, match="AWS_ALLOW_HTTP=true"):
        next(ObjectStores(_settings()).list_media(ObjectUri(BUCKET, "codes")))

    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match="object storage failed"):
        next(ObjectStores(_settings(s3_connect_timeout_s=1)).list_media(ObjectUri(BUCKET, "c")))
    assert time.monotonic() - t0 < 30


def test_ingest_counts_duplicates_and_vanished_objects_when_run_twice_on_a_bucket(
    aws_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_objects(aws_env, BUCKET, {f"run/{i}.jpg": _jpeg(1000 + i) for i in range(8)})
    put_objects(aws_env, BUCKET, {"run/copy.jpg": _jpeg(1000), "run/gone.jpg": _jpeg(5000)})
    monkeypatch.setattr(ingest.ray, "get", lambda value: value)
    real_listing = ObjectStores.list_media

    def deleting_one(self: ObjectStores, where: ObjectUri) -> Iterator[str]:
        for uri in real_listing(self, where):
            if uri.endswith("/gone.jpg"):  # listed, then deleted before it is read
                aws_env.client().delete_object(Bucket=BUCKET, Key="run/gone.jpg")
            yield uri

    monkeypatch.setattr(ObjectStores, "list_media", deleting_one)
    queue = FakeQueue()

    first = ingest.ingest(_settings(), f"s3://{BUCKET}/run", queue, progress=False)

    assert first.files == 10
    assert (first.submitted, first.duplicates, first.done) == (8, 1, 8)
    assert first.failed_by_code == {"source_missing": 1} and first.complete

    again = ingest.ingest(_settings(), f"s3://{BUCKET}/run/", queue, progress=False)

    # No job is created again (the stand-in queue does not mark its records done for dedup;
    # the system test checks the skip on the real queue).
    assert (again.files, again.submitted, again.failed) == (9, 0, 0)
    specs = [j for j in queue.by_id.values()]
    assert all(j.source_kind is SourceKind.URI for j in specs)
    assert {j.source for j in specs} >= {f"s3://{BUCKET}/run/{i}.jpg" for i in range(8)}


def test_ingest_raises_before_anything_is_submitted_when_the_bucket_is_missing(
    aws_env: S3Server,
) -> None:
    queue = FakeQueue()
    with pytest.raises(BucketMissing):
        ingest.ingest(_settings(), "s3://no-such-bucket/photos", queue, progress=False)
    assert queue.submits == []


def test_storage_error_reads_the_s3_code_when_the_library_gives_only_text() -> None:
    answer = "Server returned non-2xx status code: 403 Forbidden: <Error><Code>{}</Code></Error>"
    assert isinstance(
        objects.storage_error(Exception(answer.format("ExpiredToken")), "s3://b/k"), StorageAuth
    )
    assert isinstance(
        objects.storage_error(Exception(answer.format("NoSuchBucket")), "s3://b/k"), BucketMissing
    )
    err = objects.storage_error(Exception("HTTP error: error sending request"), "s3://b/k")
    assert isinstance(err, StorageUnavailable) and "s3://b/k" in err.message


def test_worker_reads_a_uri_job_from_the_bucket_and_checks_its_size_and_content(
    aws_env: S3Server,
) -> None:
    from raylens.cluster.jobs import Job
    from raylens.cluster.pipeline_read import JobReader

    data = _jpeg(7) + b"\x00" * 2000
    put_objects(aws_env, BUCKET, {"worker/a.jpg": data})
    stores = ObjectStores(_settings())
    spec = spec_for_object(f"s3://{BUCKET}/worker/a.jpg", stores, Lane.BULK)
    job = Job.new(spec, "m")

    def reader(**kw: Any) -> JobReader:  # only the read path is used: no model, no payloads
        return JobReader(_settings(**kw), None, None, None, faces_on=False)  # type: ignore[arg-type]

    assert reader().read_source(job) == data
    with pytest.raises(TooLarge, match="RAYLENS_MAX_INPUT_BYTES=1000"):
        reader(max_input_bytes=1000).read_source(job)  # an image over the image cap
    with pytest.raises(TooLarge, match="RAYLENS_MAX_VIDEO_BYTES=1500"):
        reader(max_input_bytes=1000, max_video_bytes=1500).read_source(job)  # before its body
    aws_env.client().delete_object(Bucket=BUCKET, Key="worker/a.jpg")
    failure = reader().load_and_decode(job)
    assert failure.code.value == "source_missing" and not failure.retryable  # type: ignore[union-attr]
