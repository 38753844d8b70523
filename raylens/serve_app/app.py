"""The HTTP API (FastAPI): routes, auth, limits and error answers. No business logic here.

Every handler is async and only awaits: the cluster API runs Ray calls, payload writes and
hashing off the event loop, so /v1/healthz answers while workers are saturated.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylens.actors.api import ClusterAPI
from raylens.cluster.jobs import JobState, Lane, Pipeline
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, InvalidRequest, RaylensError, Unauthorized
from raylens.serve_app.schemas import (
    ErrorOut,
    FaceSearchOut,
    FaceSearchRequest,
    HealthOut,
    JobOut,
    JobsPage,
    ReadyOut,
    SearchOut,
    SearchRequest,
    SubmitOut,
)
from raylens.serve_app.uploads import capped, file_parts, read_multipart, text_field

log = logging.getLogger("raylens.http")

DESCRIPTION = """
Images in, searchable OpenCLIP vectors out. Upload images as jobs, follow them, search by text,
image or vector.

**Errors** are always JSON `{"error": {"code": ..., "message": ...}}` with a code from one closed
set (the same codes failed jobs carry): 401 `unauthorized`, 404 `not_found`, 409
`invalid_transition`, 413 `too_large` (upload cap, checked while the body streams in), 415
`unsupported_format` (content is sniffed, file names are ignored), 422 `invalid_request`,
`idempotency_conflict`, `empty_input`, ..., 429 `queue_full`, 503 `store_unavailable` and 503
`overloaded` (more than `RAYLENS_HTTP_MAX_ONGOING_REQUESTS` in flight in a replica), all three
with `Retry-After`. Behind that, Serve itself answers 503 (without Retry-After) when its own
queue (`RAYLENS_HTTP_MAX_QUEUED_REQUESTS`) is full, and 408 after
`RAYLENS_HTTP_REQUEST_TIMEOUT_S`.

**Auth**: when `RAYLENS_API_KEYS` is set, every route except `/v1/healthz` needs
`Authorization: Bearer <key>`. Ray's own token auth protects the dashboard and `ray job submit`.
"""

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong API key (`unauthorized`)."},
    422: {"model": ErrorOut, "description": "Bad parameters (`invalid_request`)."},
    503: {
        "model": ErrorOut,
        "description": "Queue, store or workers unavailable (`store_unavailable`); see "
        "Retry-After.",
    },
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {
        "model": ErrorOut,
        "description": "Over RAYLENS_MAX_UPLOAD_BYTES or a file over "
        "RAYLENS_MAX_INPUT_BYTES (`too_large`).",
    },
    415: {
        "model": ErrorOut,
        "description": "A file is not a supported image (`unsupported_format`).",
    },
    422: {
        "model": ErrorOut,
        "description": "Bad parameters, an empty file (`empty_input`) or "
        "an Idempotency-Key used for other content (`idempotency_conflict`).",
    },
    429: {
        "model": ErrorOut,
        "description": "Queue full (`queue_full`); retry after Retry-After "
        "seconds with the same Idempotency-Key.",
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such job (`not_found`)."}
}

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One or more images (jpeg, png, gif, webp, bmp, "
                        "tiff) or videos (mp4, mov, webm, mkv).",
                    },
                    "priority": {
                        "type": "string",
                        "enum": [lane.value for lane in Lane],
                        "default": "normal",
                        "description": "Queue lane.",
                    },
                    "pipeline": {
                        "type": "string",
                        "enum": [p.value for p in Pipeline],
                        "default": "both",
                        "description": "embed (OpenCLIP vector), faces, or both.",
                    },
                },
            }
        }
    },
}


def query_body(json_model: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body of a query route: a JSON model, or multipart with an image."""
    image = {"type": "string", "format": "binary", "description": "Query image."}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": json_model.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": image,
                        "top_k": {"type": "integer", "default": 10},
                        **fields,
                    },
                }
            },
        },
    }


SEARCH_BODY = query_body(
    SearchRequest, {"filters": {"type": "string", "description": "JSON object of filters."}}
)
FACE_SEARCH_BODY = query_body(
    FaceSearchRequest,
    {
        "face_index": {
            "type": "integer",
            "description": "Which face of the image (largest first); default 0.",
        },
        "max_distance": {"type": "number", "description": "Default: the match threshold."},
    },
)


