"""Redis job store: the cluster backend, on a binary-safe client, atomic create-or-get in Lua.

Keys (prefix defaults to "raylens"):
    {prefix}:job:{id}          job JSON (bytes)
    {prefix}:jobs              sorted set of every job id, scored by created_at (for list())
    {prefix}:state:{state}     sorted set of the ids in that state, scored by created_at
    {prefix}:content:{key}     the id of the job registered for a content key
    {prefix}:idem:{key}        JSON {fingerprint, job_ids} of an Idempotency-Key (expires)
    {prefix}:meta:{key}        one small system record (the active model), text
    {prefix}:events            stream of job events (cluster/events.py), field "d": event JSON
    {prefix}:events-trimmed    the id of the newest event trimmed away (older resumes: 410)

Durability is the server's: run it with `appendonly yes` (and `noeviction`), see ARCHITECTURE.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError
from redis.retry import Retry

from raylens.cluster import events as ev
from raylens.cluster.jobs import Job, JobState
from raylens.cluster.store import (
    IdempotencyRecord,
    JobStore,
    Tombstone,
    decode_cursor,
    encode_cursor,
    tombstone,
)
from raylens.errors import EventsExpired, SettingsError, StoreUnavailable

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
# Few, quick retries: a dead server must surface as StoreUnavailable in about a second, while a
# blip (failover, restart) is ridden out. Every write here is idempotent, so retrying is safe.
RETRIES = 2
# Server replies that mean "the store cannot take writes now", not "your command is wrong".
# redis-py maps the known ones to classes (and strips their code); MISCONF and BUSY stay text.
UNAVAILABLE_ERRORS = (OutOfMemoryError, ReadOnlyError, MasterDownError)
UNAVAILABLE_REPLIES = ("MISCONF", "BUSY")
MGET_CHUNK = 1000


def redacted_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username or ''}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redis_client(
    url: str,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    retries: int = RETRIES,
) -> redis.Redis:
    """A binary-safe client: replies stay bytes (invariant 8, docs/architecture.md); nothing
    connects until first use."""
    client = redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries),
        health_check_interval=30,
    )
    # Query options in the URL override keyword arguments in redis-py; refuse to be turned into
    # the text-decoding client that corrupts payloads.
    if client.connection_pool.connection_kwargs.get("decode_responses") is not False:
        client.close()
        raise SettingsError(
            f"RAYLENS_REDIS_URL {redacted_url(url)} must not set decode_responses; "
            "raylens stores binary data and decodes JSON itself"
        )
    return client


@contextmanager
def redis_errors(url: str, action: str) -> Iterator[None]:
    """Turn redis-py's connection, timeout and 'cannot write now' errors into StoreUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(
            f"Redis at {redacted_url(url)} unavailable ({action}): {exc}"
        ) from exc
    except redis.ResponseError as exc:
        reply = str(exc).split("caused error: ")[-1]  # a pipeline prefixes the failed command
        if not isinstance(exc, UNAVAILABLE_ERRORS) and not reply.startswith(UNAVAILABLE_REPLIES):
            raise
        raise StoreUnavailable(f"Redis at {redacted_url(url)} refused {action}: {exc}") from exc


# Atomic per job. KEYS: content key, job key, all-jobs set, the four state sets, the new job's
# state set, the content's set of job ids, the event stream. ARGV: job id, job JSON, created_at,
# job key prefix, the event JSON ('' for none: events off).
# Returns {created (0/1), stored job JSON}.
CREATE_OR_GET = """
local existing = redis.call('GET', KEYS[1])
if existing then
    local data = redis.call('GET', ARGV[4] .. existing)
    if data and existing == ARGV[1] then
        return {1, data}  -- stored by an earlier try of this same call (a retried request)
    end
    if data and not redis.call('ZSCORE', KEYS[7], existing) then
        return {0, data}  -- a live (not failed) job already holds this content
    end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
for i = 4, 7 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZADD', KEYS[8], ARGV[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[9], ARGV[1])
if ARGV[5] ~= '' then redis.call('XADD', KEYS[10], '*', 'd', ARGV[5]) end
return {1, ARGV[2]}
"""

