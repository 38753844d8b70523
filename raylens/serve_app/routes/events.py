"""Event route: every job state transition as Server-Sent Events, resumable by Last-Event-ID.

No `from __future__ import annotations` here: the route's parameter annotations use this
ingress's settings (the job id cap), which FastAPI can only see if they are evaluated where the
route is defined.
"""

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from raylens.actors.api import ClusterAPI
from raylens.cluster import events as ev
from raylens.cluster.settings import Settings
from raylens.errors import InvalidRequest, JobNotFound, RaylensError
from raylens.serve_app.openapi import ERRORS, Responses
from raylens.serve_app.schemas import ErrorOut, IdempotencyKey, Text64

log = logging.getLogger("raylens.api")

SQLITE_EVENT_ID = r"^[0-9]{1,18}$"
REDIS_EVENT_ID = r"^[0-9]{1,15}(-[0-9]{1,15})?$"
EventState = Literal["queued", "running", "done", "failed", "deleted"]

# One Server-Sent Event (OpenAPI before 3.2: a text/event-stream `schema` describes each event).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "Event id: resume after it with Last-Event-ID."},
        "event": {"type": "string", "enum": ["job", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "job_id": {"type": "string"},
                    "state": {"type": "string", "enum": list(get_args(EventState))},
                    "lane": {"type": "string"},
                    "attempts": {"type": "integer"},
                    "error_code": {"type": ["string", "null"]},
                    "at": {"type": "number"},
                    "point_ids": {"type": "array", "items": {"type": "string"}},
                    "snapshot": {"type": "boolean"},
                    "run_id": {"type": ["string", "null"]},
                    "code": {"type": "string", "description": "Of an `error` event."},
                },
            },
        },
        "retry": {"type": "integer", "minimum": 0, "description": "Reconnection delay, ms."},
    },
}
EVENT_STREAM: Responses = {
    200: {
        "description": "A stream of Server-Sent Events (`text/event-stream`), each:\n\n"
        "    id: <event id>\n    event: job\n    data: <JSON>\n\n"
        "The JSON has `id`, `job_id`, `state` (queued, running, done, failed, or deleted), "
        "`lane`, `attempts`, `error_code` (failed only), `at` (Unix time it was stored) and "
        "`point_ids` (done only: the image point and face points). With `job_id` or "
        "`idempotency_key` and no Last-Event-ID, each of those jobs' current state comes "
        "first, as an event with `snapshot: true` and the id of the newest event. Comments "
        "(`: keep-alive`) come every RAYLENS_EVENTS_KEEPALIVE_S while there is nothing to "
        "send. The stream ends after RAYLENS_EVENTS_STREAM_S; reconnect with the last id seen "
        "as Last-Event-ID (EventSource does, and so does raylens.Client.events) to miss "
        "nothing and repeat nothing. A stream that fails midway ends with `event: error`.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    404: {"model": ErrorOut, "description": "Unknown or expired Idempotency-Key (`not_found`)."},
    410: {
        "model": ErrorOut,
        "description": "Last-Event-ID is older than the events kept "
        "(RAYLENS_EVENTS_RETENTION_S; `events_expired`): read the jobs' state, then stream "
        "from now.",
    },
}


def sse(event: dict[str, Any], kind: str = "job") -> str:
    return f"id: {event['id']}\nevent: {kind}\ndata: {json.dumps(event)}\n\n"


async def _job_ids(
    api: ClusterAPI, settings: Settings, job_ids: list[str] | None, key: str | None
) -> list[str] | None:
    """The job ids a stream filters by (None: every job): the given ones and a key's."""
    ids = list(dict.fromkeys(job_ids)) if job_ids else None
    if key is not None:
        keyed = await api.keyed_job_ids(key)
        if not keyed:
            raise JobNotFound(f"no request with Idempotency-Key {key!r} (or it expired)")
        ids = list(dict.fromkeys([*(ids or []), *keyed]))
    if ids is not None and len(ids) > settings.events_max_job_ids:
        raise InvalidRequest(
            f"{len(ids)} job ids; at most {settings.events_max_job_ids} per stream "
            "(RAYLENS_EVENTS_MAX_JOB_IDS)"
        )
    return ids


async def _body(
    request: Request,
    api: ClusterAPI,
    settings: Settings,
    stream_s: float,
    ready: list[dict[str, Any]],
    last: str,
    ids: list[str] | None,
    states: list[str] | None,
    run_id: str | None = None,
) -> AsyncIterator[str]:
    """The stream: what is ready, then pages of events as they come, until stream_s."""
    yield f"retry: {int(settings.retry_after_s * 1000)}\n\n"
    for e in ready:
        yield sse(e)
    end = time.monotonic() + stream_s
    while (left := end - time.monotonic()) > 0:
        if await request.is_disconnected():
            return
        try:
            page = await api.events(
                last, min(settings.events_keepalive_s, left), ids, states, run_id
            )
        except RaylensError as exc:  # the queue restarting: the client resumes later
            yield f"event: error\ndata: {json.dumps({'code': exc.code.value})}\n\n"
            return
        last = page["last"]
        for e in page["events"]:
            yield sse(e)
        if not page["events"]:
            yield ": keep-alive\n\n"


def router(api: ClusterAPI, settings: Settings, auth: Sequence[Any]) -> APIRouter:
    """/v1/events, behind `auth`."""
    events = APIRouter(tags=["events"], dependencies=auth)
    # An event id of this ingress's job store (a resume id of another form answers 422): SQLite
    # counts events (a 64-bit integer), a Redis stream names them <ms>-<n>.
    JobIds = Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]],
        Field(max_length=settings.events_max_job_ids),
    ]
    EventId = Annotated[
        str, StringConstraints(pattern=REDIS_EVENT_ID if settings.redis_url else SQLITE_EVENT_ID)
    ]
    stream_s = max(1.0, min(settings.events_stream_s, settings.http_request_timeout_s - 5))

    @events.get(
        "/v1/events",
        response_class=StreamingResponse,
        responses={**ERRORS, **EVENT_STREAM},
        summary="Job events as Server-Sent Events",
    )
    async def stream_events(
        request: Request,
        job_id: Annotated[
            JobIds | SkipJsonSchema[None],
            Query(
                description="Only events of these jobs (repeat the parameter; at most "
                "RAYLENS_EVENTS_MAX_JOB_IDS).",
            ),
        ] = None,
        idempotency_key: Annotated[
            IdempotencyKey | SkipJsonSchema[None],
            Query(
                description="Only events of the jobs the request with this Idempotency-Key made.",
            ),
        ] = None,
        state: Annotated[
            list[EventState] | SkipJsonSchema[None],
            Query(description="Only events entering these states (repeat the parameter)."),
        ] = None,
        run: Annotated[
            Text64 | SkipJsonSchema[None],
            Query(
                description="Only events of jobs this ingest run submitted (GET /v1/runs).",
            ),
        ] = None,
        last_event_id: Annotated[
            EventId | SkipJsonSchema[None],
            Header(
                alias="Last-Event-ID",
                description="Resume after this event id (what the last event's `id:` said). "
                "`0` replays every event kept.",
            ),
        ] = None,
        after: Annotated[
            EventId | SkipJsonSchema[None],
            Query(
                description="The same as the Last-Event-ID header, for clients that cannot set "
                "headers; the header wins.",
            ),
        ] = None,
    ) -> StreamingResponse:
        ids = await _job_ids(api, settings, job_id, idempotency_key)
        states: list[str] | None = [str(x) for x in state] if state else None
        resume = last_event_id if last_event_id is not None else after
        snapshot: list[dict[str, Any]] = []
        if resume is None:  # from now; the jobs' current state first, so nothing is missed
            resume = await api.last_event_id()
            if ids is not None:
                for job in await api.jobs(ids):
                    if job is not None and (not states or job.state.value in states):
                        snapshot.append({**ev.event_of(job), "id": resume, "snapshot": True})
        # Read once before answering: a resume id that is expired (410) or malformed (422)
        # gets an error answer, not a stream that ends at once.
        first = await api.events(resume, 0.0, ids, states, run)
        return StreamingResponse(
            _body(
                request,
                api,
                settings,
                stream_s,
                [*snapshot, *first["events"]],
                first["last"],
                ids,
                states,
                run,
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return events
