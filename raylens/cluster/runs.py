"""Ingest runs: one record per `raylens ingest` of a source (a folder, a file, an s3:// prefix),
with its counts, speed and ETA, kept in the job store (`run:<id>` meta records, and an index of
the newest RAYLENS_RUNS_KEEP ids) and written through the queue. An ingest that did not finish
(interrupted, timed out) and is started again on the same source and pipeline continues the
same run: its id, start time and earlier attempts stay; the counts are those of the newest
attempt, in which content done by an earlier one counts as done (skipped, already done)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

RUNS_INDEX = "runs"


def run_key(run_id: str) -> str:
    return f"run:{run_id}"


def source_key(source: str, pipeline: str) -> str:
    """The meta key naming the latest run of this source and pipeline."""
    digest = hashlib.sha256(f"{source}\n{pipeline}".encode()).hexdigest()[:32]
    return f"run-source:{digest}"


def new(
    source: str, pipeline: str, ray_job_id: str | None, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "id": uuid.uuid4().hex[:16],
        "source": source,
        "pipeline": pipeline,
        "ray_job_id": ray_job_id,
        "status": "running",
        "started_at": now,
        "updated_at": now,
        "attempts": 1,
        "attempt_started_at": now,
        "files": 0,
        "total": None,
        "counts": {"submitted": 0, "done": 0, "failed": 0, "skipped": 0, "duplicates": 0},
        "failed_by_code": {},
    }


def resumed(
    earlier: dict[str, Any], ray_job_id: str | None, now: float | None = None
) -> dict[str, Any]:
    """The record of a new attempt of an unfinished run."""
    now = time.time() if now is None else now
    fresh = new(earlier["source"], earlier["pipeline"], ray_job_id, now)
    return {
        **fresh,
        "id": earlier["id"],
        "started_at": earlier["started_at"],
        "attempts": int(earlier.get("attempts", 1)) + 1,
    }


def view(record: dict[str, Any], stale_s: float, now: float | None = None) -> dict[str, Any]:
    """The record as shown: plus pending, images/s of this attempt and an ETA (None until the
    listing's total is known or nothing has finished yet). A running run whose ingest has not
    written for stale_s is shown as interrupted (its ingest is gone)."""
    now = time.time() if now is None else now
    if record["status"] == "running" and now - record["updated_at"] > stale_s:
        record = {**record, "status": "interrupted"}  # its ingest stopped writing: gone
    c = record["counts"]
    finished = c["done"] + c["failed"] + c["skipped"] + c["duplicates"]
    elapsed = max(
        1e-9,
        (record["updated_at"] if record["status"] != "running" else now)
        - record["attempt_started_at"],
    )
    rate = (c["done"] + c["failed"]) / elapsed if elapsed > 0 else 0.0
    total = record.get("total")
    left = None if total is None else max(0, int(total) - finished)
    eta = None
    if record["status"] == "running" and left is not None and rate > 0:
        eta = round(left / rate, 1)
    return {
        **record,
        "finished": finished,
        "pending": left,
        "images_per_s": round(rate, 2),
        "eta_s": eta if record["status"] == "running" else 0.0 if left == 0 else None,
    }


def encode(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))
