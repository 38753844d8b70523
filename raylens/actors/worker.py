"""Worker: a Ray actor that loads OpenCLIP once and turns leased jobs into stored vectors.

A thin shell over raylens.cluster.pipeline.BatchPipeline (the read -> decode -> embed -> faces ->
write work, testable without Ray). Three threads pipeline the work: the fetcher leases a batch
and decodes it on a thread pool; the inferer runs the model on the previous batch; the writer
upserts the batch before that (one call per collection) and acks it, so the model never waits
for a round trip to the index or the queue. A fourth thread extends the leases it holds. There
is no event loop in this actor, so no model call can stall one; actor methods (report,
embed_texts) are served while it works.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from raylens.actors import metrics
from raylens.actors.handles import Backoff, NamedActor, Pause, call_with_retry
from raylens.cluster import model_setup
from raylens.cluster.index import VectorIndex
from raylens.cluster.jobs import Failure, Job
from raylens.cluster.lease_size import LeaseSize
from raylens.cluster.payloads import open_payload_store
from raylens.cluster.pipeline import Batch, BatchOutcome, BatchPipeline, Computed, pooled_map
from raylens.cluster.settings import Settings
from raylens.errors import (
    ErrorCode,
    IndexUnavailable,
    ModelLoadError,
    RaylensError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from raylens.models.clip import ClipEmbedder
    from raylens.models.faces import FaceBackend

# torch and open_clip are imported where the model is loaded and used, not at the top: every
# process that holds a worker handle (the supervisor, the Serve replica, the CLI) loads this
# module with the handle, and would otherwise spend seconds of CPU importing them.

log = logging.getLogger("raylens.worker")


@dataclass
class WorkerStats:
    batches: int = 0
    images: int = 0
    failed_inputs: int = 0
    retryable_failures: int = 0
    infra_released: int = 0  # jobs given back unstarted because a dependency was down
    faces: int = 0
    frames: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    faces_s: float = 0.0
    write_s: float = 0.0
    ack_s: float = 0.0  # the writer's wait for the queue to record a batch's results
    last_batch_size: int = 0
    last_progress_at: float = field(default_factory=time.time)


def lease_tokens(batch: Batch) -> dict[str, int]:
    """The fencing token of each job's lease: its lease count as leased (QueueRules)."""
    return {j.id: j.lease_token for j in batch.jobs}


