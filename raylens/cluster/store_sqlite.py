"""SQLite job store: the embedded default, one WAL-mode file in the data dir."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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
from raylens.errors import EventsExpired, StoreUnavailable

SCHEMA_VERSION = 1

# Pages and rebuilds order by (created_at, id), exactly like the Redis store's sorted sets (score,
# then member), so both backends page the same way; the indexes serve exactly those orders.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    lane        TEXT NOT NULL,
    content_key TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE TABLE IF NOT EXISTS content (
    content_key TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_content ON jobs (content_key);
CREATE TABLE IF NOT EXISTS tombstones (
    job_id      TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL,
    data        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_sha256 ON tombstones (sha256);
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    job_ids     TEXT NOT NULL,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    data        TEXT NOT NULL
);
"""
# AUTOINCREMENT: an event id is never reused after a trim. The highest id trimmed is kept in
# meta, so a resume from before it is told apart from a resume with nothing new.
TRIMMED_KEY = "events_trimmed_through"
INSERT_EVENT = "INSERT INTO events (at, data) VALUES (?, ?)"

UPSERT_JOB = """
INSERT INTO jobs (id, state, lane, content_key, created_at, updated_at, data)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, lane = excluded.lane, updated_at = excluded.updated_at,
    data = excluded.data
"""
# A job's content_key and created_at never change, so a state move leaves them (and the two
# indexes on them) alone: rewriting them cost a third more per write.


def _row(job: Job) -> tuple[str, str, str, str, float, float, str]:
    return (
        job.id,
        job.state.value,
        job.lane.value,
        job.content_key,
        job.created_at,
        job.updated_at,
        job.to_json().decode(),
    )


def _rows_in(
    run: Callable[[str, Sequence[str]], list[tuple]], select: str, keys: Sequence[str]
) -> list[tuple]:
    """Rows of `select` ("SELECT ... WHERE column") IN these keys, run by `run(sql, params)`,
    chunked to stay under SQLite's bound-parameter limit (999 on old builds)."""
    unique = list(dict.fromkeys(keys))
    rows: list[tuple] = []
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        rows += run(f"{select} IN ({','.join('?' * len(chunk))})", chunk)
    return rows


def _event_seq(event_id: str | None) -> int:
    if event_id is None:
        return 0
    try:
        seq = int(event_id)
    except ValueError:
        raise ValueError(f"invalid event id {event_id!r}: this store's ids are integers") from None
    if seq < 0:
        raise ValueError(f"invalid event id {event_id!r}")
    return seq


