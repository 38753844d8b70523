"""Object storage (S3 and S3-compatible, through obstore): list a prefix page by page, hash and
read objects, and give each failure its own error code.

Credentials, region and endpoint come from the standard AWS_* variables of the process that
makes the call (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL; AWS_ALLOW_HTTP=true for a plain-http endpoint), or from
an instance role; the limits (timeouts, retries, page size) are raylens settings. The CLI that
lists and hashes and the workers that read each use their own environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from raylens.cluster.settings import Settings
from raylens.errors import (
    BucketMissing,
    InvalidRequest,
    RaylensError,
    SourceMissing,
    StorageAuth,
    StorageUnavailable,
    TooLarge,
)
from raylens.media.formats import MEDIA_SUFFIXES

if TYPE_CHECKING:
    from obstore.store import S3Store

SCHEME = "s3://"
_READ_CHUNK = 1 << 20  # bytes per chunk while an object is hashed

# S3 error codes (the <Code> of an error answer) that mean the request's identity was refused.
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_CODE = re.compile(r"<Code>([^<]+)</Code>")
# Where the library looks for credentials when none are set (EC2 instance metadata, ECS, STS):
# failing there means the process has no credentials, not that storage is down.
_CREDENTIAL_SOURCES = ("/latest/api/token", "/latest/meta-data/iam", "credentials", "sts.")


# The library's HTTP client options that it would read from AWS_<KEY> variables itself.
_CLIENT_ENV = (
    "allow_http",
    "allow_invalid_certificates",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
)


def is_object_uri(source: str) -> bool:
    """Whether an ingest source names object storage (s3://...) rather than a local path."""
    return source[: len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class ObjectUri:
    """s3://bucket/key: key is one object's key, or a prefix ('' = the whole bucket)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> ObjectUri:
        if not is_object_uri(uri):
            raise InvalidRequest(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len(SCHEME) :].partition("/")
        if not bucket:
            raise InvalidRequest(f"{uri!r} names no bucket: use s3://bucket/prefix")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def is_media_key(key: str) -> bool:
    return os.path.splitext(key)[1].lower() in MEDIA_SUFFIXES


class ObjectStores:
    """The object stores one process uses, one per bucket, made on first use (never at import:
    the AWS_* environment is read when a bucket is first touched). Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stores: dict[str, S3Store] = {}
        self._lock = threading.Lock()

    def store(self, bucket: str) -> S3Store:
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                store = self._stores[bucket] = self._make(bucket)
            return store

    def _make(self, bucket: str) -> S3Store:
        from obstore.store import S3Store

        s = self.settings
        # Client options given here replace the ones the library reads from the environment
        # (AWS_ALLOW_HTTP among them), so those are carried over by hand.
        client: dict[str, Any] = {
            key: os.environ[f"AWS_{key.upper()}"]
            for key in _CLIENT_ENV
            if f"AWS_{key.upper()}" in os.environ
        }
        client.update(
            timeout=timedelta(seconds=s.s3_timeout_s),
            connect_timeout=timedelta(seconds=s.s3_connect_timeout_s),
        )
        try:
            return S3Store(
                bucket,
                client_options=client,  # type: ignore[arg-type]
                retry_config={
                    "max_retries": s.s3_max_retries,
                    "retry_timeout": timedelta(seconds=s.s3_retry_timeout_s),
                },
            )
        except Exception as exc:  # a malformed AWS_* value
            raise StorageUnavailable(
                f"cannot set up object storage for s3://{bucket}: {_summary(exc)}"
            ) from None

    def list_media(self, where: ObjectUri) -> Iterator[str]:
        """The URI of every image or video object under a prefix (by key suffix), in the
        order the store lists them (by key).

        Streams: one page of RAYLENS_INGEST_LIST_PAGE keys is held at a time, so a bucket of a
        million keys is never held as a list. The prefix is a folder (path segments: `photos`
        lists `photos/...`, not `photos2/...`); a URI that names one object lists that object.
        Raises BucketMissing, StorageAuth or StorageUnavailable (the whole listing fails), and
        SourceMissing when no key at all has the prefix (as a missing local folder)."""
        import obstore

        store = self.store(where.bucket)
        prefix = where.key.strip("/")
        listed = False
        try:
            pages = obstore.list(store, prefix or None, chunk_size=self.settings.ingest_list_page)
            for page in pages:
                for meta in page:
                    listed = True
                    if is_media_key(meta["path"]):
                        yield f"{SCHEME}{where.bucket}/{meta['path']}"
            if not listed and prefix:
                obstore.head(store, prefix)  # one object named by its full key
                listed = True
                if is_media_key(prefix):
                    yield f"{SCHEME}{where.bucket}/{prefix}"
        except RaylensError:
            raise
        except FileNotFoundError as exc:  # the head of a key that is not there
            if _s3_code(exc) == "NoSuchBucket":
                raise storage_error(exc, str(where)) from None
        except Exception as exc:
            raise storage_error(exc, str(where)) from None
        if not listed:
            raise SourceMissing(f"{where}: no object has this prefix")

    def sha256(self, uri: str) -> tuple[str, int]:
        """The content hash and size of an object, streamed in chunks (bounded memory)."""
        import obstore

        where = ObjectUri.parse(uri)
        h = hashlib.sha256()
        size = 0
        try:
            result = obstore.get(self.store(where.bucket), where.key)
            for chunk in result.stream(min_chunk_size=_READ_CHUNK):
                h.update(chunk)
                size += len(chunk)
        except RaylensError:
            raise
        except Exception as exc:
            raise storage_error(exc, uri) from None
        return h.hexdigest(), size

    def read(self, uri: str, max_bytes: int, limit: str, sha256: str | None = None) -> bytes:
        """An object's bytes, read straight from the bucket. Over max_bytes (named by `limit`
        in the message) it fails before the body is read. With sha256, bytes that are not that
        content any more (the object was replaced since it was hashed) raise SourceMissing."""
        import obstore

        where = ObjectUri.parse(uri)
        try:
            result = obstore.get(self.store(where.bucket), where.key)
            size = int(result.meta["size"])
            if size > max_bytes:
                raise TooLarge(f"{uri} has {size} bytes; limit {limit}={max_bytes}")
            data = bytes(result.bytes())
        except RaylensError:
            raise
        except Exception as exc:
            raise storage_error(exc, uri) from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise SourceMissing(f"{uri} changed since it was listed (no longer sha256 {sha256})")
        return data


def storage_error(exc: BaseException, what: str) -> RaylensError:
    """The raylens error for a failed object-storage call about `what` (a URI)."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    code = _s3_code(exc)
    text = str(exc)
    bucket = ObjectUri.parse(what).bucket if is_object_uri(what) else what
    if code == "NoSuchBucket":
        return BucketMissing(f"{what}: bucket {bucket!r} does not exist (NoSuchBucket)")
    if (
        isinstance(exc, (PermissionDeniedError, UnauthenticatedError))
        or code in _AUTH_CODES
        or " 403 Forbidden" in text
        or " 401 Unauthorized" in text
    ):
        return StorageAuth(
            f"{what}: object storage refused the credentials ({code or 'forbidden'}): check "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and the bucket policy"
        )
    if isinstance(exc, (NotFoundError, FileNotFoundError)) or code == "NoSuchKey":
        return SourceMissing(f"{what} no longer exists")
    if any(source in text for source in _CREDENTIAL_SOURCES):
        return StorageAuth(
            f"{what}: no object-storage credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or give the node an instance role): " + _summary(exc)
        )
    if "builder error" in text:
        return StorageUnavailable(
            f"{what}: the request could not be made ({_summary(exc)}); an http:// "
            "AWS_ENDPOINT_URL also needs AWS_ALLOW_HTTP=true"
        )
    return StorageUnavailable(f"{what}: object storage failed: {_summary(exc)}")


def _s3_code(exc: BaseException) -> str | None:
    found = _CODE.search(str(exc))
    return found.group(1) if found else None


def _summary(exc: BaseException, limit: int = 300) -> str:
    """The library's message without its debug dump, cut to one readable line."""
    text = str(exc).split("Debug source:", 1)[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
