"""Ray dashboard metrics (ray.util.metrics): every raylens metric, defined in this one module.

A ray.util.metrics object must be created in the process that records it, so each definition
here is only a spec; its Ray metric is made on first use, in the recording process (the queue,
worker or supervisor actor). Recording is one call at the call site and never raises: a metric
that cannot be recorded is logged once and skipped, so metrics never break job processing.
Outside a Ray worker or driver (ray not initialised) recording does nothing.

Every node's metrics agent exports them in Prometheus format with Ray's `ray_` prefix
(`raylens_queue_depth` -> `ray_raylens_queue_depth`; a counter also gets `_total`), beside
Ray's own tags (WorkerId, NodeAddress, SessionName, ...). docs/metrics.md lists them all.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

log = logging.getLogger("raylens.metrics")

# Histogram bucket boundaries (upper bounds; Ray adds +Inf).
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
ATTEMPT_BUCKETS = [1, 2, 3, 4, 5, 7, 10, 20, 50, 100]


class _Metric:
    """The spec of one metric; its ray.util.metrics object is made lazily, per process."""

    kind = ""

    def __init__(
        self,
        name: str,
        description: str,
        tags: tuple[str, ...] = (),
        boundaries: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.description = description
        self.tags = tags
        self.boundaries = [float(b) for b in boundaries]
        self._made: Any = None
        self._pid = 0  # the process that made _made (a metric object never crosses processes)
        self._lock = threading.Lock()
        self._warned = False

    def _metric(self) -> Any:
        if self._made is None or self._pid != os.getpid():
            with self._lock:
                if self._made is None or self._pid != os.getpid():
                    from ray.util import metrics as ray_metrics

                    if self.kind == "counter":
                        made: Any = ray_metrics.Counter(self.name, self.description, self.tags)
                    elif self.kind == "gauge":
                        made = ray_metrics.Gauge(self.name, self.description, self.tags)
                    else:
                        made = ray_metrics.Histogram(
                            self.name, self.description, self.boundaries, self.tags
                        )
                    self._made, self._pid = made, os.getpid()
        return self._made

    def _record(self, method: str, value: float, tags: Mapping[str, object]) -> bool:
        """Record one value; True when it was recorded."""
        try:
            if not ray.is_initialized():
                return False
            getattr(self._metric(), method)(float(value), tags={k: str(v) for k, v in tags.items()})
            return True
        except Exception as exc:  # metrics must never break the work they describe
            if not self._warned:
                self._warned = True
                log.warning("cannot record metric %s (%s: %s)", self.name, type(exc).__name__, exc)
            return False


class Counter(_Metric):
    kind = "counter"

    def inc(self, value: float = 1.0, **tags: object) -> None:
        if value > 0:  # Ray refuses increments <= 0
            self._record("inc", value, tags)


class Gauge(_Metric):
    """A gauge whose last value per tag set is re-recorded in the background: Ray drops a gauge
    series that was not recorded for two report intervals, even in a live process."""

    kind = "gauge"

    def __init__(self, name: str, description: str, tags: tuple[str, ...] = ()) -> None:
        super().__init__(name, description, tags)
        self._last: dict[tuple[tuple[str, str], ...], float] = {}
        _GAUGES.append(self)

    def set(self, value: float, **tags: object) -> None:
        if self._record("set", value, tags):
            self._last[tuple(sorted((k, str(v)) for k, v in tags.items()))] = float(value)
            _keep_alive()

    def _refresh(self) -> None:
        for tags, value in list(self._last.items()):
            self._record("set", value, dict(tags))


_GAUGES: list[Gauge] = []
_refresher: tuple[int, threading.Thread] | None = None  # (pid, thread) of this process
_refresher_lock = threading.Lock()


def _refresh_period_s() -> float:
    """Half Ray's metrics report interval (10 s by default), between 0.5 and 5 seconds."""
    try:
        interval_ms = float(ray._config.metrics_report_interval_ms())
    except Exception:
        interval_ms = 10_000.0
    return min(5.0, max(0.5, interval_ms / 2000))


def _keep_alive() -> None:
    """Start this process's gauge refresher (a daemon thread) unless it runs."""
    global _refresher
    with _refresher_lock:
        if _refresher is None or _refresher[0] != os.getpid() or not _refresher[1].is_alive():
            thread = threading.Thread(target=_refresh_forever, name="raylens-metrics", daemon=True)
            _refresher = (os.getpid(), thread)
            thread.start()


def _refresh_forever() -> None:
    period = _refresh_period_s()
    while True:
        time.sleep(period)
        for gauge in _GAUGES:
            try:
                gauge._refresh()
            except Exception:  # the refresher never dies
                pass


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str,
        boundaries: Sequence[float],
        tags: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, description, tags, boundaries)

    def observe(self, value: float, **tags: object) -> None:
        self._record("observe", value, tags)


# ---- queue actor ---------------------------------------------------------------------------
QUEUE_DEPTH = Gauge(
    "raylens_queue_depth",
    "Jobs waiting in the queue (not leased), per priority lane.",
    ("lane",),
)
QUEUE_OLDEST_AGE = Gauge(
    "raylens_queue_oldest_age_seconds",
    "Seconds the job at the head of the lane (the next one leased; normally the oldest) has "
    "waited since it entered the queue (or re-entered it after a failed attempt); 0 when the "
    "lane is empty.",
    ("lane",),
)
JOBS = Gauge(
    "raylens_jobs",
    "Jobs per state: queued and running as the queue actor holds them; done and failed from "
    "the job store (counted at each ack, re-read from the store every minute).",
    ("state",),
)
JOBS_FINISHED = Counter(
    "raylens_jobs_finished",
    "Jobs that reached a terminal state (since the queue actor started), by outcome (done, "
    "failed) and error code (`none` when done; `dead_letter` after too many attempts).",
    ("outcome", "code"),
)
JOBS_RETRIED = Counter(
    "raylens_jobs_retried",
    "Failed attempts that put their job back in the queue (lease expired, worker stopped, "
    "transient error), by the attempt's error code.",
    ("code",),
)
JOB_ATTEMPTS = Histogram(
    "raylens_job_attempts",
    "Attempts a job took, observed when it finishes, by outcome (done, failed).",
    ATTEMPT_BUCKETS,
    ("outcome",),
)

