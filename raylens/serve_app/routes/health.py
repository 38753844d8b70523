"""Health routes: liveness (no auth, touches nothing) and readiness (queue and workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from raylens.actors.api import ClusterAPI
from raylens.serve_app.middleware import HEALTHZ
from raylens.serve_app.openapi import ERRORS, GUARD_ERRORS, MALFORMED
from raylens.serve_app.schemas import HealthOut, ReadyOut


def router(
    api: ClusterAPI, auth: Sequence[Any], redact: Callable[[Any], Any] | None = None
) -> APIRouter:
    """/v1/healthz (never behind auth) and /v1/readyz (behind `auth`); redact (a
    Redactor's .values) cleans the report's error texts of credentials and tracebacks."""
    health = APIRouter(tags=["health"])

    @health.get(HEALTHZ, response_model=HealthOut, responses=MALFORMED, summary="Liveness")
    async def healthz() -> HealthOut:
        """Answers without touching the queue or the workers (never behind their load)."""
        return HealthOut()

    @health.get(
        "/v1/readyz",
        response_model=ReadyOut,
        dependencies=auth,
        responses={
            **GUARD_ERRORS,
            401: ERRORS[401],
            503: {"model": ReadyOut, "description": "Not ready; body says why."},
        },
        summary="Readiness: queue answers and a worker has its model loaded",
    )
    async def readyz() -> JSONResponse:
        report = await api.ready()
        body = ReadyOut.model_validate(report).model_dump(mode="json")
        if redact is not None:
            body = redact(body)
        return JSONResponse(body, status_code=200 if report["ready"] else 503)

    return health
