"""Redis payload store: upload bytes as raw Redis strings, on a binary-safe client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from raylens.cluster.payloads import PayloadStore, StoredPayload, is_key, key_for
from raylens.cluster.store_redis import RedisBacked, redacted_url, redis_errors
from raylens.errors import SourceMissing


class RedisPayloadStore(RedisBacked, PayloadStore):
    """Payloads under `{prefix}:payload:{sha256}`, written once with SET NX.

    The client never decodes replies (decode_responses=False): payloads are arbitrary bytes,
    and a text-decoding client is exactly what broke the old setup. Durability is the server's
    AOF; nothing is sent until the first call.
    """

    def _key(self, key: str) -> str:
        return f"{self.prefix}:payload:{key}"

    def put(self, data: bytes, sha256: str | None = None) -> str:
        key = key_for(data, sha256)
        # NX: content-addressed, so an existing value is these bytes already; never rewrite it.
        with redis_errors(self.url, f"put payload {key}"):
            self._r.set(self._key(key), data, nx=True)
        return key

    def get(self, key: str) -> bytes:
        if not is_key(key):
            raise SourceMissing(f"payload key {key!r} is not a sha256 hex digest")
        with redis_errors(self.url, f"get payload {key}"):
            data: Any = self._r.get(self._key(key))
        if data is None:
            raise SourceMissing(f"payload {key} not found in Redis at {redacted_url(self.url)}")
        return data  # bytes: the client never decodes

    def exists(self, key: str) -> bool:
        if not is_key(key):
            return False
        with redis_errors(self.url, f"check payload {key}"):
            return bool(self._r.exists(self._key(key)))

    def scan(self) -> Iterator[StoredPayload]:
        prefix = self._key("")
        cursor: Any = 0
        while True:
            with redis_errors(self.url, "list payloads"):
                cursor, names = self._r.scan(cursor, match=f"{prefix}*", count=1000)
                pipe = self._r.pipeline(transaction=False)
                for name in names:
                    pipe.strlen(name)
                    pipe.object("idletime", name)
                replies = pipe.execute() if names else []
            for i, name in enumerate(names):
                text = name.decode() if isinstance(name, bytes) else str(name)
                key = text[len(prefix) :]
                size, idle = replies[2 * i], replies[2 * i + 1]
                if is_key(key) and idle is not None:  # None: deleted meanwhile
                    yield StoredPayload(key, int(size), float(idle))
            if int(cursor) == 0:
                return

    def size(self, key: str) -> int | None:
        if not is_key(key):
            return None
        with redis_errors(self.url, f"check payload {key}"):
            n = int(self._r.strlen(self._key(key)))  # 0 for a missing key
        return n if n or self.exists(key) else None

    def delete(self, key: str) -> None:
        if not is_key(key):
            raise ValueError(f"payload key {key!r} is not a sha256 hex digest")
        with redis_errors(self.url, f"delete payload {key}"):
            self._r.delete(self._key(key))

    def close(self) -> None:
        self._r.close()