# Atomic per job. KEYS: job key, all-jobs set, the four state sets, content key, the content's
# set of job ids, tombstone key, the content's set of tombstones. ARGV: job id, tombstone JSON
# ('' for none).
DELETE_JOB = """
redis.call('DEL', KEYS[1])
for i = 2, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
if redis.call('GET', KEYS[7]) == ARGV[1] then redis.call('DEL', KEYS[7]) end
redis.call('SREM', KEYS[8], ARGV[1])
if ARGV[2] ~= '' then
    redis.call('SET', KEYS[9], ARGV[2])
    redis.call('SADD', KEYS[10], ARGV[1])
end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(event_id: str) -> str:
    """A stream entry id ("<ms>-<n>"), or ValueError."""
    ms, sep, n = event_id.partition("-")
    if not (ms.isdigit() and (not sep or n.isdigit())):
        raise ValueError(f"invalid event id {event_id!r}: this store's ids are <ms>-<n>")
    return f"{ms}-{n or 0}"


def _id_key(event_id: bytes | str) -> tuple[int, int]:
    ms, _, n = _text(event_id).partition("-")
    return int(ms), int(n or 0)


class RedisBacked:
    """URL, key prefix and one binary-safe client, shared by the Redis job and payload stores."""

    def __init__(
        self,
        url: str,
        prefix: str = "raylens",
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
        retries: int = RETRIES,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._r = redis_client(
            url,
            connect_timeout_s=connect_timeout_s,
            socket_timeout_s=socket_timeout_s,
            retries=retries,
        )

    @property
    def client(self) -> redis.Redis:
        return self._r


class RedisJobStore(RedisBacked, JobStore):
    """Job records in Redis, shared by every node of a cluster.

    The client is created with decode_responses=False and never decodes: job JSON is parsed from
    bytes here. Thread-safe through redis-py's connection pool. Nothing is sent to the server
    until the first call.
    """

    def __init__(
        self, url: str, prefix: str = "raylens", *, events: bool = True, **timeouts: Any
    ) -> None:
        super().__init__(url, prefix, **timeouts)
        self.events_on = events
        self._create_or_get = self._r.register_script(CREATE_OR_GET)
        self._delete_job = self._r.register_script(DELETE_JOB)

    # ---- keys -----------------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _state_key(self, state: JobState) -> str:
        return f"{self.prefix}:state:{state.value}"

    def _content_key(self, content_key: str) -> str:
        return f"{self.prefix}:content:{content_key}"

    def _sha_key(self, sha256: str) -> str:
        return f"{self.prefix}:sha:{sha256}"

    def _tombstone_key(self, job_id: str) -> str:
        return f"{self.prefix}:deleted:{job_id}"

    def _tombstone_sha_key(self, sha256: str) -> str:
        return f"{self.prefix}:deleted-sha:{sha256}"

    def _idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def _events_key(self) -> str:
        return f"{self.prefix}:events"

    @property
    def _events_trimmed_key(self) -> str:
        return f"{self.prefix}:events-trimmed"

    def _errors(self, action: str) -> AbstractContextManager[None]:
        return redis_errors(self.url, action)

    # ---- writes ---------------------------------------------------------------------------------
    def create_or_get(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        if not jobs:
            return []
        # KEYS[4..7] of the script, failed last (KEYS[7]): the state that frees a content key.
        order = (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED)
        state_keys = [self._state_key(s) for s in order]
        # One MULTI/EXEC for the batch, like the SQLite store's one transaction per call.
        with self._errors("create_or_get"):
            pipe = self._r.pipeline(transaction=True)
            for job in jobs:
                self._create_or_get(
                    keys=[
                        self._content_key(job.content_key),
                        self._job_key(job.id),
                        self._all_key,
                        *state_keys,
                        self._state_key(job.state),
                        self._sha_key(job.sha256),
                        self._events_key,
                    ],
                    args=[
                        job.id,
                        job.to_json(),
                        repr(job.created_at),
                        f"{self.prefix}:job:",
                        ev.encode(ev.event_of(job)) if self.events_on else "",
                    ],
                    client=pipe,
                )
            replies = pipe.execute()
        return [(Job.from_json(data), bool(created)) for created, data in replies]

    def put(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self._errors("put"):
            pipe = self._r.pipeline(transaction=True)
            for job in jobs:
                score = {job.id: job.created_at}
                pipe.set(self._job_key(job.id), job.to_json())
                pipe.zadd(self._all_key, score)
                for state in JobState:
                    if state is not job.state:
                        pipe.zrem(self._state_key(state), job.id)
                pipe.zadd(self._state_key(job.state), score)
                # Findable by content even when put without create_or_get; never steals a key.
                pipe.setnx(self._content_key(job.content_key), job.id)
                pipe.sadd(self._sha_key(job.sha256), job.id)
                if self.events_on:
                    pipe.xadd(self._events_key, {"d": ev.encode(ev.event_of(job))})
            pipe.execute()

    def delete(self, jobs: Sequence[Job], by: str, at: float, *, tombstones: bool = True) -> None:
        if not jobs:
            return
        state_keys = [self._state_key(s) for s in JobState]
        with self._errors("delete"):
            pipe = self._r.pipeline(transaction=True)
            for job in jobs:
                self._delete_job(
                    keys=[
                        self._job_key(job.id),
                        self._all_key,
                        *state_keys,
                        self._content_key(job.content_key),
                        self._sha_key(job.sha256),
                        self._tombstone_key(job.id),
                        self._tombstone_sha_key(job.sha256),
                    ],
                    args=[
                        job.id,
                        json.dumps(tombstone(job, by, at)).encode() if tombstones else b"",
                    ],
                    client=pipe,
                )
                if tombstones and self.events_on:
                    pipe.xadd(self._events_key, {"d": ev.encode(ev.event_of(job, ev.DELETED, at))})
            pipe.execute()

    def put_idempotency(
        self, key: str, fingerprint: str, job_ids: Sequence[str], ttl_s: float
    ) -> None:
        value = json.dumps({"fingerprint": fingerprint, "job_ids": list(job_ids)}).encode()
        with self._errors("put_idempotency"):
            self._r.set(self._idempotency_key(key), value, px=max(1, int(ttl_s * 1000)))

    def put_meta(self, key: str, value: str) -> None:
        with self._errors("put_meta"):
            self._r.set(f"{self.prefix}:meta:{key}", value.encode())

    # ---- events ---------------------------------------------------------------------------------
    def events_after(self, after: str | None, limit: int) -> list[ev.Event]:
        start = "-" if after is None else f"({_stream_id(after)}"
        with self._errors("events_after"):
            pipe = self._r.pipeline(transaction=False)
            pipe.get(self._events_trimmed_key)
            pipe.xrange(self._events_key, min=start, max="+", count=max(1, limit))
            trimmed, rows = pipe.execute()
        if (
            after is not None
            and trimmed is not None
            and _id_key(_stream_id(after)) < _id_key(trimmed)
        ):
            raise EventsExpired(
                f"events after {after} are no longer kept (kept: after {_text(trimmed)}; "
                "RAYLENS_EVENTS_RETENTION_S); read the jobs' state and resume from the newest event"
            )
        return [ev.decode(_text(event_id), fields[b"d"]) for event_id, fields in rows]

    def last_event_id(self) -> str:
        with self._errors("last_event_id"):
            rows: Any = self._r.xrevrange(self._events_key, count=1)
            if not rows:  # empty or trimmed to nothing: the stream still knows its last id
                if self._r.exists(self._events_key):
                    return _text(self._r.xinfo_stream(self._events_key)["last-generated-id"])
                return "0-0"
        return _text(rows[0][0])

    def trim_events(self, before: float) -> int:
        """XTRIM MINID by the stream ids' own clock (the server's); the newest id removed is
        kept first (XTRIM records none), so a resume from before it is refused."""
        minid = f"{int(before * 1000)}-0"
        with self._errors("trim_events"):
            last: Any = self._r.xrevrange(self._events_key, max=f"({minid}", count=1)
            if not last:
                return 0
            self._r.set(self._events_trimmed_key, last[0][0])
            n: int = self._r.xtrim(self._events_key, minid=minid, approximate=False)
        return n

    # ---- reads ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._errors("get_meta"):
            data: Any = self._r.get(f"{self.prefix}:meta:{key}")
        return None if data is None else bytes(data).decode()

    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        with self._errors("get_idempotency"):
            data: Any = self._r.get(self._idempotency_key(key))
        if data is None:
            return None
        record = json.loads(data)
        return record["fingerprint"], list(record["job_ids"])

    def get(self, job_id: str) -> Job | None:
        with self._errors("get"):
            data = self._r.get(self._job_key(job_id))
        return Job.from_json(data) if data is not None else None

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        out: list[Job | None] = []
        for start in range(0, len(job_ids), MGET_CHUNK):
            chunk = job_ids[start : start + MGET_CHUNK]
            with self._errors("get_many"):
                values: Any = self._r.mget([self._job_key(j) for j in chunk])
            out.extend(Job.from_json(v) if v is not None else None for v in values)
        return out

    def jobs_for_content(self, sha256: str) -> list[Job]:
        with self._errors("jobs_for_content"):
            members: Any = self._r.smembers(self._sha_key(sha256))
        jobs = [j for j in self.get_many(sorted(m.decode() for m in members)) if j is not None]
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def tombstones(self, job_ids: Sequence[str]) -> dict[str, Tombstone]:
        out: dict[str, Tombstone] = {}
        for start in range(0, len(job_ids), MGET_CHUNK):
            chunk = list(job_ids[start : start + MGET_CHUNK])
            with self._errors("tombstones"):
                values: Any = self._r.mget([self._tombstone_key(j) for j in chunk])
            out.update((j, json.loads(v)) for j, v in zip(chunk, values) if v is not None)
        return out

    def tombstones_for_content(self, sha256: str) -> list[Tombstone]:
        with self._errors("tombstones"):
            members: Any = self._r.smembers(self._tombstone_sha_key(sha256))
        return list(self.tombstones(sorted(m.decode() for m in members)).values())

    def find_by_content(self, content_key: str) -> Job | None:
        with self._errors("find_by_content"):
            job_id: Any = self._r.get(self._content_key(content_key))
        return self.get(job_id.decode()) if job_id is not None else None

    def _page(
        self, key: str, after: tuple[float, str] | None, count: int, newest_first: bool
    ) -> list[tuple[str, float]]:
        """Up to count (id, score) after a keyset position, in (score, id) order or its reverse.

        Members with the cursor's exact score (a batch shares one created_at) are fetched whole
        and cut by id; the rest by an exclusive score range. Reads use plain pipelines, not
        MULTI: a server at maxmemory refuses everything queued in MULTI, and `raylens status`
        must still work then.
        """
        with self._errors("list"):
            if after is None:
                first = self._r.zrevrange if newest_first else self._r.zrange
                head: Any = first(key, 0, count - 1, withscores=True)
                return [(m.decode(), s) for m, s in head]
            score, last_id = after
            pipe = self._r.pipeline(transaction=False)
            pipe.zrangebyscore(key, repr(score), repr(score))
            if newest_first:
                pipe.zrevrangebyscore(key, f"({score!r}", "-inf", 0, count, withscores=True)
            else:
                pipe.zrangebyscore(key, f"({score!r}", "+inf", 0, count, withscores=True)
            ties, rest = pipe.execute()
        tie_ids = sorted((m.decode() for m in ties), reverse=newest_first)
        tie_ids = [t for t in tie_ids if (t < last_id if newest_first else t > last_id)]
        page = [(t, score) for t in tie_ids] + [(m.decode(), s) for m, s in rest]
        return page[:count]

    def iter_state(self, state: JobState, batch: int = 1000) -> Iterator[Job]:
        key = self._state_key(state)
        after: tuple[float, str] | None = None
        while True:
            page = self._page(key, after, batch, newest_first=False)
            for job in self.get_many([job_id for job_id, _ in page]):
                if job is not None and job.state is state:  # it may have moved meanwhile
                    yield job
            if len(page) < batch:
                return
            after = (page[-1][1], page[-1][0])

    def list(
        self, state: JobState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        key = self._all_key if state is None else self._state_key(state)
        after = decode_cursor(cursor) if cursor is not None else None
        page = self._page(key, after, limit + 1, newest_first=True)
        jobs = [
            job
            for job in self.get_many([job_id for job_id, _ in page[:limit]])
            if job is not None and (state is None or job.state is state)
        ]
        more = len(page) > limit
        return jobs, encode_cursor(page[limit - 1][1], page[limit - 1][0]) if more else None

    def counts(self) -> dict[JobState, int]:
        with self._errors("counts"):
            pipe = self._r.pipeline(transaction=False)
            for state in JobState:
                pipe.zcard(self._state_key(state))
            sizes = pipe.execute()
        return dict(zip(JobState, sizes, strict=True))

    def ping(self) -> None:
        with self._errors("ping"):
            self._r.ping()

    def close(self) -> None:
        self._r.close()
