"""Worker: a Ray actor that loads OpenCLIP once and turns leased jobs into stored vectors.

Two threads pipeline the work so decoding overlaps inference: the fetcher leases a batch and
decodes it on a thread pool; the inferer embeds the previous batch, upserts its vectors in one
call and acks. A third thread extends the leases it holds. There is no event loop in this actor,
so no model call can stall one; actor methods (report, embed_texts) are served while it works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import ray

from raylens.actors.clip import ClipEmbedder
from raylens.actors.transforms import DecodedImage, decode_image
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.jobs import Job, SourceKind
from raylens.cluster.payloads import open_payload_store
from raylens.cluster.queue import Failure
from raylens.cluster.settings import Settings
from raylens.errors import (
    ErrorCode,
    IndexUnavailable,
    InputError,
    RaylensError,
    SourceMissing,
    TooLarge,
)

log = logging.getLogger("raylens.worker")
T = TypeVar("T")

# Errors that mean "the queue or index actor is restarting": wait and call again.
_RETRYABLE_RAY_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.GetTimeoutError,
    ValueError,  # ray.get_actor while the named actor is being re-created
)


@dataclass
class Batch:
    jobs: list[Job]
    decoded: list[DecodedImage | Failure]
    decode_s: float


@dataclass
class WorkerStats:
    batches: int = 0
    images: int = 0
    failed_inputs: int = 0
    retryable_failures: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0
    last_batch_size: int = 0
    last_progress_at: float = field(default_factory=time.time)


class RemoteIndex:
    """VectorIndex.upsert through the single named index actor (Qdrant local mode)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> int:
        try:
            actor = ray.get_actor(self.settings.index_actor_name, namespace=self.settings.namespace)
            return ray.get(actor.upsert.remote(list(ids), vectors, list(payloads)))
        except IndexUnavailable:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"index actor unavailable: {exc}") from exc