class SqliteJobStore(JobStore):
    """Job records in one SQLite file (WAL, synchronous=FULL), shareable by several processes.

    One connection per instance, guarded by a lock so any thread may call it. Writers take the
    database write lock up front (BEGIN IMMEDIATE) and wait up to `busy_timeout_s` for another
    process (the queue actor, the CLI) to release it before raising StoreUnavailable.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 10.0, *, events: bool = True) -> None:
        self.path = Path(path)
        self.events_on = events
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the folder of job store {self.path}: {exc}"
            ) from exc
        with self._errors("open"):
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        with self._lock, self._errors("open"):
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            # WAL lets the CLI read while the queue actor writes; it is a property of the file.
            self._db.execute("PRAGMA journal_mode = WAL")
            # FULL fsyncs the WAL on every commit: an acknowledged job survives a power cut,
            # not only a process crash (NORMAL's guarantee in WAL mode).
            self._db.execute("PRAGMA synchronous = FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"job store {self.path} has schema version {version}; this raylens knows "
                    f"up to {SCHEMA_VERSION}. Upgrade raylens or point RAYLENS_DATA_DIR elsewhere"
                )
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn sqlite's 'locked', 'unable to open', 'disk I/O' ... into StoreUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"job store {self.path} unavailable ({action}): {exc}") from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # integrity / programming errors are bugs
                raise
            raise StoreUnavailable(f"job store {self.path} unusable ({action}): {exc}") from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            finally:
                # After an error, or a COMMIT that failed (disk full, I/O), never leave the
                # shared connection inside a half-done transaction.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass

    def _query(self, action: str, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock, self._errors(action):
            return self._db.execute(sql, params).fetchall()

    # ---- writes ---------------------------------------------------------------------------------
    def create_or_get(self, jobs: Sequence[Job]) -> list[tuple[Job, bool]]:
        """One transaction, one lookup per 500 content keys and two batched writes (not three
        statements per job)."""
        if not jobs:
            return []
        with self._transaction("create_or_get") as db:
            return self._create_or_get_in(db, jobs)

    def create_or_get_keyed(
        self, jobs: Sequence[Job], key: str, fingerprint: str, ttl_s: float
    ) -> list[tuple[Job, bool]]:
        """The jobs and the key in one transaction (one commit, one fsync, per keyed upload):
        both are written or neither is."""
        with self._transaction("create_or_get") as db:
            stored = self._create_or_get_in(db, jobs)
            self._put_idempotency_in(db, key, fingerprint, [job.id for job, _ in stored], ttl_s)
        return stored

    def _create_or_get_in(
        self, db: sqlite3.Connection, jobs: Sequence[Job]
    ) -> list[tuple[Job, bool]]:
        out: list[tuple[Job, bool]] = []
        rows = _rows_in(
            lambda sql, params: db.execute(sql, params).fetchall(),
            "SELECT c.content_key, j.id, j.state, j.data FROM content c "
            "JOIN jobs j ON j.id = c.job_id WHERE c.content_key",
            [job.content_key for job in jobs],
        )
        existing = {key: (job_id, state, data) for key, job_id, state, data in rows}
        made: dict[str, Job] = {}  # content key -> the job this call creates for it
        for job in jobs:
            twin = made.get(job.content_key)
            if twin is not None:  # the same content twice in one call: the first one
                out.append((twin, twin.id == job.id))
                continue
            found = existing.get(job.content_key)
            # Same id: this very job was stored by an earlier, retried call; still "created".
            if found is not None and found[0] != job.id and found[1] != JobState.FAILED.value:
                out.append((Job.from_json(found[2]), False))
                continue
            made[job.content_key] = job
            out.append((job, True))
        db.executemany(UPSERT_JOB, [_row(job) for job in made.values()])
        db.executemany(
            "INSERT OR REPLACE INTO content (content_key, job_id) VALUES (?, ?)",
            [(job.content_key, job.id) for job in made.values()],
        )
        self._append_events(db, [ev.event_of(job) for job in made.values()])
        return out

    def _append_events(self, db: sqlite3.Connection, events: Sequence[ev.Event]) -> None:
        """In the caller's transaction: the events of the records it writes."""
        if self.events_on and events:
            db.executemany(INSERT_EVENT, [(e["at"], ev.encode(e)) for e in events])

    def put(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self._transaction("put") as db:
            db.executemany(UPSERT_JOB, [_row(job) for job in jobs])
            # A job put without create_or_get still becomes findable by content; an existing
            # mapping (possibly to a newer job) is left alone.
            db.executemany(
                "INSERT OR IGNORE INTO content (content_key, job_id) VALUES (?, ?)",
                [(job.content_key, job.id) for job in jobs],
            )
            self._append_events(db, [ev.event_of(job) for job in jobs])

    def delete(self, jobs: Sequence[Job], by: str, at: float, *, tombstones: bool = True) -> None:
        if not jobs:
            return
        with self._transaction("delete") as db:
            db.executemany("DELETE FROM jobs WHERE id = ?", [(job.id,) for job in jobs])
            db.executemany(
                "DELETE FROM content WHERE content_key = ? AND job_id = ?",
                [(job.content_key, job.id) for job in jobs],
            )
            if tombstones:
                db.executemany(
                    "INSERT OR REPLACE INTO tombstones (job_id, sha256, data) VALUES (?, ?, ?)",
                    [(job.id, job.sha256, json.dumps(tombstone(job, by, at))) for job in jobs],
                )
                self._append_events(db, [ev.event_of(job, ev.DELETED, at) for job in jobs])

    def put_idempotency(
        self, key: str, fingerprint: str, job_ids: Sequence[str], ttl_s: float
    ) -> None:
        with self._transaction("put_idempotency") as db:
            self._put_idempotency_in(db, key, fingerprint, job_ids, ttl_s)

    @staticmethod
    def _put_idempotency_in(
        db: sqlite3.Connection, key: str, fingerprint: str, job_ids: Sequence[str], ttl_s: float
    ) -> None:
        now = time.time()
        db.execute("DELETE FROM idempotency WHERE expires_at < ?", (now,))
        db.execute(
            "INSERT OR REPLACE INTO idempotency (key, fingerprint, job_ids, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (key, fingerprint, json.dumps(list(job_ids)), now + ttl_s),
        )

    def put_meta(self, key: str, value: str) -> None:
        with self._transaction("put_meta") as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---- reads ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("get_meta", "SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # ---- events ---------------------------------------------------------------------------------
    def events_after(self, after: str | None, limit: int) -> list[ev.Event]:
        """Events with an id after `after` (None: from the oldest kept), oldest first."""
        start = _event_seq(after)
        with self._lock, self._errors("events_after"):
            trimmed = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", (TRIMMED_KEY,)
            ).fetchone()
            rows = self._db.execute(
                "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, max(1, limit)),
            ).fetchall()
        if after is not None and trimmed is not None and start < int(trimmed[0]):
            raise EventsExpired(
                f"events after {after} are no longer kept (kept: after {trimmed[0]}; "
                "RAYLENS_EVENTS_RETENTION_S); read the jobs' state and resume from the newest event"
            )
        return [ev.decode(str(seq), data) for seq, data in rows]

    def last_event_id(self) -> str:
        rows = self._query("last_event_id", "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return str(rows[0][0]) if rows else "0"

    def trim_events(self, before: float) -> int:
        with self._transaction("trim_events") as db:
            row = db.execute("SELECT MAX(seq) FROM events WHERE at < ?", (before,)).fetchone()
            if row is None or row[0] is None:
                return 0
            n = db.execute("DELETE FROM events WHERE seq <= ?", (row[0],)).rowcount
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (TRIMMED_KEY, str(row[0]))
            )
            return int(n)

    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        rows = self._query(
            "get_idempotency",
            "SELECT fingerprint, job_ids FROM idempotency WHERE key = ? AND expires_at >= ?",
            (key, time.time()),
        )
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._query("get", "SELECT data FROM jobs WHERE id = ?", (job_id,))
        return Job.from_json(rows[0][0]) if rows else None

    def _by_ids(self, action: str, select: str, ids: Sequence[str]) -> list[tuple]:
        """Rows of `select` ("SELECT id, data FROM t WHERE id") IN these ids."""
        return _rows_in(lambda sql, params: self._query(action, sql, params), select, ids)

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        rows = self._by_ids("get_many", "SELECT id, data FROM jobs WHERE id", job_ids)
        found = {job_id: Job.from_json(data) for job_id, data in rows}
        return [found.get(job_id) for job_id in job_ids]

    def jobs_for_content(self, sha256: str) -> list[Job]:
        # Content keys begin "<sha256>:", so the keys of one content are one range of the index.
        rows = self._query(
            "jobs_for_content",
            "SELECT data FROM jobs WHERE content_key >= ? AND content_key < ? "
            "ORDER BY created_at, id",
            (f"{sha256}:", f"{sha256};"),
        )
        return [Job.from_json(data) for (data,) in rows]

    def tombstones(self, job_ids: Sequence[str]) -> dict[str, Tombstone]:
        rows = self._by_ids(
            "tombstones", "SELECT job_id, data FROM tombstones WHERE job_id", job_ids
        )
        return {job_id: json.loads(data) for job_id, data in rows}

    def tombstones_for_content(self, sha256: str) -> list[Tombstone]:
        rows = self._query("tombstones", "SELECT data FROM tombstones WHERE sha256 = ?", (sha256,))
        return [json.loads(data) for (data,) in rows]

    def find_by_content(self, content_key: str) -> Job | None:
        rows = self._query(
            "find_by_content",
            "SELECT j.data FROM content c JOIN jobs j ON j.id = c.job_id WHERE c.content_key = ?",
            (content_key,),
        )
        return Job.from_json(rows[0][0]) if rows else None

    def iter_state(self, state: JobState, batch: int = 1000) -> Iterator[Job]:
        # Keyset pages, lock released between pages so writers are never starved by a reader.
        after: tuple[float, str] | None = None
        while True:
            where = "WHERE state = ?"
            params: list[object] = [state.value]
            if after is not None:
                where += " AND (created_at, id) > (?, ?)"
                params.extend(after)
            rows = self._query(
                "iter_state",
                f"SELECT created_at, id, data FROM jobs {where} ORDER BY created_at, id LIMIT ?",
                [*params, batch],
            )
            for _, _, data in rows:
                yield Job.from_json(data)
            if len(rows) < batch:
                return
            after = (rows[-1][0], rows[-1][1])

    def list(
        self, state: JobState | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where: list[str] = []
        params: list[object] = []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if cursor is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(decode_cursor(cursor))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            "list",
            f"SELECT created_at, id, data FROM jobs {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit + 1],  # one extra row tells whether a next page exists
        )
        jobs = [Job.from_json(data) for _, _, data in rows[:limit]]
        more = len(rows) > limit
        return jobs, encode_cursor(rows[limit - 1][0], rows[limit - 1][1]) if more else None

    def counts(self) -> dict[JobState, int]:
        rows = self._query("counts", "SELECT state, COUNT(*) FROM jobs GROUP BY state")
        found = {state: n for state, n in rows}
        return {state: found.get(state.value, 0) for state in JobState}

    def ping(self) -> None:
        self._query("ping", "SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()
