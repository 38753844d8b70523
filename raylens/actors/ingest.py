"""Ingest: files become durable jobs on the queue, followed to the end (`raylens ingest`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raylens.actors.handles import UNAVAILABLE, Backoff, call_with_retry
from raylens.cluster.intake import discover, spec_for_path
from raylens.cluster.jobs import Job, JobSpec, JobState, Lane, Pipeline, SubmitResult
from raylens.cluster.settings import Settings
from raylens.errors import QueueFull


def submit(
    queue: Any,
    specs: Sequence[JobSpec],
    settings: Settings,
    *,
    patience_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> list[SubmitResult]:
    """Submit in chunks; when the queue is full, back off and try again (bulk ingest waits)."""
    out: list[SubmitResult] = []
    chunk = settings.ingest_chunk
    for i in range(0, len(specs), chunk):
        part = list(specs[i : i + chunk])
        # Full: wait for room. Queue restarting: resubmitting is safe, since the same content
        # returns the job already created.
        out += call_with_retry(
            lambda: ray.get(queue.submit.remote(part)),  # noqa: B023 (called at once)
            what="queue",
            deadline_s=patience_s,
            backoff=Backoff(first_s=settings.ingest_poll_s, cap_s=max(5.0, settings.ingest_poll_s)),
            retry_on=(QueueFull, *UNAVAILABLE),
            on_wait=(lambda exc, _d: on_wait(getattr(exc, "message", "queue restarting")))
            if on_wait
            else None,
        )
    return out


@dataclass
class IngestSummary:
    path: str
    files: int = 0
    submitted: int = 0
    skipped: int = 0
    duplicates: int = 0
    done: int = 0
    failed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0
    # Seconds from a job's creation (its submission) to its vector stored (done), over the
    # jobs this run created and saw finish; None when there are none.
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    complete: bool = False
    job_ids: list[str] = field(default_factory=list, repr=False)
    latencies_s: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_s")
        if not with_ids:
            d.pop("job_ids")
        return d


def ingest(
    settings: Settings,
    root: Path,
    queue: Any,
    lane: Lane = Lane.BULK,
    progress: bool = True,
    pipeline: Pipeline = Pipeline.BOTH,
) -> IngestSummary:
    """Enqueue every image under root, skipping content already done, and wait for the end."""
    from tqdm import tqdm

    t0 = time.monotonic()
    started_at = time.time()
    summary = IngestSummary(path=str(root))
    files = list(discover(root))
    summary.files = len(files)
    bar = tqdm(
        total=len(files),
        desc="ingest",
        unit="img",
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    pending: dict[str, None] = {}  # ordered set of job ids still to finish
    seen: set[str] = set()
    last_poll = time.monotonic()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="raylens-hash") as pool:
        # The first chunk is one batch, so workers start while the rest is still being hashed.
        bounds = _chunks(
            len(files), min(settings.max_batch_size, settings.ingest_chunk), settings.ingest_chunk
        )
        for i, j in bounds:
            specs = list(pool.map(lambda p: spec_for_path(p, lane, pipeline), files[i:j]))
            results = submit(
                queue,
                specs,
                settings,
                on_wait=lambda message: bar.set_postfix_str(f"waiting: {message}"[:80]),
            )
            for res in results:
                if res.job_id in seen:
                    summary.duplicates += 1
                    bar.update(1)
                    continue
                seen.add(res.job_id)
                if res.created:
                    summary.submitted += 1
                if res.state is JobState.DONE and not res.created:
                    summary.skipped += 1
                    bar.update(1)
                else:
                    pending[res.job_id] = None
            summary.job_ids += [r.job_id for r in results]
            if time.monotonic() - last_poll > settings.ingest_poll_s * 4:
                _collect(queue, pending, summary, bar, started_at)
                last_poll = time.monotonic()
        _wait(settings, queue, pending, summary, bar, t0, started_at)
    bar.close()
    summary.seconds = round(time.monotonic() - t0, 3)
    processed = summary.done + summary.failed
    summary.images_per_s = round(processed / summary.seconds, 2) if summary.seconds else 0.0
    summary.complete = not pending
    if summary.latencies_s:
        p50, p99 = np.percentile(summary.latencies_s, [50, 99])
        summary.latency_p50_s = round(float(p50), 3)
        summary.latency_p99_s = round(float(p99), 3)
    return summary


def _chunks(n: int, first: int, rest: int) -> list[tuple[int, int]]:
    out, i, size = [], 0, first
    while i < n:
        out.append((i, min(n, i + size)))
        i, size = i + size, rest
    return out


def _collect(
    queue: Any, pending: dict[str, None], summary: IngestSummary, bar: Any, started_at: float
) -> None:
    """Move finished jobs out of pending, counting them (jobs created since started_at, a
    Unix time, also give their creation -> done latency)."""
    codes: Counter[str] = Counter(summary.failed_by_code)
    ids = list(pending)
    for i in range(0, len(ids), 1000):
        try:
            jobs: list[Job | None] = ray.get(queue.states.remote(ids[i : i + 1000]))
        except UNAVAILABLE:
            bar.set_postfix_str("queue restarting", refresh=False)
            return  # the queue is being rebuilt from the store; look again next poll
        for job_id, job in zip(ids[i : i + 1000], jobs):
            if job is None or not job.state.terminal:
                continue
            del pending[job_id]
            bar.update(1)
            if job.state is JobState.DONE:
                summary.done += 1
                done_at = job.timestamps().get("done")
                if done_at is not None and job.created_at >= started_at:
                    summary.latencies_s.append(done_at - job.created_at)
            else:
                summary.failed += 1
                codes[job.error_code.value if job.error_code else "internal"] += 1
    summary.failed_by_code = dict(codes)
    bar.set_postfix(done=summary.done, failed=summary.failed, refresh=False)


def _wait(
    settings: Settings,
    queue: Any,
    pending: dict[str, None],
    summary: IngestSummary,
    bar: Any,
    t0: float,
    started_at: float,
) -> None:
    while pending:
        if settings.ingest_timeout_s and time.monotonic() - t0 > settings.ingest_timeout_s:
            return
        # Each poll reads every pending record: poll big backlogs less often.
        time.sleep(settings.ingest_poll_s * max(1.0, len(pending) / 2000))
        _collect(queue, pending, summary, bar, started_at)
