"""Exception handlers of the HTTP app: every error answer is {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, InvalidRequest, RaylensError

log = logging.getLogger("raylens.http")

Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]


def error_response(exc: RaylensError, settings: Settings) -> JSONResponse:
    """The answer to a RaylensError: its code and status, Retry-After on 429 and 503."""
    headers = {}
    if exc.http_status in (429, 503):
        headers["Retry-After"] = str(settings.retry_after_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def validation_message(errors: list[Any]) -> str:
    """Pydantic's errors as one line a user can act on (the first five)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def exception_handlers(settings: Settings) -> dict[int | type[Exception], Handler]:
    """The app's exception handlers; bad input is never a 500."""

    async def on_raylens_error(request: Request, exc: RaylensError) -> JSONResponse:
        if exc.http_status >= 500 and exc.code is ErrorCode.INTERNAL:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc, settings)

    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest(validation_message(list(exc.errors()))), settings)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_REQUEST
        return JSONResponse(
            {"error": {"code": code.value, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        body = {"code": ErrorCode.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"[:500]}
        return JSONResponse({"error": body}, status_code=500)

    return {
        RaylensError: on_raylens_error,
        RequestValidationError: on_invalid,
        StarletteHTTPException: on_http,
        Exception: on_bug,
    }
