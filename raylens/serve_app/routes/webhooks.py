"""Webhook route: the deliveries of a job's callback_url (each attempt, its answer or error)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from raylens.actors.api import ClusterAPI
from raylens.serve_app.openapi import ERRORS, NOT_FOUND


class DeliveryAttempt(BaseModel):
    at: float = Field(description="Unix time the POST started.")
    status: int | None = Field(default=None, description="HTTP status the receiver answered.")
    error: str | None = Field(default=None, description="Why no answer came (timeout, ...).")
    seconds: float = Field(description="How long the attempt took.")


class DeliveriesOut(BaseModel):
    job_id: str = Field(description="Job id.")
    callback_url: str | None = Field(description="Where the job's end is POSTed, if anywhere.")
    state: Literal["none", "pending", "delivered", "failed"] = Field(
        description="none: no callback_url; pending: not delivered yet (the job has not ended, "
        "or it is being retried); delivered: a 2xx answer; failed: no 2xx answer within "
        "RAYLENS_WEBHOOK_RETRY_S (the job itself is unaffected)."
    )
    attempts: list[DeliveryAttempt] = Field(description="Every attempt, oldest first.")


def router(api: ClusterAPI, auth: Sequence[Any]) -> APIRouter:
    """/v1/jobs/{job_id}/deliveries, behind `auth`."""
    hooks = APIRouter(tags=["jobs"], dependencies=auth)

    @hooks.get(
        "/v1/jobs/{job_id}/deliveries",
        response_model=DeliveriesOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="Webhook deliveries of a job's callback_url",
    )
    async def deliveries(job_id: Annotated[str, Path(max_length=64)]) -> DeliveriesOut:
        return DeliveriesOut.model_validate(await api.deliveries(job_id))

    return hooks