# ---- worker actors ---------------------------------------------------------------------------
BATCH_SIZE = Histogram(
    "raylens_batch_size",
    "Jobs in one batch a worker leased and processed.",
    BATCH_SIZE_BUCKETS,
    ("worker",),
)
BATCH_STAGE_SECONDS = Histogram(
    "raylens_batch_stage_seconds",
    "Seconds one batch spent in a stage: decode (read and decode its inputs on the thread "
    "pool), infer (OpenCLIP image embedding), faces (face detection and embedding), write "
    "(Qdrant upserts). A stage a batch did not need is not observed.",
    SECONDS_BUCKETS,
    ("worker", "stage"),
)
MODEL_LOAD_SECONDS = Gauge(
    "raylens_model_load_seconds",
    "Seconds the worker took to load a model in its own process, by model id (the OpenCLIP "
    "model without its warm-up, and the face model). Set once per worker process.",
    ("worker", "model"),
)
WORKER_MEMORY_BYTES = Gauge(
    "raylens_worker_memory_bytes",
    "Memory in use by a worker. device=cuda: torch.cuda.memory_allocated() (bytes of tensors "
    "torch allocated on the GPU, not its cache); device=mps: "
    "torch.mps.current_allocated_memory(); device=cpu: the worker process's resident set "
    "size (RSS). Updated after each batch.",
    ("worker", "device"),
)

# ---- supervisor actor ----------------------------------------------------------------------
WORKERS = Gauge(
    "raylens_workers",
    "Worker actors at the supervisor's last check, by state: declared (named worker actors in "
    "the namespace), ready (answered the check, so its model is loaded), stalled (holding "
    "jobs without progress past RAYLENS_WORKER_STALL_TIMEOUT_S; it is being replaced).",
    ("state",),
)
WORKERS_REPLACED = Counter(
    "raylens_workers_replaced",
    "Workers the supervisor killed for Ray to restart (stalled, or not answering).",
)

ALL: tuple[_Metric, ...] = (
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    JOBS,
    JOBS_FINISHED,
    JOBS_RETRIED,
    JOB_ATTEMPTS,
    BATCH_SIZE,
    BATCH_STAGE_SECONDS,
    MODEL_LOAD_SECONDS,
    WORKER_MEMORY_BYTES,
    WORKERS,
    WORKERS_REPLACED,
)


# ---- recording helpers (one line at each call site) ----------------------------------------
def record_finished(outcome: Mapping[str, Sequence[Any]], codes: Mapping[str, str]) -> None:
    """One ack's jobs: done and failed ones count as finished (with their attempts);
    re-queued ones as retried. `codes`: job id -> the error code of the failed attempt."""
    finished: collections.Counter[tuple[str, str]] = collections.Counter()
    for job in outcome.get("done", ()):
        finished["done", "none"] += 1
        JOB_ATTEMPTS.observe(job.attempts, outcome="done")
    for job in outcome.get("failed", ()):
        code = job.error_code.value if job.error_code is not None else "internal"
        finished["failed", code] += 1
        JOB_ATTEMPTS.observe(job.attempts, outcome="failed")
    for (result, code), n in finished.items():
        JOBS_FINISHED.inc(n, outcome=result, code=code)
    retried = collections.Counter(
        codes.get(job.id, "internal") for job in outcome.get("requeued", ())
    )
    for code, n in retried.items():
        JOBS_RETRIED.inc(n, code=code)


def record_batch(worker: str, size: int, **stage_seconds: float | None) -> None:
    """One processed batch: its size and the seconds of each stage it went through."""
    BATCH_SIZE.observe(size, worker=worker)
    for stage, seconds in stage_seconds.items():
        if seconds is not None:
            BATCH_STAGE_SECONDS.observe(seconds, worker=worker, stage=stage)


def record_memory(worker: str, device: str) -> None:
    """The worker's memory in use on its device (see WORKER_MEMORY_BYTES)."""
    try:
        used = memory_in_use(device)
    except Exception:
        return
    if used is not None:
        WORKER_MEMORY_BYTES.set(used, worker=worker, device=device)


def memory_in_use(device: str) -> int | None:
    """Bytes allocated by torch on cuda/mps; on cpu this process's RSS (None if unknown)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated())
    if device == "mps":
        import torch

        return int(torch.mps.current_allocated_memory())
    return process_rss()


def process_rss() -> int | None:
    """This process's resident set size in bytes (Linux: /proc; elsewhere: peak RSS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except Exception:
        return None


def record_workers(reports: Sequence[object], stall_timeout_s: float) -> None:
    """The supervisor's view of the workers: one answer (a report dict, or an exception) each."""
    answered = [r for r in reports if isinstance(r, dict)]
    stalled = sum(1 for r in answered if float(r.get("stalled_s", 0.0)) > stall_timeout_s)
    WORKERS.set(len(reports), state="declared")
    WORKERS.set(len(answered), state="ready")
    WORKERS.set(stalled, state="stalled")