def error_response(exc: RaylensError, settings: Settings) -> JSONResponse:
    headers = {}
    if exc.http_status in (429, 503):
        headers["Retry-After"] = str(settings.retry_after_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def _choice(value: str | None, enum: Any, field: str, default: Any) -> Any:
    if value is None or value == "":
        return default
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidRequest(f"{field} must be one of {allowed}, got {value!r}") from None


async def _small_body(request: Request) -> bytes:
    limit = 4 * 1024 * 1024  # a JSON query: text or one vector
    chunks = []
    async for chunk in capped(request, limit):
        chunks.append(chunk)
    return b"".join(chunks)


def _number(value: str | None, kind: Any, field: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be a number, got {value!r}") from None


class InflightLimit:
    """ASGI middleware: above `limit` requests in flight in this replica, answer 503
    `overloaded` with Retry-After at once (Serve's own rejections carry no Retry-After, so the
    replica admits more than this and does the refusing itself). /v1/healthz is never refused."""

    def __init__(self, app: Any, limit: int, retry_after_s: int) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.inflight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/v1/healthz":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            body = json.dumps(
                {
                    "error": {
                        "code": ErrorCode.OVERLOADED.value,
                        "message": f"{self.inflight} requests in flight in this replica; limit "
                        f"RAYLENS_HTTP_MAX_ONGOING_REQUESTS={self.limit}. Retry later.",
                    }
                }
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"retry-after", self.retry_after),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def create_app(settings: Settings, api: ClusterAPI | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica."""
    api = api or ClusterAPI(settings)
    app = FastAPI(
        title="raylens",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Upload images and follow their jobs."},
            {"name": "search", "description": "Search stored vectors."},
            {"name": "health", "description": "Liveness and readiness."},
        ],
    )
    app.add_middleware(
        InflightLimit,
        limit=settings.http_max_ongoing_requests,
        retry_after_s=settings.retry_after_s,
    )
    auth = [Depends(authoriser(settings))]
    install_error_handlers(app, settings)
    add_job_routes(app, api, settings, auth)
    add_search_routes(app, api, settings, auth)
    add_face_routes(app, api, settings, auth)
    add_health_routes(app, api, auth)
    app.state.api = api
    return app


def authoriser(settings: Settings) -> Any:
    """The auth dependency: a no-op without RAYLENS_API_KEYS, else a constant-time check."""
    keys = [k.encode() for k in settings.api_key_list]
    bearer = HTTPBearer(auto_error=False, description="An API key from RAYLENS_API_KEYS.")

    async def authorised(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if not keys:
            return
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("send `Authorization: Bearer <api key>`")
        given = creds.credentials.encode()
        ok = False
        for key in keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Unauthorized("the API key is not valid")

    return authorised


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Every error answer is {"error": {"code", "message"}}; bad input is never a 500."""

    @app.exception_handler(RaylensError)
    async def on_raylens_error(request: Request, exc: RaylensError) -> JSONResponse:
        if exc.http_status >= 500 and exc.code is ErrorCode.INTERNAL:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc, settings)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest(_validation_message(list(exc.errors()))), settings)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
        return JSONResponse(
            {"error": {"code": code.value, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        body = {"code": ErrorCode.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"[:500]}
        return JSONResponse({"error": body}, status_code=500)


def add_job_routes(app: FastAPI, api: ClusterAPI, settings: Settings, auth: list[Any]) -> None:
    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=SubmitOut,
        tags=["jobs"],
        dependencies=auth,
        responses=UPLOAD_ERRORS,
        openapi_extra={"requestBody": UPLOAD_BODY},
        summary="Upload images; one job per file",
    )
    async def submit_jobs(
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=200,
                description="Repeat a request safely: the same key returns the same jobs.",
            ),
        ] = None,
    ) -> SubmitOut:
        """Answers 202 only once every file and every job record is durable. The same content
        and pipeline returns the existing job; the same Idempotency-Key returns the jobs the
        first request made, and with other content answers 422 `idempotency_conflict`."""
        form = await read_multipart(request, settings.max_upload_bytes, settings.max_upload_files)
        try:
            lane = _choice(text_field(form, "priority"), Lane, "priority", Lane.NORMAL)
            pipeline = _choice(text_field(form, "pipeline"), Pipeline, "pipeline", Pipeline.BOTH)
            files = await file_parts(form, "files")
        finally:
            await form.close()
        jobs = await api.submit_uploads(files, lane, pipeline, idempotency_key)
        return SubmitOut.model_validate({"jobs": jobs, "idempotency_key": idempotency_key})

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        tags=["jobs"],
        dependencies=auth,
        responses={**ERRORS, **NOT_FOUND},
        summary="One job: state, lane, attempts, timestamps, error, result",
    )
    async def get_job(job_id: Annotated[str, Path(max_length=64)]) -> JobOut:
        return JobOut.of(await api.get_job(job_id))

    @app.get(
        "/v1/jobs",
        response_model=JobsPage,
        tags=["jobs"],
        dependencies=auth,
        responses=ERRORS,
        summary="Page through jobs, newest first",
    )
    async def list_jobs(
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[
            str | None, Query(max_length=500, description="next_cursor of the previous page.")
        ] = None,
    ) -> JobsPage:
        jobs, next_cursor = await api.list_jobs(state, limit, cursor)
        return JobsPage(jobs=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)

    @app.post(
        "/v1/jobs/{job_id}/retry",
        status_code=202,
        response_model=JobOut,
        tags=["jobs"],
        dependencies=auth,
        responses={
            **ERRORS,
            **NOT_FOUND,
            409: {"model": ErrorOut, "description": "Not failed (`invalid_transition`)."},
        },
        summary="Re-queue a failed job",
    )
    async def retry_job(job_id: Annotated[str, Path(max_length=64)]) -> JobOut:
        return JobOut.of(await api.retry(job_id))


