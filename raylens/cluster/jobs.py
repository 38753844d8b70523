"""Jobs as explicit data: states, allowed transitions, lanes, sources and the job record."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from raylens.errors import ErrorCode, InvalidTransition


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


# Every legal move of a job. running -> queued is a nack or an expired lease;
# queued -> failed is a dead letter found while rebuilding; failed -> queued is a retry.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.QUEUED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
}


class Lane(str, Enum):
    """Priority lanes, served strictly in this order."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BULK = "bulk"


LANE_ORDER: tuple[Lane, ...] = (Lane.INTERACTIVE, Lane.NORMAL, Lane.BULK)


class SourceKind(str, Enum):
    UPLOAD = "upload"  # bytes kept in the payload store under the content sha256
    PATH = "path"  # a file on a filesystem every worker can read; never copied
    URI = "uri"  # an object in object storage (s3://bucket/key), read by workers from there


class Pipeline(str, Enum):
    """What a job computes: the OpenCLIP vector, the faces, or both."""

    EMBED = "embed"
    FACES = "faces"
    BOTH = "both"

    @property
    def embeds(self) -> bool:
        return self in (Pipeline.EMBED, Pipeline.BOTH)

    @property
    def finds_faces(self) -> bool:
        return self in (Pipeline.FACES, Pipeline.BOTH)


class Transition(BaseModel):
    state: JobState = Field(description="The state entered.")
    at: float = Field(description="Unix time, seconds.")
    attempt: int = Field(default=0, description="Attempts counted when it was entered.")
    note: str | None = Field(default=None, description="Worker id, retry, or last error.")


class JobSpec(BaseModel):
    """What a caller asks for; the queue turns it into a Job."""

    source_kind: SourceKind
    source: str  # payload key, absolute path or URI
    sha256: str = Field(min_length=64, max_length=64)
    size_bytes: int = Field(ge=0)
    lane: Lane = Lane.NORMAL
    pipeline: Pipeline = Pipeline.BOTH
    name: str | None = None  # original file name of an upload, for display
    # POSTed (signed) when the job ends: cluster/webhooks.py, checked by the caller first
    callback_url: str | None = None
    run_id: str | None = None  # the ingest run that submitted it (cluster/runs.py)

    def content_key(self, model_id: str) -> str:
        """Same content + pipeline + model -> same job (dedup and skip-if-done)."""
        return f"{self.sha256}:{self.pipeline.value}:{model_id}"


class Job(BaseModel):
    id: str
    state: JobState = JobState.QUEUED
    lane: Lane = Lane.NORMAL
    source_kind: SourceKind
    source: str
    name: str | None = None
    sha256: str
    size_bytes: int = 0
    pipeline: Pipeline = Pipeline.BOTH
    content_key: str
    attempts: int = 0  # attempts the job itself used (an infrastructure fault gives its one back)
    # Leases ever taken: the fencing token of the current lease (see lease_token). Counted apart
    # from attempts, since an attempt given back must not make an older lease current again.
    leases: int = 0
    created_at: float
    updated_at: float
    history: list[Transition] = Field(default_factory=list)
    error_code: ErrorCode | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None
    callback_url: str | None = None  # see JobSpec
    run_id: str | None = None  # see JobSpec

    @classmethod
    def new(cls, spec: JobSpec, model_id: str, now: float | None = None) -> Job:
        now = time.time() if now is None else now
        return cls(
            id=uuid.uuid4().hex,
            lane=spec.lane,
            source_kind=spec.source_kind,
            source=spec.source,
            name=spec.name,
            sha256=spec.sha256,
            size_bytes=spec.size_bytes,
            pipeline=spec.pipeline,
            callback_url=spec.callback_url,
            run_id=spec.run_id,
            content_key=spec.content_key(model_id),
            created_at=now,
            updated_at=now,
            history=[Transition(state=JobState.QUEUED, at=now)],
        )

    @property
    def lease_token(self) -> int:
        """The fencing token of this job's current (or last) lease: its lease count. A record
        written before leases were counted has its attempts (then the same number)."""
        return self.leases or self.attempts

    @property
    def suspect(self) -> bool:
        """An earlier attempt of this job ended without its ack (its worker died or hung, or
        the model failed on it): such a job is leased, and run, alone, so that whatever it
        does takes no batch-mate down with it (invariant 5). Derived from the record alone, so
        a rebuilt queue knows it too: a queued job with an attempt used, or a running one
        taken before this lease."""
        used = self.attempts - (1 if self.state is JobState.RUNNING else 0)
        return used > 0

    def outcome(self) -> Outcome:
        """This job as JobQueue.outcomes reports a finished one (see Outcome)."""
        return (
            self.id,
            self.state.value,
            self.error_code.value if self.error_code else None,
            self.created_at,
            self.timestamps().get("done"),
        )

    def moved(
        self,
        to: JobState,
        *,
        now: float | None = None,
        attempts: int | None = None,
        leases: int | None = None,
        error: tuple[ErrorCode, str] | None = None,
        result: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> Job:
        """A copy of this job in state `to`; raises InvalidTransition for an illegal move."""
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"job {self.id}: {self.state.value} -> {to.value} not allowed")
        now = time.time() if now is None else now
        attempts = self.attempts if attempts is None else attempts
        update: dict[str, Any] = {
            "state": to,
            "updated_at": now,
            "attempts": attempts,
            "leases": self.leases if leases is None else leases,
            "history": [*self.history, Transition(state=to, at=now, attempt=attempts, note=note)],
        }
        if to is JobState.FAILED:
            code, message = error or (ErrorCode.INTERNAL, "failed without a reason")
            update.update(error_code=code, error_message=message)
        # A re-queue (nack, expired lease, retry) keeps the last error visible until the job ends.
        if to is JobState.DONE:
            update.update(result=result, error_code=None, error_message=None)
        return self.model_copy(update=update)

    def timestamps(self) -> dict[str, float]:
        """Last time the job entered each state."""
        return {t.state.value: t.at for t in self.history}

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Job:
        return cls.model_validate_json(data)


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    created: bool
    state: JobState
    # When the job was first created (Unix time), where the queue knows it: an ingest tells a
    # file with the content of another file of the same run from content done long before.
    created_at: float | None = None


# A finished job as JobQueue.outcomes reports it: (job id, state, error code or None,
# created_at, done_at or None).
Outcome = tuple[str, str, str | None, float, float | None]


def request_fingerprint(specs: Sequence[JobSpec]) -> str:
    """What makes two submissions the same request: their contents and pipelines, in order."""
    h = hashlib.sha256()
    for spec in specs:
        h.update(f"{spec.sha256}:{spec.pipeline.value};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Failure:
    job_id: str
    code: ErrorCode
    message: str
    retryable: bool = False  # True: counts as an attempt and re-queues until max_attempts
    # The fencing token of the lease this failure answers (Job.lease_token of the job as it was
    # leased); None: the ack's tokens (or none) decide. See QueueRules.apply_ack.
    token: int | None = None
    # True: the infrastructure failed (the index or a store was unavailable), not the job. It
    # re-queues the job with the lease's attempt given back and never dead-letters it
    # (invariant 10); the worker pauses leasing until the dependency answers again.
    infra: bool = False