class Worker:
    """One model, loaded once in this process; pulls batches until stopped."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.worker_id = f"{name}:{os.getpid()}"
        self.started_at = time.time()
        threads = settings.torch_threads or max(1, round(settings.worker_num_cpus))
        self.embedder = ClipEmbedder(
            settings.clip_model,
            settings.clip_pretrained,
            device=settings.clip_device,
            precision=settings.clip_precision,
            model_config=settings.clip_model_config,
            threads=threads,
        )
        self.model_id = self.embedder.model_id
        self.payloads = open_payload_store(settings)
        self.index: VectorIndex | RemoteIndex = (
            VectorIndex(settings, self.embedder.dim)
            if settings.qdrant_url
            else RemoteIndex(settings)
        )
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._ready: queue.Queue[Batch] = queue.Queue(maxsize=max(1, settings.prefetch_batches))
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, "raylens-decode")
        overlap = settings.overlap_decode == "on" or (
            settings.overlap_decode == "auto" and self.embedder.device != "cpu"
        )
        # Without overlap, decode and inference take turns on the CPU (leasing, upserts and acks
        # still overlap); with it, the lock is never contended.
        self._cpu_turn: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if overlap else threading.Lock()
        )
        self.overlap = overlap
        self._threads = [
            threading.Thread(target=self._guard(self._fetch_loop), name="fetch", daemon=True),
            threading.Thread(target=self._guard(self._infer_loop), name="infer", daemon=True),
            threading.Thread(target=self._guard(self._heartbeat_loop), name="beat", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("worker %s ready: %s", self.worker_id, self.embedder.report())

    # ---- actor methods ----------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """What this worker loaded and how it is doing (the loaded-model report)."""
        s = self.stats
        return {
            **self.embedder.report(),
            "worker": self.name,
            "worker_id": self.worker_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "started_at": self.started_at,
            "alive_threads": [t.name for t in self._threads if t.is_alive()],
            "overlap_decode": self.overlap,
            "held_leases": len(self._held),
            "batches": s.batches,
            "images": s.images,
            "failed_inputs": s.failed_inputs,
            "retryable_failures": s.retryable_failures,
            "last_batch_size": s.last_batch_size,
            "last_progress_at": s.last_progress_at,
            "seconds": {"decode": s.decode_s, "infer": s.infer_s, "write": s.write_s},
        }

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Query path: runs beside the batch loop, never queued behind the bulk backlog."""
        return self.embedder.embed_texts(texts)

    def embed_image_bytes(self, data: bytes) -> np.ndarray:
        img = self._decode(data)
        return self.embedder.embed_images(img.pixels[None])[0]

    def stop(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Stop leasing, finish the batch in hand, give back anything not started."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout_s)
        with self._held_lock:
            left = sorted(self._held)
        if left:
            self._queue_call(lambda q: q.nack.remote(self.worker_id, left, "worker stopping"))
        self._decode_pool.shutdown(wait=False)
        return {"returned": len(left)}

    # ---- loops ----------------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    fn()
                    return
                except Exception:  # a loop must never die of one bad call; log and go on
                    log.exception(
                        "worker %s: %s loop failed; restarting it", self.name, fn.__name__
                    )
                    time.sleep(1.0)

        return run

    def _queue_call(self, make: Callable[[Any], Any], *, forever: bool = False) -> Any:
        """Call the queue actor, riding out its restarts (the store keeps the truth meanwhile)."""
        delay = 0.2
        deadline = time.monotonic() + self.settings.lease_timeout_s
        while True:
            try:
                q = ray.get_actor(self.settings.queue_actor_name, namespace=self.settings.namespace)
                return ray.get(make(q))
            except _RETRYABLE_RAY_ERRORS as exc:
                if time.monotonic() > deadline and (not forever or self._stop.is_set()):
                    raise
                log.warning("queue unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            lease_args = (self.worker_id, self.settings.max_batch_size, self.settings.lease_poll_s)
            jobs: list[Job] = self._queue_call(
                lambda q: q.lease.remote(*lease_args),  # noqa: B023 (called at once)
                forever=True,
            )
            if not jobs:
                continue
            with self._held_lock:
                self._held.update(j.id for j in jobs)
            with self._cpu_turn:
                t0 = time.perf_counter()
                decoded = list(self._decode_pool.map(self._load_and_decode, jobs))
                batch = Batch(jobs, decoded, time.perf_counter() - t0)
            while not self._stop.is_set():
                try:
                    self._ready.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _infer_loop(self) -> None:
        while not (self._stop.is_set() and self._ready.empty()):
            try:
                batch = self._ready.get(timeout=0.5)
            except queue.Empty:
                continue
            self._process(batch)

    def _heartbeat_loop(self) -> None:
        period = self.settings.lease_timeout_s / 3
        while not self._stop.wait(period):
            with self._held_lock:
                held = list(self._held)
            if held:
                try:
                    self._queue_call(lambda q: q.heartbeat.remote(self.worker_id, held))  # noqa: B023
                except Exception:
                    log.warning("heartbeat failed; leases may expire and be retried")

    # ---- one job / one batch ------------------------------------------------------------------
    def _read_source(self, job: Job) -> bytes:
        if job.source_kind is SourceKind.UPLOAD:
            return self.payloads.get(job.source)
        if job.source_kind is SourceKind.PATH:
            try:
                size = os.path.getsize(job.source)
                if size > self.settings.max_input_bytes:
                    raise TooLarge(
                        f"{job.source} has {size} bytes; limit RAYLENS_MAX_INPUT_BYTES="
                        f"{self.settings.max_input_bytes}"
                    )
                with open(job.source, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise SourceMissing(f"{job.source} no longer exists") from None
            except IsADirectoryError:
                raise SourceMissing(f"{job.source} is a folder, not a file") from None
            except PermissionError as exc:
                raise SourceMissing(f"{job.source} cannot be read: {exc}") from None
        raise SourceMissing(f"job {job.id}: source kind {job.source_kind.value} not supported yet")

    def _decode(self, data: bytes) -> DecodedImage:
        """Decode with the model's own preprocess geometry (size, resize mode, interpolation)."""
        return decode_image(
            data,
            self.embedder.image_size,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_input_bytes,
            resize_mode=self.embedder.resize_mode,
            interpolation=self.embedder.interpolation,
        )

    def _load_and_decode(self, job: Job) -> DecodedImage | Failure:
        try:
            data = self._read_source(job)
            return self._decode(data)
        except InputError as exc:
            return Failure(job.id, exc.code, exc.message)
        except RaylensError as exc:  # payload store down: try again later
            return Failure(job.id, exc.code, exc.message, retryable=True)
        except Exception as exc:  # never let one input take the worker down
            return Failure(job.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", True)

    def _embed_isolating(self, pixels: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Embed a batch; if it raises, split it in halves so one poison input fails alone
        (and an out-of-memory batch is retried in smaller pieces)."""
        try:
            return list(self.embedder.embed_images(np.stack(pixels)))
        except Exception as exc:
            if len(pixels) == 1:
                return [exc]
            mid = len(pixels) // 2
            log.warning("batch of %d failed (%s); splitting", len(pixels), exc)
            return self._embed_isolating(pixels[:mid]) + self._embed_isolating(pixels[mid:])

    def _process(self, batch: Batch) -> None:
        failures = [d for d in batch.decoded if isinstance(d, Failure)]
        good = [(j, d) for j, d in zip(batch.jobs, batch.decoded) if isinstance(d, DecodedImage)]
        done: list[tuple[str, dict[str, Any]]] = []
        with self._cpu_turn:
            t0 = time.perf_counter()
            vectors = self._embed_isolating([d.pixels for _, d in good]) if good else []
            t1 = time.perf_counter()
        ok: list[tuple[Job, DecodedImage, np.ndarray]] = []
        for (job, img), vec in zip(good, vectors):
            if isinstance(vec, Exception):
                msg = f"{type(vec).__name__}: {vec}"
                failures.append(Failure(job.id, ErrorCode.MODEL_ERROR, msg, retryable=True))
            else:
                ok.append((job, img, vec))
        if ok:
            ids = [point_id(job.sha256, self.model_id) for job, _, _ in ok]
            now = time.time()
            payloads = [
                {
                    "job_id": job.id,
                    "source": job.source,
                    "source_kind": job.source_kind.value,
                    "name": job.name,
                    "sha256": job.sha256,
                    "model_id": self.model_id,
                    "created_at": now,
                }
                for job, _, _ in ok
            ]
            try:
                self.index.upsert(ids, np.stack([v for _, _, v in ok]), payloads)
                done = [
                    (
                        job.id,
                        {
                            "model_id": self.model_id,
                            "dim": int(vec.shape[0]),
                            "point_id": pid,
                            "width": img.width,
                            "height": img.height,
                            "format": img.format,
                            "worker": self.worker_id,
                        },
                    )
                    for (job, img, vec), pid in zip(ok, ids)
                ]
            except RaylensError as exc:
                failures += [Failure(j.id, exc.code, exc.message, retryable=True) for j, _, _ in ok]
        t2 = time.perf_counter()
        self._queue_call(lambda q: q.ack.remote(self.worker_id, done, failures), forever=True)
        with self._held_lock:
            self._held.difference_update(j.id for j in batch.jobs)
        s = self.stats
        s.batches += 1
        s.images += len(done)
        s.failed_inputs += sum(1 for f in failures if not f.retryable)
        s.retryable_failures += sum(1 for f in failures if f.retryable)
        s.decode_s += batch.decode_s
        s.infer_s += t1 - t0
        s.write_s += t2 - t1
        s.last_batch_size = len(batch.jobs)
        s.last_progress_at = time.time()
