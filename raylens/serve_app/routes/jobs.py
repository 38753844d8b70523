"""Job routes: upload images as jobs, read one, page through them, retry a failed one, delete
an image and everything derived from it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import StringConstraints
from pydantic.json_schema import SkipJsonSchema

from raylens.actors.api import ClusterAPI
from raylens.cluster.jobs import JobState, Lane, Pipeline
from raylens.cluster.settings import Settings
from raylens.cluster.store import PAGE_CURSOR, page_cursor, store_cursor
from raylens.errors import InvalidRequest, JobNotFound
from raylens.serve_app.openapi import (
    ERRORS,
    NOT_DELETABLE,
    NOT_FAILED,
    NOT_FOUND,
    UPLOAD_ERRORS,
    upload_body,
)
from raylens.serve_app.redaction import Redactor
from raylens.serve_app.schemas import (
    DeleteOut,
    IdempotencyKey,
    ImagesPage,
    JobOut,
    JobsPage,
    SubmitOut,
)
from raylens.serve_app.uploads import file_parts, read_multipart, text_field

CURSOR_DOC = "next_cursor of the previous page."
Cursor = Annotated[str, StringConstraints(pattern=PAGE_CURSOR)]


def _choice(value: str | None, enum: Any, field: str, default: Any) -> Any:
    if value is None:  # absent; an empty field is not a value of the enum (422)
        return default
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidRequest(f"{field} must be one of {allowed}, got {value!r}") from None


def who_asked(request: Request, settings: Settings) -> str:
    """Who a delete names on its tombstones: the client address, and with API keys on, a
    fingerprint of the key used (never the key)."""
    peer = request.client.host if request.client else "unknown"
    if not settings.api_key_list:
        return f"http {peer}"
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return f"http {peer} key {hashlib.sha256(token.encode()).hexdigest()[:12]}"


def router(api: ClusterAPI, settings: Settings, auth: Sequence[Any]) -> APIRouter:
    """/v1/jobs, /v1/jobs/{job_id}[/retry] and /v1/images/{sha256}, every route behind
    `auth`."""
    jobs = APIRouter(tags=["jobs"], dependencies=auth)
    redact = Redactor(settings)  # job errors may quote a store's URL or the data dir

    @jobs.post(
        "/v1/jobs",
        status_code=202,
        response_model=SubmitOut,
        responses=UPLOAD_ERRORS,
        openapi_extra={"requestBody": upload_body(bool(settings.webhook_secret))},
        summary="Upload images; one job per file",
    )
    async def submit_jobs(
        request: Request,
        idempotency_key: Annotated[
            IdempotencyKey | SkipJsonSchema[None],
            Header(
                alias="Idempotency-Key",
                description="Repeat a request safely: the same key returns the same jobs.",
            ),
        ] = None,
    ) -> SubmitOut:
        """Answers 202 only once every file and every job record is durable. The same content
        and pipeline returns the existing job; the same Idempotency-Key returns the jobs the
        first request made, and with other content answers 422 `idempotency_conflict`."""
        form = await read_multipart(
            request, settings.max_upload_bytes, settings.max_upload_files, ("files",)
        )
        try:
            lane = _choice(text_field(form, "priority"), Lane, "priority", Lane.NORMAL)
            pipeline = _choice(text_field(form, "pipeline"), Pipeline, "pipeline", Pipeline.BOTH)
            callback_url = text_field(form, "callback_url") or None
            files = await file_parts(form, "files")
        finally:
            await form.close()
        submitted = await api.submit_uploads(
            files, lane, pipeline, idempotency_key, callback_url=callback_url
        )
        return SubmitOut.model_validate({"jobs": submitted, "idempotency_key": idempotency_key})

    @jobs.get(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="One job: state, lane, attempts, timestamps, error, result",
    )
    async def get_job(job_id: Annotated[str, Path(max_length=64)]) -> JobOut:
        return JobOut.of(await api.get_job(job_id), redact)

    @jobs.get(
        "/v1/jobs",
        response_model=JobsPage,
        responses=ERRORS,
        summary="Page through jobs, newest first",
    )
    async def list_jobs(
        state: Annotated[
            JobState | SkipJsonSchema[None],
            Query(description="Only jobs in this state."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[Cursor | SkipJsonSchema[None], Query(description=CURSOR_DOC)] = None,
    ) -> JobsPage:
        page, next_cursor = await api.list_jobs(state, limit, store_cursor(cursor))
        return JobsPage(
            jobs=[JobOut.of(j, redact) for j in page], next_cursor=page_cursor(next_cursor)
        )

    @jobs.post(
        "/v1/jobs/{job_id}/retry",
        status_code=202,
        response_model=JobOut,
        responses={**ERRORS, **NOT_FOUND, **NOT_FAILED},
        summary="Re-queue a failed job",
    )
    async def retry_job(job_id: Annotated[str, Path(max_length=64)]) -> JobOut:
        return JobOut.of(await api.retry(job_id), redact)

    @jobs.get(
        "/v1/images",
        response_model=ImagesPage,
        responses=ERRORS,
        summary="Page through what is indexed, newest first",
    )
    async def list_images(
        limit: Annotated[int, Query(ge=1, le=1000, description="Entries per page.")] = 100,
        cursor: Annotated[Cursor | SkipJsonSchema[None], Query(description=CURSOR_DOC)] = None,
    ) -> ImagesPage:
        """One entry per done job: the content's sha256 (what DELETE /v1/images/{sha256}
        removes), its source, the model that made its vectors, its faces and video frames."""
        page = await api.list_images(limit, store_cursor(cursor))
        return ImagesPage.model_validate({**page, "next_cursor": page_cursor(page["next_cursor"])})

    @jobs.delete(
        "/v1/jobs/{job_id}",
        response_model=DeleteOut,
        responses={**ERRORS, **NOT_DELETABLE},
        summary="Delete the image of a job and everything derived from it",
    )
    async def delete_job(
        request: Request, job_id: Annotated[str, Path(min_length=1, max_length=64)]
    ) -> DeleteOut:
        """Removes the job's content as DELETE /v1/images/{sha256} does: every job of it
        (queued or running ones are cancelled first), its image, video-frame and face points,
        its uploaded payload. Safe to repeat: a deleted job's id answers 200 again, with
        nothing more removed."""
        return DeleteOut.model_validate(
            await api.delete_jobs([job_id], who_asked(request, settings))
        )

    @jobs.delete(
        "/v1/images/{sha256}",
        response_model=DeleteOut,
        responses={**ERRORS, **NOT_DELETABLE},
        summary="Delete an image (by sha256) and everything derived from it",
    )
    async def delete_image(
        request: Request,
        sha256: Annotated[
            str,
            Path(
                pattern="^[0-9a-fA-F]{64}$",
                description="sha256 hex digest of the image or video bytes.",
            ),
        ],
    ) -> DeleteOut:
        """Removes, as one operation safe to repeat: every job of this content (any pipeline
        or model; a queued one never runs, a running one's result is thrown away and its
        vectors removed again), leaving a tombstone each; every point derived from it (the
        image, each video frame, each face, in every model's vectors); the uploaded payload.
        Files ingested by path stay where they are. 404 when raylens holds nothing of it and
        never did."""
        out = await api.delete_content([sha256], who_asked(request, settings))
        if not out["found"]:
            raise JobNotFound(f"raylens holds nothing of sha256 {sha256.lower()}")
        return DeleteOut.model_validate(out)

    return jobs