def add_search_routes(app: FastAPI, api: ClusterAPI, settings: Settings, auth: list[Any]) -> None:
    @app.post(
        "/v1/search",
        response_model=SearchOut,
        tags=["search"],
        dependencies=auth,
        responses={**UPLOAD_ERRORS},
        openapi_extra={"requestBody": SEARCH_BODY},
        summary="Search by text, vector (JSON) or an uploaded image (multipart)",
    )
    async def search(request: Request) -> SearchOut:
        """The query is embedded on a worker beside its batch loop, so it never waits behind
        the job backlog. Hits are best first."""
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            out = await _search_image(request)
        else:
            try:
                body = SearchRequest.model_validate_json(await _small_body(request))
            except ValidationError as exc:
                raise InvalidRequest(_validation_message(list(exc.errors()))) from None
            out = await api.search(
                text=body.text, vector=body.vector, top_k=body.top_k, filters=body.filters
            )
        return SearchOut.model_validate(out)

    async def _search_image(request: Request) -> dict[str, Any]:
        form = await read_multipart(request, settings.max_input_bytes + 64 * 1024, 1)
        try:
            images = await file_parts(form, "image")
            top_k_text = text_field(form, "top_k")
            filters_text = text_field(form, "filters")
        finally:
            await form.close()
        if len(images) != 1:
            raise InvalidRequest("send exactly one file part named 'image'")
        try:
            top_k = int(top_k_text) if top_k_text else 10
        except ValueError:
            raise InvalidRequest(f"top_k must be an integer, got {top_k_text!r}") from None
        try:
            filters = json.loads(filters_text) if filters_text else None
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"filters must be a JSON object: {exc}") from None
        return await api.search(image=images[0][1], top_k=top_k, filters=filters)


def add_face_routes(app: FastAPI, api: ClusterAPI, settings: Settings, auth: list[Any]) -> None:
    @app.post(
        "/v1/faces/search",
        response_model=FaceSearchOut,
        tags=["search"],
        dependencies=auth,
        responses={**UPLOAD_ERRORS, **NOT_FOUND},
        openapi_extra={"requestBody": FACE_SEARCH_BODY},
        summary="Find faces like the largest (or face_index) face of an image, or a stored face",
    )
    async def search_faces(request: Request) -> FaceSearchOut:
        """Hits are stored faces within max_distance (RAYLENS_FACE_MATCH_THRESHOLD), closest
        first, with their parent image or video frame. 422 when the image has no face."""
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            form = await read_multipart(request, settings.max_input_bytes + 64 * 1024, 1)
            try:
                images = await file_parts(form, "image")
                fields = {k: text_field(form, k) for k in ("face_index", "top_k", "max_distance")}
            finally:
                await form.close()
            if len(images) != 1:
                raise InvalidRequest("send exactly one file part named 'image'")
            out = await api.search_faces(
                image=images[0][1],
                face_index=_number(fields["face_index"], int, "face_index"),
                top_k=_number(fields["top_k"], int, "top_k") or 10,
                max_distance=_number(fields["max_distance"], float, "max_distance"),
            )
        else:
            try:
                body = FaceSearchRequest.model_validate_json(await _small_body(request))
            except ValidationError as exc:
                raise InvalidRequest(_validation_message(list(exc.errors()))) from None
            out = await api.search_faces(
                face_id=body.face_id, top_k=body.top_k, max_distance=body.max_distance
            )
        return FaceSearchOut.model_validate(out)


def add_health_routes(app: FastAPI, api: ClusterAPI, auth: list[Any]) -> None:
    @app.get("/v1/healthz", response_model=HealthOut, tags=["health"], summary="Liveness")
    async def healthz() -> HealthOut:
        """Answers without touching the queue or the workers (never behind their load)."""
        return HealthOut()

    @app.get(
        "/v1/readyz",
        response_model=ReadyOut,
        tags=["health"],
        dependencies=auth,
        responses={503: {"model": ReadyOut, "description": "Not ready; body says why."}},
        summary="Readiness: queue answers and a worker has its model loaded",
    )
    async def readyz() -> JSONResponse:
        report = await api.ready()
        body = ReadyOut.model_validate(report).model_dump(mode="json")
        return JSONResponse(body, status_code=200 if report["ready"] else 503)
