"""Run routes: the ingest runs (cluster/runs.py), with counts, images/s and ETA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from raylens.actors.api import ClusterAPI
from raylens.serve_app.openapi import ERRORS


class RunCounts(BaseModel):
    submitted: int = Field(description="Jobs this attempt created.")
    done: int = Field(description="Done, including content done before (skipped).")
    failed: int = Field(description="Failed jobs and unreadable files.")
    skipped: int = Field(description="Content already done before this attempt.")
    duplicates: int = Field(description="Files with the content of another file of the run.")


class RunOut(BaseModel):
    id: str = Field(description="Run id; events of its jobs: GET /v1/events?run=<id>.")
    source: str = Field(description="What was ingested: a path or an s3:// URI.")
    pipeline: str = Field(description="embed, faces or both.")
    ray_job_id: str | None = Field(description="The Ray job of the ingest driver, if any.")
    status: Literal["running", "complete", "interrupted"] = Field(
        description="interrupted: it stopped before the end (timeout, Ctrl+C, a crash); "
        "ingesting the same source again continues this run."
    )
    started_at: float = Field(description="Unix time of the run's first attempt.")
    updated_at: float = Field(description="Unix time of its last progress record.")
    attempts: int = Field(description="Ingests of this source that made up the run.")
    attempt_started_at: float = Field(description="Unix time the newest attempt began.")
    files: int = Field(description="Files (or objects) listed so far.")
    total: int | None = Field(description="Files to ingest, once the listing is counted.")
    counts: RunCounts
    failed_by_code: dict[str, int] = Field(description="Failures by error code.")
    finished: int = Field(description="Files with an outcome (done, failed, skipped, dup).")
    pending: int | None = Field(description="Files left (null until total is known).")
    images_per_s: float = Field(description="Jobs finished per second in the newest attempt.")
    eta_s: float | None = Field(description="Seconds left at that speed (null: unknown).")


class RunsPage(BaseModel):
    runs: list[RunOut]


def router(api: ClusterAPI, auth: Sequence[Any]) -> APIRouter:
    """/v1/runs and /v1/runs/{run_id}, behind `auth`."""
    runs = APIRouter(tags=["jobs"], dependencies=auth)

    @runs.get("/v1/runs", response_model=RunsPage, responses=ERRORS, summary="Ingest runs")
    async def list_runs(
        limit: Annotated[int, Query(ge=1, le=1000, description="Runs, newest first.")] = 100,
    ) -> RunsPage:
        return RunsPage.model_validate({"runs": await api.runs(limit)})

    @runs.get(
        "/v1/runs/{run_id}",
        response_model=RunOut,
        responses={
            **ERRORS,
            404: {"model": ERRORS[401]["model"], "description": "No such run (`not_found`)."},
        },
        summary="One ingest run: counts, images/s, ETA, failures by code",
    )
    async def get_run(run_id: Annotated[str, Path(min_length=1, max_length=64)]) -> RunOut:
        return RunOut.model_validate(await api.run(run_id))

    return runs