class RemoteIndex:
    """VectorIndex.upsert through the single named index actor (the embedded engine)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actor = NamedActor(settings.index_actor_name, settings.namespace)

    def _call(self, make: Callable[[Any], Any], **kw: Any) -> Any:
        """One call of the index actor. Its own errors come back as they are (a collection of
        another model is a SettingsError, not an outage); the actor unreachable is
        IndexUnavailable."""
        try:
            return self.actor.call(make, **kw)
        except RaylensError:  # Ray raises a remote one as an instance of it
            raise
        except Exception as exc:
            raise IndexUnavailable(f"index actor unavailable: {exc}") from exc

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
        collection: str | None = None,
    ) -> int:
        n: int = self._call(
            lambda a: a.upsert.remote(list(ids), vectors, list(payloads), collection)
        )
        return n

    def delete_content(self, sha256s: Sequence[str]) -> dict[str, int]:
        mine = [self.settings.qdrant_collection]  # this worker's model writes only here
        out: dict[str, int] = self._call(lambda a: a.delete_content.remote(list(sha256s), mine))
        return out

    def probe(self) -> None:
        """Raise IndexUnavailable unless the index actor serves a call (an empty upsert: no
        write, whatever the collections hold)."""
        try:
            empty = np.zeros((0, 1), dtype=np.float32)
            self.actor.call(
                lambda a: a.upsert.remote([], empty, []), timeout=self.settings.infra_backoff_max_s
            )
        except Exception as exc:
            raise IndexUnavailable(f"index actor unavailable: {exc}") from exc


class ServerIndex:
    """This worker's own client of a Qdrant server (RAYLENS_QDRANT_URL), opened on first use
    when the server is down at start: a worker that failed to start would be re-created, and
    reload its model, every supervisor round; this one starts and waits (invariant 10). A wrong
    collection size still fails the start (SettingsError: a setting to fix, not an outage)."""

    def __init__(self, settings: Settings, dim: int) -> None:
        self.settings = settings
        self.dim = dim
        self._index: VectorIndex | None = None
        try:
            self._open()
        except IndexUnavailable as exc:
            log.warning("Qdrant unavailable at start (%s); the worker starts and waits", exc)

    def _open(self) -> VectorIndex:
        if self._index is None:
            self._index = VectorIndex(self.settings, self.dim)  # reads (or makes) the collection
        return self._index

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
        collection: str | None = None,
    ) -> int:
        return self._open().upsert(ids, vectors, payloads, collection)

    def delete_content(self, sha256s: Sequence[str]) -> dict[str, int]:
        return self._open().delete_content(sha256s, [self.settings.qdrant_collection])

    def probe(self) -> None:
        """Raise IndexUnavailable unless a fresh client reads (or makes) the collection."""
        old, self._index = self._index, None
        if old is not None:
            try:
                old.close()
            except Exception:  # a client of a server that went away: nothing to keep
                log.debug("closing the old Qdrant client failed", exc_info=True)
        self._open()


class Worker:
    """One model, loaded once in this process; pulls batches until stopped."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.worker_id = f"{name}:{os.getpid()}"
        self.started_at = time.time()
        self.embedder: ClipEmbedder = model_setup.build_embedder(settings)
        self.model_id = self.embedder.model_id
        self.faces: FaceBackend | None = model_setup.build_face_backend(settings)  # loaded once
        self.payloads = open_payload_store(settings)
        self._queue = NamedActor(settings.queue_actor_name, settings.namespace)
        # Neither checks the index here: a worker starts (its model loaded once) while the
        # index is down, and waits for it like for any outage.
        self.index: ServerIndex | RemoteIndex = (
            ServerIndex(settings, self.embedder.dim)
            if settings.qdrant_url
            else RemoteIndex(settings)
        )
        self.pipeline = BatchPipeline(
            settings,
            self.embedder,
            self.payloads,
            self.index,
            faces=self.faces,
            worker_name=name,
            worker_id=self.worker_id,
            video_limits=model_setup.video_limits(settings),
            progress=self._progressed,
        )
        self.overlap = self.pipeline.overlap
        self.decode_device = self.pipeline.decode_device
        self.stats = WorkerStats()
        self.lease_size = LeaseSize(settings)  # grows with this worker's measured speed
        self._stop = threading.Event()
        self._draining = threading.Event()  # set: lease nothing more (a scale-down)
        self._held: set[str] = set()
        self._leases = 0  # leased batches not yet released (acked or given back)
        self._held_lock = threading.Lock()
        self._held_changed = threading.Condition(self._held_lock)
        # Index or store down: leasing pauses, probed with backoff (invariant 10).
        cap = settings.infra_backoff_max_s
        self.pause = Pause(Backoff(first_s=min(settings.infra_backoff_first_s, cap), cap_s=cap))
        self._ready: queue.Queue[Batch] = queue.Queue(maxsize=max(1, settings.prefetch_batches))
        # The model's output, handed to the writer thread (upsert and ack).
        self._computed: queue.Queue[tuple[Batch, Computed]] = queue.Queue(maxsize=1)
        self._infer_done = threading.Event()  # the infer loop has ended (after stop())
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, "raylens-decode")
        self._decode_map = pooled_map(self._decode_pool, settings.decode_threads)
        self._threads = [
            threading.Thread(target=self._guard(self._fetch_loop), name="fetch", daemon=True),
            threading.Thread(target=self._guard(self._infer_loop), name="infer", daemon=True),
            threading.Thread(target=self._guard(self._write_loop), name="write", daemon=True),
            threading.Thread(target=self._guard(self._heartbeat_loop), name="beat", daemon=True),
        ]
        for t in self._threads:
            t.start()
        metrics.MODEL_LOAD_SECONDS.set(self.embedder.load_seconds, worker=name, model=self.model_id)
        if self.faces is not None:
            metrics.MODEL_LOAD_SECONDS.set(
                self.faces.load_seconds, worker=name, model=self.faces.model_id
            )
        metrics.record_memory(name, self.embedder.device)
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
            "decode_device": self.decode_device,
            "held_leases": len(self._held),
            "draining": self._draining.is_set(),
            "batches": s.batches,
            "images": s.images,
            "failed_inputs": s.failed_inputs,
            "retryable_failures": s.retryable_failures,
            "infra_released": s.infra_released,
            "paused": self._paused_reason(),
            "paused_s": round(self.pause.paused_s, 3),
            "faces": s.faces,
            "frames": s.frames,
            "face_model": self.faces.report() if self.faces else None,
            "last_batch_size": s.last_batch_size,
            "next_lease_jobs": self.lease_size.next(),
            "last_progress_at": s.last_progress_at,
            "stalled_s": round(self.stalled_s(), 3),
            "seconds": {
                "decode": s.decode_s,
                "infer": s.infer_s,
                "faces": s.faces_s,
                "write": s.write_s,
                "ack": s.ack_s,
            },
        }

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Query path: runs beside the batch loop, never queued behind the bulk backlog."""
        return self.embedder.embed_texts(texts)

    def embed_image_bytes(self, data: bytes) -> np.ndarray:
        img = self.pipeline.reader.decode(data)
        return self.embedder.embed_images(img.pixels[None])[0]

    def embed_query(self, text: str | None = None, image: bytes | None = None) -> dict[str, Any]:
        """One query vector and the model id that made it: while workers roll over to a new
        model, the ingress searches the collection of the model that embedded each query."""
        if text is not None:
            vector = self.embed_texts([text])[0]
        elif image is not None:
            vector = self.embed_image_bytes(image)
        else:
            raise ValueError("embed_query needs a text or an image")
        return {"vector": vector, "model_id": self.model_id}

    def faces_in_bytes(self, data: bytes) -> list[dict[str, Any]]:
        """Query path: the faces of one image, largest first, each with its vector."""
        if self.faces is None:
            raise ModelLoadError("face models are off on this worker (RAYLENS_FACES_ENABLED)")
        img = self.pipeline.reader.decode(data, keep_side=self.settings.face_max_side)
        assert img.full is not None
        found = self.faces.faces([img.full], [img.full_scale])[0]
        return [{**f.summary(), "face_index": i, "vector": f.vector} for i, f in enumerate(found)]

    def drain(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Lease nothing more, finish every job held, then stop: a scale-down fails no job and
        costs none an attempt (only jobs still held after timeout_s are given back)."""
        self._draining.set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            with self._held_lock:
                if not self._held:
                    break
            time.sleep(0.05)
        out: dict[str, Any] = dict(self.stop(timeout_s=max(1.0, timeout_s / 10)))
        out["drain_s"] = round(time.monotonic() - t0, 3)
        return out

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
        return call_with_retry(
            lambda: self._queue.call(make),
            what="queue",
            deadline_s=self.settings.lease_timeout_s,
            keep_going=lambda: forever and not self._stop.is_set(),
        )

    def _fetch_loop(self) -> None:
        while not (self._stop.is_set() or self._draining.is_set()):
            if self.pause.down is not None:  # index or store down: lease nothing until it is back
                self.pause.wait(self._stop.wait)
                continue
            # Lease the next batch only when it can go straight on: a worker holds at most
            # RAYLENS_PREFETCH_BATCHES + 2 leases (decoded or being decoded, one in the model,
            # one being written), and so a killed worker has at most that much to redo.
            self._wait_held(self._room_for_next)
            if self._stop.is_set() or self._draining.is_set():
                break
            jobs = self._lease()
            if not jobs:
                continue
            ids = {j.id for j in jobs}
            # A suspect job (an earlier attempt died with its worker) runs with nothing else
            # in flight in this process: whatever it does, it does alone (invariant 5).
            alone = any(j.suspect for j in jobs)
            with self._held_lock:
                self._held.update(ids)
                self._leases += 1
            if alone:
                self._wait_held(lambda: self._held <= ids)  # noqa: B023 (called at once)
            self.stats.last_progress_at = time.time()  # a new batch: the stall clock restarts
            batch = self.pipeline.decode_batch(jobs, self._decode_map)
            self.stats.last_progress_at = time.time()
            while not self._stop.is_set():
                try:
                    self._ready.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if alone:
                self._wait_held(lambda: not (self._held & ids))  # noqa: B023 (called at once)

    def _lease(self) -> list[Job]:
        """One lease call. While the job store is down (the queue answers StoreUnavailable)
        it is retried with backoff: nothing is leased, so no job pays for the outage."""
        lease_args = (self.worker_id, self.lease_size.next(), self.settings.lease_poll_s)
        cap = self.settings.infra_backoff_max_s
        jobs: list[Job] = call_with_retry(
            lambda: self._queue_call(lambda q: q.lease.remote(*lease_args), forever=True),
            what="lease",
            keep_going=lambda: not (self._stop.is_set() or self._draining.is_set()),
            backoff=Backoff(first_s=min(self.settings.infra_backoff_first_s, cap), cap_s=cap),
            retry_on=(StoreUnavailable,),
            on_wait=lambda _e, d: log.warning("job store unavailable; leasing again in %.1fs", d),
        )
        return jobs

    def _wait_held(self, done: Callable[[], bool]) -> None:
        """Wait (holding the held-ids lock between checks) until done() or stop()."""
        with self._held_changed:
            while not done() and not self._stop.is_set():
                self._held_changed.wait(timeout=0.5)

    def _room_for_next(self) -> bool:
        """Whether the fetch loop may lease now (called holding the held-ids lock). With
        prefetch 0, only when nothing is held (lease, decode, model and write of one lease take
        turns with the next); otherwise when fewer than prefetch + 2 leases are held and the
        ready queue has a free slot for what it leases. The infer loop notifies on every take,
        _release_held on every release."""
        prefetch = self.settings.prefetch_batches
        if prefetch == 0:
            return not self._held
        return self._leases < prefetch + 2 and self._ready.qsize() < self._ready.maxsize

    def _paused_reason(self) -> str | None:
        down = self.pause.down
        return None if down is None else f"{down[0].value}: {down[1]}"

    def _probe_for(self, code: ErrorCode) -> Callable[[], object]:
        """How to ask whether the dependency behind an infrastructure failure is back."""
        if code is ErrorCode.INDEX_UNAVAILABLE:
            return self.index.probe
        return lambda: self.payloads.exists("0" * 64)  # a payload store read

    def _infer_loop(self) -> None:
        try:
            while not (self._stop.is_set() and self._ready.empty()):
                try:
                    batch = self._ready.get(timeout=0.5)
                except queue.Empty:
                    continue
                with self._held_changed:
                    self._held_changed.notify_all()  # a ready slot is free: the next may go
                computed = self._compute(batch)
                if computed is not None:
                    self._computed.put((batch, computed))  # the writer always drains it
        finally:
            if self._stop.is_set():  # not restarted by _guard: the writer may finish
                self._infer_done.set()

    def _write_loop(self) -> None:
        while not (self._infer_done.is_set() and self._computed.empty()):
            try:
                batch, computed = self._computed.get(timeout=0.5)
            except queue.Empty:
                continue
            self._write(batch, computed)

    def _progressed(self) -> None:
        """A chunk of a batch is done (frames decoded, embeddings, face finds): the stall
        clock restarts, so a long video is not taken for a hung worker (issue 14, item 5)."""
        self.stats.last_progress_at = time.time()

    def stalled_s(self) -> float:
        """Seconds without progress while holding leases (0 when idle or moving)."""
        with self._held_lock:
            holding = bool(self._held)
        return max(0.0, time.time() - self.stats.last_progress_at) if holding else 0.0

    def _heartbeat_loop(self) -> None:
        period = self.settings.lease_timeout_s / 3
        while not self._stop.wait(period):
            with self._held_lock:
                held = list(self._held)
            if held and self.stalled_s() > self.settings.worker_stall_timeout_s:
                # No progress: stop extending the leases so they expire and are retried even
                # if nobody replaces this worker.
                log.warning("worker %s stalled; not extending its leases", self.worker_id)
                continue
            if held:
                try:
                    self._queue_call(lambda q: q.heartbeat.remote(self.worker_id, held))  # noqa: B023
                except Exception:
                    log.warning("heartbeat failed; leases may expire and be retried")

    # ---- one batch ----------------------------------------------------------------------------
    def _process(self, batch: Batch) -> None:
        """Compute and write one batch in this thread (tests; the loops split the two)."""
        computed = self._compute(batch)
        if computed is not None:
            self._write(batch, computed)

    def _compute(self, batch: Batch) -> Computed | None:
        """The model's part of a batch; None when the batch was given back.

        While paused (index or store down) a batch is given back unstarted, acked as an
        infrastructure failure so the queue gives its attempts back (invariant 10)."""
        down = self.pause.down
        if down is not None:
            code, message = down
            back = [
                Failure(j.id, code, f"not started: {message}", retryable=True, infra=True)
                for j in batch.jobs
            ]
            self._ack([], back, lease_tokens(batch))
            self._release_held(batch)
            self.stats.infra_released += len(back)
            self.stats.last_progress_at = time.time()
            return None
        return self.pipeline.compute(batch)

    def _write(self, batch: Batch, computed: Computed) -> None:
        """Upsert what the model made, ack the batch's results and failures, record its cost.

        Infrastructure failures (index or store down) are acked as such, so the queue gives
        their attempts back, and pause leasing until a probe of that dependency answers."""
        out = self.pipeline.write(computed)
        # The slowest stage bounds this worker: the upsert overlaps the model, and decoding
        # overlaps it too unless they take turns on the CPU.
        compute_s = computed.infer_s + computed.faces_s
        model_s = max(batch.decode_s, compute_s) if self.overlap else batch.decode_s + compute_s
        self.lease_size.observe(len(batch.jobs), max(model_s, out.write_s))
        t0 = time.perf_counter()
        purge = self._ack(out.done, out.failures, lease_tokens(batch)).get("purge")
        self.stats.ack_s += time.perf_counter() - t0
        if purge:
            self._purge(purge)
        self._release_held(batch)
        infra = next((f for f in out.failures if f.infra), None)
        if infra is not None:
            self.pause.trip(infra.code, infra.message, self._probe_for(infra.code))
        elif out.done:
            self.pause.healthy()  # the dependencies answered: a later outage starts short
        self._record(batch, out)

    def _release_held(self, batch: Batch) -> None:
        with self._held_changed:
            self._held.difference_update(j.id for j in batch.jobs)
            self._leases -= 1
            self._held_changed.notify_all()

    def _purge(self, sha256s: list[str]) -> None:
        """Jobs of this batch were deleted while it ran, after the delete removed their
        points: remove the points this batch stored for them."""
        try:
            removed = self.index.delete_content(sha256s)
            log.info("removed the points of %d deleted content(s): %s", len(sha256s), removed)
        except Exception:  # the points stay until the content is deleted again
            log.warning(
                "could not remove the points of %d content(s) deleted while they ran; "
                "`raylens delete --sha256` them again: %s",
                len(sha256s),
                " ".join(sha256s),
                exc_info=True,
            )

    def _ack(self, done: Any, failures: Any, tokens: dict[str, int]) -> dict[str, Any]:
        """Ack a batch, retried with backoff until it lands.

        A StoreUnavailable from the queue means its store write failed and it changed nothing
        (invariant 11), so the same ack is sent again: the tokens make a repeat harmless. The
        ids stay held meanwhile, and the wait counts as progress, so heartbeats keep the leases
        alive through a store outage (an infrastructure fault is no job's attempt, invariant
        10). After stop(), it gives up once a lease period has passed (stop nacks what is held).
        """
        stopped_at: list[float] = []

        def keep_going() -> bool:
            if not self._stop.is_set():
                return True
            stopped_at[:1] = stopped_at[:1] or [time.monotonic()]
            return time.monotonic() - stopped_at[0] <= self.settings.lease_timeout_s

        def waiting(_exc: BaseException, delay: float) -> None:
            log.warning("ack not recorded (job store unavailable); retrying in %.1fs", delay)
            self.stats.last_progress_at = time.time()

        # Ray raises a remote StoreUnavailable as an instance of it (as_instanceof_cause).
        answer: dict[str, Any] | None = call_with_retry(
            lambda: self._queue_call(
                lambda q: q.ack.remote(self.worker_id, done, failures, tokens), forever=True
            ),
            what="ack",
            keep_going=keep_going,
            backoff=Backoff(first_s=0.5, cap_s=10.0),
            retry_on=(StoreUnavailable,),
            on_wait=waiting,
            sleep=time.sleep,
        )
        return answer or {}

    def _record(self, batch: Batch, out: BatchOutcome) -> None:
        s = self.stats
        s.batches += 1
        s.images += len(out.done)
        s.faces += out.faces
        s.frames += out.frames
        s.failed_inputs += sum(1 for f in out.failures if not f.retryable)
        s.retryable_failures += sum(1 for f in out.failures if f.retryable)
        s.decode_s += batch.decode_s
        s.infer_s += out.infer_s
        s.faces_s += out.faces_s
        s.write_s += out.write_s
        s.last_batch_size = len(batch.jobs)
        s.last_progress_at = time.time()
        metrics.record_batch(
            self.name, len(batch.jobs), decode=batch.decode_s, **out.stage_seconds()
        )
        metrics.record_memory(self.name, self.embedder.device)
