"""Ingest: files or objects become durable jobs on the queue, followed to the end
(`raylens ingest`)."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raylens.actors.handles import UNAVAILABLE, Backoff, call_with_retry
from raylens.cluster import runs
from raylens.cluster.intake import discover, spec_for_object, spec_for_path
from raylens.cluster.jobs import JobSpec, JobState, Lane, Outcome, Pipeline, SubmitResult
from raylens.cluster.objects import ObjectStores, ObjectUri, is_object_uri
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, QueueFull, RaylensError

log = logging.getLogger(__name__)


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
    run_id: str | None = None  # the ingest run (GET /v1/runs/{id}, `raylens runs`)
    job_ids: list[str] = field(default_factory=list, repr=False)

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_ids:
            d.pop("job_ids")
        return d


def ingest(
    settings: Settings,
    root: Path | str,
    queue: Any,
    lane: Lane = Lane.BULK,
    progress: bool = True,
    pipeline: Pipeline = Pipeline.BOTH,
    keep_ids: bool = False,
) -> IngestSummary:
    """Enqueue every image under root, skipping content already done, and wait for the end.

    root is a local file or folder, or an s3://bucket/prefix string (objects are listed page
    by page, hashed here and read by the workers straight from the bucket; see
    raylens.cluster.objects). Streams: listing, hashing (a thread pool) and submitting overlap
    with the workers, and at most RAYLENS_INGEST_MAX_PENDING jobs are followed at once, so
    memory does not grow with the folder or bucket (keep_ids=True also keeps every job id in
    the summary, for callers that want them). A file or object that vanishes or cannot be read
    between listing and hashing is counted as failed with its code (`source_missing`,
    `storage_auth`, ...), and the rest goes on. A listing that fails as a whole raises
    (SourceMissing, BucketMissing, StorageAuth, StorageUnavailable)."""
    from tqdm import tqdm

    t0 = time.monotonic()
    started_at = time.time()
    name, listing_of, spec_for = _source(settings, root)
    summary = IngestSummary(path=name)
    record = _start_run(queue, name, pipeline)
    if record is not None:
        summary.run_id = run_id = record["id"]
        plain_spec = spec_for

        def spec_for(item: Any, lane: Lane, pipeline: Pipeline) -> JobSpec:
            return plain_spec(item, lane, pipeline).model_copy(update={"run_id": run_id})

    files = listing_of()
    first = next(files, None)  # a missing root raises here, before anything is started
    bar = tqdm(
        total=None,
        desc="ingest",
        unit="img",
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    if progress and first is not None:
        threading.Thread(target=_count_into, args=(listing_of, bar), daemon=True).start()
    run = _Run(settings, queue, summary, bar, started_at, keep_ids, t0, record)
    listing: Iterator[Any] = chain([first], files) if first is not None else iter(())
    # The first chunk is one batch, so workers start while the rest is still being listed.
    first_size = min(settings.max_batch_size, settings.ingest_chunk)
    sizes = chain([first_size], repeat(settings.ingest_chunk))
    with ThreadPoolExecutor(
        max_workers=settings.ingest_hash_threads, thread_name_prefix="raylens-hash"
    ) as pool:
        hashing: deque[list[tuple[Any, Future[JobSpec]]]] = deque()
        listed_all = False
        for size in sizes:
            paths: list[Any] = list(islice(listing, size))
            if paths:
                summary.files += len(paths)
                hashing.append([(p, pool.submit(spec_for, p, lane, pipeline)) for p in paths])
            # One chunk hashes while the one before it is submitted.
            if hashing and (len(hashing) > 1 or not paths):
                run.submit([(p, _spec(fut)) for p, fut in hashing.popleft()])
            listed_all = not paths and not hashing
            if listed_all or run.timed_out():
                break
        run.wait()
    bar.close()
    summary.seconds = round(time.monotonic() - t0, 3)
    processed = summary.done + summary.failed
    summary.images_per_s = round(processed / summary.seconds, 2) if summary.seconds else 0.0
    summary.complete = listed_all and not run.pending
    if run.latencies:
        p50, p99 = np.percentile(run.latencies, [50, 99])
        summary.latency_p50_s = round(float(p50), 3)
        summary.latency_p99_s = round(float(p99), 3)
    run.write_run(final=True)
    return summary


def _start_run(queue: Any, source: str, pipeline: Pipeline) -> dict[str, Any] | None:
    """The ingest run of this source (a new one, or the unfinished one it continues); None
    when the queue cannot record one (the ingest goes on without)."""
    ray_job_id = None
    if ray.is_initialized():  # never start Ray only to ask (a caller with a stand-in queue)
        try:
            ray_job_id = ray.get_runtime_context().get_job_id()
        except Exception:
            ray_job_id = None
    try:
        out: dict[str, Any] = json.loads(
            ray.get(queue.start_run.remote(source, pipeline.value, ray_job_id), timeout=60)
        )
        return out
    except Exception as exc:
        log.warning("this ingest is not recorded as a run: %s", exc)
        return None


SpecFor = Callable[[Any, Lane, Pipeline], JobSpec]


def _source(
    settings: Settings, root: Path | str
) -> tuple[str, Callable[[], Iterator[Any]], SpecFor]:
    """What to list and how to make each listed item's job spec: local files by path, or
    objects by URI (one set of object stores for the listing and the hashing)."""
    if isinstance(root, str) and is_object_uri(root):
        where = ObjectUri.parse(root)
        stores = ObjectStores(settings)

        def object_spec(uri: str, lane: Lane, pipeline: Pipeline) -> JobSpec:
            return spec_for_object(uri, stores, lane, pipeline)

        return str(where), lambda: stores.list_media(where), object_spec
    path = Path(root)
    return str(path), lambda: discover(path), spec_for_path


def _spec(fut: Future[JobSpec]) -> JobSpec | OSError | RaylensError:
    try:
        return fut.result()
    except (OSError, RaylensError) as exc:  # listed, then gone or unreadable before it was hashed
        return exc


def _count_into(listing_of: Callable[[], Iterator[Any]], bar: Any) -> None:
    """Count what is to ingest (a second, cheap listing) and give the bar its total."""
    try:
        n = sum(1 for _ in listing_of())
    except Exception as exc:  # only the bar's total is lost; the ingest's own listing reports
        log.info("could not count the items to ingest: %s", exc)
        return
    with bar.get_lock():
        bar.total = n
    bar.refresh()


# Submission -> done latencies kept for the percentiles: exact up to this many jobs, a uniform
# sample of the run beyond it.
LATENCY_SAMPLE = 100_000
OUTCOMES_CHUNK = 5000  # job ids per JobQueue.outcomes call


class _Run:
    """The state of one ingest that grows with what is in flight, not with the folder."""

    def __init__(
        self,
        settings: Settings,
        queue: Any,
        summary: IngestSummary,
        bar: Any,
        started_at: float,
        keep_ids: bool,
        t0: float | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.settings, self.queue, self.summary, self.bar = settings, queue, summary, bar
        self.record = record  # the run's record (cluster/runs.py), written every run_update_s
        self._run_written = time.monotonic()
        self.started_at, self.keep_ids = started_at, keep_ids
        self.t0 = time.monotonic() if t0 is None else t0
        self.pending: dict[str, None] = {}  # ordered set of job ids still to finish
        # Jobs this run created are followed by their events (done and failed events of this
        # run, read from the queue after `_events_at`); the others it follows (content another
        # run had queued, jobs of an earlier attempt) by their outcomes. No events (none
        # recorded, or a read failed): every pending job by its outcome.
        self.foreign: dict[str, None] = {}
        self._created_at: dict[str, float] = {}
        self._events_at: str | None = None
        if record is not None and settings.events_retention_s > 0:
            try:
                self._events_at = ray.get(queue.last_event_id.remote(), timeout=30)
            except Exception as exc:
                log.info("following jobs by their outcomes, not events: %s", exc)
        self.latencies: list[float] = []
        self._seen_latencies = 0
        self._rng = random.Random(0)
        self._codes: Counter[str] = Counter()
        self._last_poll = time.monotonic()

    def submit(self, items: list[tuple[Any, JobSpec | OSError | RaylensError]]) -> None:
        specs = [s for _, s in items if isinstance(s, JobSpec)]
        for item, spec in items:
            if isinstance(spec, RaylensError):
                self._failed(spec.code.value)
                log.warning("%s could not be read: %s", item, spec.message)
            elif isinstance(spec, OSError):
                self._failed(ErrorCode.SOURCE_MISSING.value)
                log.warning("%s could not be read: %s", item, spec)
        results = submit(
            self.queue,
            specs,
            self.settings,
            on_wait=lambda message: self.bar.set_postfix_str(f"waiting: {message}"[:80]),
        )
        for res in results:
            if self.keep_ids:
                self.summary.job_ids.append(res.job_id)
            if res.created:
                self.summary.submitted += 1
            elif res.job_id in self.pending or (
                res.state.terminal
                and res.created_at is not None
                and res.created_at >= self.started_at
            ):
                # The content of another file of this run (followed, or finished already):
                # one job for both.
                self.summary.duplicates += 1
                self.bar.update(1)
                continue
            elif res.state is JobState.DONE:
                self.summary.skipped += 1
                self.bar.update(1)
                continue
            # Created now, or found queued/running/failed (a resubmission after a queue restart
            # returns jobs its lost reply had created): followed to the end.
            self.pending[res.job_id] = None
            if res.created:
                self._created_at[res.job_id] = res.created_at or time.time()
            else:
                self.foreign[res.job_id] = None
        if time.monotonic() - self._last_poll > self.settings.ingest_poll_s * 4:
            self.collect()
        while len(self.pending) >= self.settings.ingest_max_pending and not self.timed_out():
            self._await_progress()

    def wait(self) -> None:
        while self.pending and not self.timed_out():
            self._await_progress()

    def _await_progress(self) -> None:
        """Collect what finished next: by a long poll of the run's events (answered as soon as
        one of its jobs ends, so an ingest's end is seen when it happens, not up to a poll
        interval later), or, following by outcomes, after a poll interval."""
        if self._events_at is not None:
            started = time.monotonic()
            if self.collect(wait_s=self._poll_delay()):
                return
            # The queue did not answer (restarting): wait out the interval before asking again.
            time.sleep(max(0.0, self._poll_delay() - (time.monotonic() - started)))
        else:
            time.sleep(self._poll_delay())
            self.collect()

    def timed_out(self) -> bool:
        """RAYLENS_INGEST_TIMEOUT_S has passed: stop listing and waiting (incomplete)."""
        timeout = self.settings.ingest_timeout_s
        return timeout is not None and time.monotonic() - self.t0 > timeout

    def _poll_delay(self) -> float:
        # Each poll sends every pending id: poll big backlogs less often.
        return self.settings.ingest_poll_s * max(1.0, len(self.pending) / 2000)

    def collect(self, wait_s: float = 0.0) -> bool:
        """Move finished jobs out of pending, counting them (jobs created since the run
        started also give their creation -> done latency). The queue answers from memory for
        jobs it still holds, and sends back only the finished ones. Following by events, waits
        up to wait_s for the first of them. False when the queue could not be asked."""
        self._last_poll = time.monotonic()
        if self._events_at is not None:
            try:
                self._collect_events(wait_s)
            except UNAVAILABLE:
                self.bar.set_postfix_str("queue restarting", refresh=False)
                return False
            except Exception as exc:  # follow everything by outcomes from now on
                log.warning("job events unavailable (%s); following jobs by their outcomes", exc)
                self._events_at = None
        ids = list(self.pending) if self._events_at is None else list(self.foreign)
        for i in range(0, len(ids), OUTCOMES_CHUNK):
            try:
                finished: list[Outcome] = ray.get(
                    self.queue.outcomes.remote(ids[i : i + OUTCOMES_CHUNK])
                )
            except UNAVAILABLE:
                self.bar.set_postfix_str("queue restarting", refresh=False)
                return False  # the queue is being rebuilt from the store; look again next poll
            for job_id, state, code, created_at, done_at in finished:
                latency = done_at - created_at if done_at is not None else None
                self._finished(
                    job_id, state, code, latency if created_at >= self.started_at else None
                )
        self.bar.set_postfix(done=self.summary.done, failed=self.summary.failed, refresh=False)
        if time.monotonic() - self._run_written >= self.settings.run_update_s:
            self.write_run()
        return True

    def _collect_events(self, wait_s: float = 0.0, max_pages: int = 50) -> None:
        """Count this run's jobs that finished since the last read, by their events (the
        first read waits up to wait_s for one)."""
        assert self.record is not None
        for page_no in range(max_pages):
            page = ray.get(
                self.queue.events.remote(
                    self._events_at,
                    None,
                    wait_s if page_no == 0 else 0.0,
                    None,
                    ["done", "failed"],
                    self.record["id"],
                )
            )
            moved = page["last"] != self._events_at
            self._events_at = page["last"]
            for event in page["events"]:
                job_id = event["job_id"]
                created = self._created_at.get(job_id)
                latency = event["at"] - created if created is not None else None
                self._finished(job_id, event["state"], event["error_code"], latency)
            if not moved:
                return

    def _finished(self, job_id: str, state: str, code: str | None, latency: float | None) -> None:
        """A followed job ended: counted once (done, with its latency, or failed)."""
        if job_id not in self.pending:
            return
        del self.pending[job_id]
        self.foreign.pop(job_id, None)
        created = self._created_at.pop(job_id, None)
        if state == JobState.DONE.value:
            self.summary.done += 1
            self.bar.update(1)
            if latency is not None and (created is None or created >= self.started_at):
                self._latency(latency)
        else:
            self._failed(code or "internal")

    def write_run(self, final: bool = False) -> None:
        """The run's record as this ingest stands (a failed write only logs)."""
        if self.record is None:
            return
        self._run_written = time.monotonic()
        s = self.summary
        self.record.update(
            updated_at=time.time(),
            files=s.files,
            total=self.bar.total if self.bar.total is not None else (s.files if final else None),
            counts={
                "submitted": s.submitted,
                "done": s.done + s.skipped,
                "failed": s.failed,
                "skipped": s.skipped,
                "duplicates": s.duplicates,
            },
            failed_by_code=dict(s.failed_by_code),
        )
        if final:
            self.record["status"] = "complete" if s.complete else "interrupted"
        try:
            ray.get(self.queue.put_run.remote(runs.encode(self.record)), timeout=30)
        except Exception as exc:
            log.warning("run %s: progress not recorded: %s", self.record["id"], exc)

    def _failed(self, code: str) -> None:
        self.summary.failed += 1
        self._codes[code] += 1
        self.summary.failed_by_code = dict(self._codes)
        self.bar.update(1)

    def _latency(self, seconds: float) -> None:
        """Reservoir sampling: every latency of the run is equally likely to be kept."""
        self._seen_latencies += 1
        if len(self.latencies) < LATENCY_SAMPLE:
            self.latencies.append(seconds)
            return
        k = self._rng.randrange(self._seen_latencies)
        if k < LATENCY_SAMPLE:
            self.latencies[k] = seconds
