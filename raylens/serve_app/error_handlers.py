"""Exception handlers of the HTTP app: every error answer is {"error": {"code", "message"}}.

Known raylens errors keep their message, redacted (no credentials, tokens, stack traces or data
dir paths: serve_app.redaction). An unexpected error answers a generic message with a request
id; the server log has the full exception under that id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, InvalidRequest, RaylensError
from raylens.serve_app.redaction import Redactor

log = logging.getLogger("raylens.http")

Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]
REQUEST_ID = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._\-]{8,64}")


def error_response(
    exc: RaylensError, settings: Settings, redact: Redactor | None = None
) -> JSONResponse:
    """The answer to a RaylensError: its code and status, Retry-After on 429 and 503."""
    headers = {}
    if exc.http_status in (429, 503):
        headers["Retry-After"] = str(settings.retry_after_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = exc.to_dict()
    body["message"] = (redact or Redactor(settings))(body["message"])
    return JSONResponse({"error": body}, status_code=exc.http_status, headers=headers)


def request_id(request: Request) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one."""
    given = request.headers.get(REQUEST_ID, "")
    return given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex


def internal_error(request: Request, exc: BaseException) -> JSONResponse:
    """A 500 that says nothing of the inside; the log has the exception under its request id."""
    rid = request_id(request)
    log.error(
        "request %s: %s %s failed: %s: %s",
        rid,
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    body = {
        "code": ErrorCode.INTERNAL.value,
        "message": f"internal error (request id {rid}); the server log has the details",
    }
    return JSONResponse({"error": body}, status_code=500, headers={REQUEST_ID: rid})


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path answers: FastAPI declares one route per method, and
    Starlette's 405 names only the first route that matched the path."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def validation_message(errors: list[Any]) -> str:
    """Pydantic's errors as one line a user can act on (the first five)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def exception_handlers(settings: Settings) -> dict[int | type[Exception], Handler]:
    """The app's exception handlers; bad input is never a 500."""
    redact = Redactor(settings)

    async def on_raylens_error(request: Request, exc: RaylensError) -> JSONResponse:
        if exc.code is ErrorCode.INTERNAL:  # not a known error: an actor's unexpected failure
            return internal_error(request, exc)
        if exc.http_status >= 500:  # the full text for the operator; the client's is redacted
            log.warning("%s %s: %s: %s", request.method, request.url.path, exc.code.value, exc)
        return error_response(exc, settings, redact)

    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = validation_message(list(exc.errors()))
        return error_response(InvalidRequest(message), settings, redact)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
        headers = dict(getattr(exc, "headers", None) or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not a method of {request.url.path}; it answers " + (
                ", ".join(allowed)
            )
        return JSONResponse(
            {"error": {"code": code.value, "message": redact(message)}},
            status_code=exc.status_code,
            headers=headers or None,
        )

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc)

    return {
        RaylensError: on_raylens_error,
        RequestValidationError: on_invalid,
        StarletteHTTPException: on_http,
        Exception: on_bug,
    }
