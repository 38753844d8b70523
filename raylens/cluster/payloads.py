"""Payload stores: the bytes of uploads, content-addressed by sha256 (data dir or Redis)."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import NamedTuple

from raylens.cluster.settings import Settings

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_key(key: str) -> bool:
    """True for a sha256 hex key; anything else (a path, '..') never reaches a file name."""
    return _SHA256_HEX.fullmatch(key) is not None


def key_for(data: bytes, sha256: str | None = None) -> str:
    """The sha256 hex of data; raises ValueError when the caller's claimed sha256 differs."""
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and sha256.lower() != actual:
        raise ValueError(f"payload sha256 mismatch: given {sha256}, content hashes to {actual}")
    return actual


class StoredPayload(NamedTuple):
    key: str  # the sha256 hex of the bytes
    size: int  # bytes
    idle_s: float  # seconds since it was written (a file's mtime; Redis: since last touched)


class PayloadStore(ABC):
    """Binary-safe, durable blobs keyed by the sha256 hex of their content.

    `put` returns only once the bytes are durable (fsync'd file, or written to Redis with AOF).
    Storing the same content twice is a no-op. Raises StoreUnavailable when the backend is down.
    """

    @abstractmethod
    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store bytes; returns their sha256 hex key."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under key; raises SourceMissing when there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Bytes stored under key, or None when there are none."""

    @abstractmethod
    def scan(self) -> Iterator[StoredPayload]:
        """Every payload stored, in no particular order, without holding them all at once."""

    def usage(self) -> tuple[int, int]:
        """(payloads, bytes) held: a full scan."""
        count = total = 0
        for p in self.scan():
            count += 1
            total += p.size
        return count, total

    @abstractmethod
    def close(self) -> None: ...


def open_payload_store(settings: Settings) -> PayloadStore:
    if settings.uses_redis_payloads:
        from raylens.cluster.payloads_redis import RedisPayloadStore

        assert settings.redis_url is not None
        return RedisPayloadStore(settings.redis_url, prefix=settings.redis_prefix)
    from raylens.cluster.payloads_fs import FsPayloadStore

    return FsPayloadStore(settings.payload_dir)
