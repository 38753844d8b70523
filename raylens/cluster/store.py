"""The job store interface: the source of truth for every job (SQLite or Redis behind it)."""

from __future__ import annotations

import base64
import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from raylens.cluster.jobs import Job, JobState
from raylens.cluster.settings import Settings

IdempotencyRecord = tuple[str, list[str]]  # (request fingerprint, job ids)

# What a deleted job leaves behind: {"job_id", "sha256", "state" (when deleted), "source_kind",
# "deleted_at" (Unix time), "by" (who asked)}. No source path, name or result is kept.
Tombstone = dict[str, Any]


def tombstone(job: Job, by: str, at: float) -> Tombstone:
    return {
        "job_id": job.id,
        "sha256": job.sha256,
        "state": job.state.value,
        "source_kind": job.source_kind.value,
        "deleted_at": at,
        "by": by,
    }


def encode_cursor(created_at: float, job_id: str) -> str:
    """An opaque page cursor: the (created_at, id) of the last job of the previous page."""
    return base64.urlsafe_b64encode(f"{created_at!r}|{job_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(created_at), job_id
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise ValueError(f"invalid job list cursor {cursor!r}") from None


# Page cursors as users see them, over HTTP and in the CLI alike: "<created_at>_<job id>" of the
# last entry of the previous page (the store's own cursor above is opaque base64). The pattern
# describes this form exactly, so a cursor it admits is one a page can start from.
PAGE_CURSOR = r"^[0-9]{1,16}(\.[0-9]{1,17})?_[0-9A-Za-z_-]{1,64}$"


def page_cursor(store_cursor: str | None) -> str | None:
    """The store's next-page cursor as users see it."""
    if store_cursor is None:
        return None
    created_at, job_id = decode_cursor(store_cursor)
    return f"{created_at!r}_{job_id}"


def store_cursor(cursor: str | None) -> str | None:
    """A user's page cursor (page_cursor's form) as the store takes it; ValueError names a
    cursor of another form."""
    if cursor is None:
        return None
    if not re.fullmatch(PAGE_CURSOR, cursor):
        raise ValueError(
            f"not a page cursor (<created_at>_<job id>, the next_cursor of a page): {cursor[:80]!r}"
        )
    created_at, _, job_id = cursor.partition("_")
    return encode_cursor(float(created_at), job_id)


class StoredThenFailed(Exception):
    """A submit's jobs were committed, then a later write of the same step failed.

    Carries the stored jobs so the memory step queues the created ones before the error is
    raised to the caller: a job committed as queued is always in a lane (invariant 4).
    """

    def __init__(self, stored: list[tuple[Job, bool]], error: BaseException) -> None:
        super().__init__(str(error))
        self.stored = stored
        self.error = error


class JobStore(ABC):
    """Durable job records. Every write has returned only once it is durable.

    Callers are synchronous and may be on any thread; implementations serialise their own I/O.
    The queue actor is the only writer in a running system; readers are the CLI and the ingress.
    Raises StoreUnavailable (never a client library's own exception) when the backend is down.
    """

    @abstractmethod
    def create_or_get(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """Insert jobs whose content_key has no live job yet, atomically per job.

        For each job returns (stored job, created). When a job with the same content_key exists
        and is not failed, that existing job is returned with created=False and nothing is
        written. A failed one is replaced as the content_key's job by the new one.
        """

    def create_or_get_keyed(
        self, jobs: Sequence[Job], key: str, fingerprint: str, ttl_s: float
    ) -> list[tuple[Job, bool]]:
        """create_or_get, and remember the key with the ids it returned (put_idempotency).

        Here two writes: when the key's write fails after the jobs were committed, raises
        StoredThenFailed carrying them. A store that can make both one transaction overrides
        this (then a failure leaves nothing written, and it raises the failure itself)."""
        stored = self.create_or_get(jobs)
        try:
            self.put_idempotency(key, fingerprint, [job.id for job, _ in stored], ttl_s)
        except Exception as exc:
            raise StoredThenFailed(stored, exc) from exc
        return stored

    @abstractmethod
    def put(self, jobs: Sequence[Job]) -> None:
        """Overwrite these jobs' records (state moves), all in one transaction."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Jobs in the order asked; None for an unknown id."""

    @abstractmethod
    def find_by_content(self, content_key: str) -> Job | None:
        """The job currently registered for a content key, if any."""

    @abstractmethod
    def jobs_for_content(self, sha256: str) -> list[Job]:
        """Every job recorded for this content (any pipeline, any model, failed ones too)."""

    @abstractmethod
    def delete(self, jobs: Sequence[Job], by: str, at: float, *, tombstones: bool = True) -> None:
        """Remove these jobs' records (and the content keys that name them), leaving a
        Tombstone for each (unless tombstones=False: records expired by age), all in one
        transaction. Absent jobs are no error."""

    @abstractmethod
    def tombstones(self, job_ids: Sequence[str]) -> dict[str, Tombstone]:
        """The tombstones of those of these ids that were deleted."""

    @abstractmethod
    def tombstones_for_content(self, sha256: str) -> list[Tombstone]:
        """The tombstones of every deleted job of this content."""

    @abstractmethod
    def iter_state(self, state: JobState, batch: int = 1000) -> Iterator[Job]:
        """Every job in a state, oldest first (used to rebuild the queue)."""

    @abstractmethod
    def list(
        self, state: JobState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """A page of jobs (newest first) and the cursor of the next page, or None at the end."""

    @abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Number of jobs in each state (every state present, zeros included)."""

    @abstractmethod
    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        """(request fingerprint, job ids) remembered under an Idempotency-Key, unless expired."""

    @abstractmethod
    def put_idempotency(
        self, key: str, fingerprint: str, job_ids: Sequence[str], ttl_s: float
    ) -> None:
        """Remember which jobs a keyed request made, for ttl_s seconds (overwrites)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A system record (such as the active model) by key, or None."""

    @abstractmethod
    def put_meta(self, key: str, value: str) -> None:
        """Write (replace) a system record."""

    # Events (cluster/events.py): create_or_get, put and delete append one per job written,
    # in the same transaction, unless the store was opened with events off.
    @abstractmethod
    def events_after(self, after: str | None, limit: int) -> builtins.list[dict[str, Any]]:
        """Up to `limit` events with an id after `after` (None: from the oldest kept), oldest
        first, each with its "id". Raises EventsExpired when events after `after` were
        trimmed, ValueError for an id this store never makes."""

    @abstractmethod
    def last_event_id(self) -> str:
        """The id of the newest event written ("0" or "0-0" before any): a reader that starts
        "now" resumes after it."""

    @abstractmethod
    def trim_events(self, before: float) -> int:
        """Remove the events written before Unix time `before`; returns how many."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    @abstractmethod
    def close(self) -> None: ...

    def iter_nonterminal(self) -> Iterable[Job]:
        yield from self.iter_state(JobState.QUEUED)
        yield from self.iter_state(JobState.RUNNING)


def open_job_store(settings: Settings) -> JobStore:
    """The job store the settings name: Redis when RAYLENS_REDIS_URL is set, else SQLite."""
    if settings.redis_url:
        from raylens.cluster.store_redis import RedisJobStore

        return RedisJobStore(
            settings.redis_url, prefix=settings.redis_prefix, events=settings.events_retention_s > 0
        )
    from raylens.cluster.store_sqlite import SqliteJobStore

    return SqliteJobStore(settings.sqlite_path, events=settings.events_retention_s > 0)
