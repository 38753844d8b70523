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
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import ray

from raylens.actors import metrics
from raylens.actors.handles import call_with_retry, lookup
from raylens.actors.queue import Failure
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.jobs import Job, Pipeline, SourceKind
from raylens.cluster.payloads import open_payload_store
from raylens.cluster.settings import Settings
from raylens.errors import (
    ErrorCode,
    IndexUnavailable,
    InputError,
    ModelLoadError,
    RaylensError,
    SourceMissing,
    TooLarge,
)
from raylens.media.transforms import DecodedImage, decode_image, prepare_rgb, sniff_format
from raylens.media.video import VideoLimits, sample_frames, sniff_video
from raylens.models.faces import Face, FaceBackend, FaceOptions, load_face_backend

if TYPE_CHECKING:
    from raylens.models.clip import ClipEmbedder

# torch and open_clip are imported where the model is loaded and used, not at the top: every
# process that holds a worker handle (the supervisor, the Serve replica, the CLI) loads this
# module with the handle, and would otherwise spend seconds of CPU importing them.

log = logging.getLogger("raylens.worker")
T = TypeVar("T")


@dataclass
class Item:
    """One picture of a job: the image itself, or one sampled frame of a video."""

    image: DecodedImage
    part: str  # "image" or "frame:<n>": part of the point id
    meta: dict[str, Any] = field(default_factory=dict)  # frame number and timestamp


@dataclass
class Decoded:
    items: list[Item]
    video: dict[str, Any] | None = None  # what the video decoder reported


@dataclass
class Batch:
    jobs: list[Job]
    decoded: list[Decoded | Failure]
    decode_s: float


def decode_device_for(setting: str, model_device: str) -> str:
    """RAYLENS_DECODE_DEVICE resolved for a worker whose model runs on model_device."""
    if setting == "auto":
        return "cuda" if model_device == "cuda" else "cpu"
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "RAYLENS_DECODE_DEVICE=cuda but this worker has no CUDA device; use cpu or auto"
        )
    return setting


@dataclass
class WorkerStats:
    batches: int = 0
    images: int = 0
    failed_inputs: int = 0
    retryable_failures: int = 0
    faces: int = 0
    frames: int = 0
    decode_s: float = 0.0
    infer_s: float = 0.0
    faces_s: float = 0.0
    write_s: float = 0.0
    last_batch_size: int = 0
    last_progress_at: float = field(default_factory=time.time)


def _upright(rgb: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """The stored video size, turned like the frame when rotation metadata turned it."""
    turned = (rgb.shape[1] > rgb.shape[0]) != (width > height) and width != height
    return (height, width) if turned else (width, height)


class RemoteIndex:
    """VectorIndex.upsert through the single named index actor (Qdrant local mode)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
        collection: str | None = None,
    ) -> int:
        try:
            actor = lookup(self.settings.index_actor_name, self.settings.namespace)
            return ray.get(actor.upsert.remote(list(ids), vectors, list(payloads), collection))
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
        from raylens.models.clip import ClipEmbedder

        threads = settings.torch_threads or max(1, round(settings.worker_num_cpus))
        self.embedder: ClipEmbedder = ClipEmbedder(
            settings.clip_model,
            settings.clip_pretrained,
            device=settings.clip_device,
            precision=settings.clip_precision,
            model_config=settings.clip_model_config,
            threads=threads,
        )
        self.model_id = self.embedder.model_id
        self.faces: FaceBackend | None = None
        if settings.faces_enabled:  # loaded once, like the embedding model
            self.faces = load_face_backend(
                FaceOptions(
                    detector=settings.face_detector,
                    upsample=settings.face_upsample,
                    min_size_px=settings.face_min_size_px,
                    max_faces=settings.face_max_faces,
                    min_score=settings.face_min_score,
                    jitters=settings.face_jitters,
                )
            )
        self.video_limits = VideoLimits(
            every_s=settings.video_every_s,
            scene_threshold=settings.video_scene_threshold,
            max_duration_s=settings.video_max_duration_s,
            max_frames=settings.video_max_frames,
            max_pixels=settings.video_max_pixels,
        )
        self.payloads = open_payload_store(settings)
        self.index: VectorIndex | RemoteIndex = (
            VectorIndex(settings, self.embedder.dim)
            if settings.qdrant_url
            else RemoteIndex(settings)
        )
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._draining = threading.Event()  # set: lease nothing more (a scale-down)
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
        self.decode_device = decode_device_for(settings.decode_device, self.embedder.device)
        self._threads = [
            threading.Thread(target=self._guard(self._fetch_loop), name="fetch", daemon=True),
            threading.Thread(target=self._guard(self._infer_loop), name="infer", daemon=True),
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
            "faces": s.faces,
            "frames": s.frames,
            "face_model": self.faces.report() if self.faces else None,
            "last_batch_size": s.last_batch_size,
            "last_progress_at": s.last_progress_at,
            "stalled_s": round(self.stalled_s(), 3),
            "seconds": {
                "decode": s.decode_s,
                "infer": s.infer_s,
                "faces": s.faces_s,
                "write": s.write_s,
            },
        }

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Query path: runs beside the batch loop, never queued behind the bulk backlog."""
        return self.embedder.embed_texts(texts)

    def embed_image_bytes(self, data: bytes) -> np.ndarray:
        img = self._decode(data)
        return self.embedder.embed_images(img.pixels[None])[0]

    def faces_in_bytes(self, data: bytes) -> list[dict[str, Any]]:
        """Query path: the faces of one image, largest first, each with its vector."""
        if self.faces is None:
            raise ModelLoadError("face models are off on this worker (RAYLENS_FACES_ENABLED)")
        img = self._decode(data, keep_side=self.settings.face_max_side)
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
        name, ns = self.settings.queue_actor_name, self.settings.namespace
        return call_with_retry(
            lambda: ray.get(make(lookup(name, ns))),
            what="queue",
            deadline_s=self.settings.lease_timeout_s,
            keep_going=lambda: forever and not self._stop.is_set(),
        )

    def _fetch_loop(self) -> None:
        while not (self._stop.is_set() or self._draining.is_set()):
            lease_args = (self.worker_id, self.settings.max_batch_size, self.settings.lease_poll_s)
            jobs: list[Job] = self._queue_call(
                lambda q: q.lease.remote(*lease_args),  # noqa: B023 (called at once)
                forever=True,
            )
            if not jobs:
                continue
            with self._held_lock:
                self._held.update(j.id for j in jobs)
            self.stats.last_progress_at = time.time()  # a new batch: the stall clock restarts
            with self._cpu_turn:
                t0 = time.perf_counter()
                decoded = list(self._decode_pool.map(self._load_and_decode, jobs))
                batch = Batch(jobs, decoded, time.perf_counter() - t0)
            self.stats.last_progress_at = time.time()
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

    # ---- one job / one batch ------------------------------------------------------------------
    def _read_source(self, job: Job) -> bytes | str:
        """Image bytes; for a video file on a path, the path (the decoder streams it)."""
        if job.source_kind is SourceKind.UPLOAD:
            return self.payloads.get(job.source)
        if job.source_kind is SourceKind.PATH:
            try:
                size = os.path.getsize(job.source)
                with open(job.source, "rb") as f:
                    head = f.read(64)
                    if sniff_video(head) is not None:
                        if size > self.settings.max_video_bytes:
                            raise TooLarge(
                                f"{job.source} has {size} bytes; limit "
                                f"RAYLENS_MAX_VIDEO_BYTES={self.settings.max_video_bytes}"
                            )
                        return job.source
                    if size > self.settings.max_input_bytes:
                        raise TooLarge(
                            f"{job.source} has {size} bytes; limit RAYLENS_MAX_INPUT_BYTES="
                            f"{self.settings.max_input_bytes}"
                        )
                    return head + f.read()
            except FileNotFoundError:
                raise SourceMissing(f"{job.source} no longer exists") from None
            except IsADirectoryError:
                raise SourceMissing(f"{job.source} is a folder, not a file") from None
            except PermissionError as exc:
                raise SourceMissing(f"{job.source} cannot be read: {exc}") from None
        raise SourceMissing(f"job {job.id}: source kind {job.source_kind.value} not supported yet")

    def _decode(self, data: bytes, keep_side: int | None = None) -> DecodedImage:
        """Decode with the model's own preprocess geometry (size, resize mode, interpolation)."""
        max_bytes = self.settings.max_input_bytes
        return decode_image(
            data,
            self.embedder.image_size,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=max_bytes,
            resize_mode=self.embedder.resize_mode,
            interpolation=self.embedder.interpolation,
            keep_side=keep_side,
        )

    def _wants_faces(self, job: Job) -> bool:
        return self.faces is not None and job.pipeline.finds_faces

    def _decode_job(self, job: Job) -> Decoded:
        source = self._read_source(job)
        keep = self.settings.face_max_side if self._wants_faces(job) else None
        fmt = None if isinstance(source, str) else sniff_format(source)
        if isinstance(source, str) or (fmt is None and sniff_video(source)):
            return self._decode_video(source, keep)
        if self.decode_device != "cpu" and keep is None and fmt == "jpeg":
            return Decoded([Item(self._decode_on_device(source), "image")])
        return Decoded([Item(self._decode(source, keep), "image")])

    def _decode_on_device(self, data: bytes) -> DecodedImage:
        from raylens.media.device_decode import decode_jpeg_on_device

        return decode_jpeg_on_device(
            data,
            self.embedder.image_size,
            self.decode_device,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_input_bytes,
            resize_mode=self.embedder.resize_mode,
            interpolation=self.embedder.interpolation,
        )

    def _decode_video(self, source: bytes | str, keep_side: int | None) -> Decoded:
        if isinstance(source, bytes) and len(source) > self.settings.max_video_bytes:
            raise TooLarge(
                f"video has {len(source)} bytes; limit "
                f"RAYLENS_MAX_VIDEO_BYTES={self.settings.max_video_bytes}"
            )
        # Frames are kept only as large as needed: twice the model input, or up to 960 pixels
        # when faces are wanted (a long video holds all its sampled frames at once).
        side = max(min(keep_side or 0, 960), self.embedder.image_size * 2)
        frames, info = sample_frames(source, self.video_limits, max_side=side)
        items = []
        frames.reverse()
        while frames:
            frame = frames.pop()  # each full-size frame is dropped once it is prepared
            image = prepare_rgb(
                frame.rgb,
                self.embedder.image_size,
                resize_mode=self.embedder.resize_mode,
                interpolation=self.embedder.interpolation,
                keep_side=min(keep_side, side) if keep_side else None,
                fmt=info.container,
                original=_upright(frame.rgb, info.width, info.height),
            )
            meta = {
                "frame": frame.index,
                "timestamp_s": round(frame.timestamp_s, 3),
                "sampled_by": frame.reason,
            }
            items.append(Item(image, f"frame:{frame.index}", meta))
        video = {
            "container": info.container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "duration_s": info.duration_s,
            "fps": info.fps,
            "frames_decoded": info.frames_decoded,
            "frames_sampled": info.frames_sampled,
        }
        return Decoded(items, video)

    def _load_and_decode(self, job: Job) -> Decoded | Failure:
        try:
            return self._decode_job(job)
        except InputError as exc:
            return Failure(job.id, exc.code, exc.message)
        except RaylensError as exc:  # payload store down: try again later
            return Failure(job.id, exc.code, exc.message, retryable=True)
        except Exception as exc:  # never let one input take the worker down
            return Failure(job.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", True)

    def _isolating(self, fn: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        """Run a batch step; if it raises, split the batch in halves so one poison input fails
        alone (and an out-of-memory batch is retried in smaller pieces)."""
        try:
            return fn(items)
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            mid = len(items) // 2
            log.warning("batch of %d failed (%s); splitting", len(items), exc)
            return self._isolating(fn, items[:mid]) + self._isolating(fn, items[mid:])

    def _in_chunks(self, fn: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
        size = self.settings.max_batch_size
        out: list[Any] = []
        for i in range(0, len(items), size):
            out += self._isolating(fn, items[i : i + size])
        return out

    def _embed_items(self, items: list[tuple[Job, Item]]) -> list[np.ndarray]:
        poison = self._injected("poison")
        if poison and any(job.sha256.startswith(poison) for job, _ in items):
            raise RuntimeError(f"injected fault: poison content {poison}")
        hang = self._injected("hang")
        if hang:
            time.sleep(float(hang))
        once = self._injected("hang_once")
        if once:
            seconds, _, who = once.partition("@")
            marker = self.settings.data_dir / f"fault-hang-once-{who or self.name}"
            if who in ("", self.name) and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(self.worker_id)  # the replacement worker will not hang
                time.sleep(float(seconds))
        import torch

        pixels = [it.image.pixels for _, it in items]
        if all(isinstance(p, torch.Tensor) for p in pixels):  # decoded on the device
            return list(self.embedder.embed_images(torch.stack(pixels)))  # type: ignore[arg-type]
        host = [p.cpu().numpy() if isinstance(p, torch.Tensor) else p for p in pixels]
        return list(self.embedder.embed_images(np.stack(host)))

    def _injected(self, kind: str) -> str | None:
        """RAYLENS_FAULT_INJECT (fault drills only): 'poison:<sha256 prefix>', 'hang:<s>',
        'hang_once:<s>@<worker name>' (the first incarnation of that worker stalls once)."""
        for spec in (self.settings.fault_inject or "").split(","):
            name, _, value = spec.strip().partition(":")
            if name == kind and value:
                return value
        return None

    def _find_faces(self, images: list[DecodedImage]) -> list[list[Face] | Exception]:
        assert self.faces is not None
        backend = self.faces
        return self._in_chunks(
            lambda imgs: backend.faces([i.full for i in imgs], [i.full_scale for i in imgs]),
            images,
        )

    def _process(self, batch: Batch) -> None:
        """Embed every item (image or frame) of the batch, then find faces on the items whose
        job asks for them, upsert each collection once, and ack: one batch of face work at
        most between two embedding batches."""
        failures = [d for d in batch.decoded if isinstance(d, Failure)]
        good = [(j, d) for j, d in zip(batch.jobs, batch.decoded) if isinstance(d, Decoded)]
        errors: dict[str, str] = {}  # job id -> first model error
        t0 = time.perf_counter()
        embed = [(j, it) for j, d in good if j.pipeline.embeds for it in d.items]
        with self._cpu_turn:
            vectors = self._in_chunks(self._embed_items, embed)
        t1 = time.perf_counter()
        finds = [(j, it) for j, d in good if self._wants_faces(j) for it in d.items]
        with self._cpu_turn:
            found = self._find_faces([it.image for _, it in finds]) if finds else []
        t2 = time.perf_counter()
        for (job, _), out in [*zip(embed, vectors), *zip(finds, found)]:
            if isinstance(out, Exception):
                errors.setdefault(job.id, f"{type(out).__name__}: {out}")
        failures += [
            Failure(job_id, ErrorCode.MODEL_ERROR, msg, retryable=True)
            for job_id, msg in errors.items()
        ]
        for job, _ in good:
            # faces only, with the face models off: retrying cannot help, fail it at once
            # (a `both` job still gets its vector; its result says faces_found: null).
            if job.pipeline is Pipeline.FACES and self.faces is None and job.id not in errors:
                errors[job.id] = "face models are off (RAYLENS_FACES_ENABLED=false)"
                failures.append(Failure(job.id, ErrorCode.MODEL_LOAD_FAILED, errors[job.id]))
        ok_jobs = [(j, d) for j, d in good if j.id not in errors]
        done: list[tuple[str, dict[str, Any]]] = []
        if ok_jobs:
            try:
                done = self._store(ok_jobs, embed, vectors, finds, found, errors)
            except RaylensError as exc:
                failures += [Failure(j.id, exc.code, exc.message, True) for j, _ in ok_jobs]
        t3 = time.perf_counter()
        self._queue_call(lambda q: q.ack.remote(self.worker_id, done, failures), forever=True)
        with self._held_lock:
            self._held.difference_update(j.id for j in batch.jobs)
        s = self.stats
        s.batches += 1
        s.images += len(done)
        s.frames += sum(len(d.items) for j, d in ok_jobs if d.video is not None)
        s.failed_inputs += sum(1 for f in failures if not f.retryable)
        s.retryable_failures += sum(1 for f in failures if f.retryable)
        s.decode_s += batch.decode_s
        s.infer_s += t1 - t0
        s.faces_s += t2 - t1
        s.write_s += t3 - t2
        s.last_batch_size = len(batch.jobs)
        s.last_progress_at = time.time()
        metrics.record_batch(
            self.name,
            len(batch.jobs),
            decode=batch.decode_s,
            infer=t1 - t0 if embed else None,
            faces=t2 - t1 if finds else None,
            write=t3 - t2 if ok_jobs else None,
        )
        metrics.record_memory(self.name, self.embedder.device)

    def _store(
        self,
        ok_jobs: list[tuple[Job, Decoded]],
        embed: list[tuple[Job, Item]],
        vectors: list[Any],
        finds: list[tuple[Job, Item]],
        found: list[Any],
        errors: dict[str, str],
    ) -> list[tuple[str, dict[str, Any]]]:
        """Upsert image and face points (one call per collection); the results of the jobs."""
        now = time.time()
        results = {job.id: self._result(job, dec) for job, dec in ok_jobs}
        ids, vecs, payloads = [], [], []
        for (job, item), vec in zip(embed, vectors):
            if job.id in errors:
                continue
            pid = point_id(job.sha256, self.model_id, item.part)
            ids.append(pid)
            vecs.append(vec)
            payloads.append(self._payload(job, item, now))
            if item.part == "image":
                results[job.id].update(point_id=pid, dim=int(vec.shape[0]))
        face_ids, face_vecs, face_payloads = [], [], []
        for (job, item), faces in zip(finds, found):
            if job.id in errors:
                continue
            assert self.faces is not None
            summaries = []
            for k, face in enumerate(faces):
                fid = point_id(job.sha256, self.faces.model_id, f"{item.part}:face:{k}")
                face_ids.append(fid)
                face_vecs.append(face.vector)
                face_payloads.append(
                    {
                        **self._payload(job, item, now),
                        **face.summary(),
                        "face_index": k,
                        "model_id": self.faces.model_id,
                        "parent_point_id": point_id(job.sha256, self.model_id, item.part),
                    }
                )
                summaries.append({**face.summary(), "face_index": k, "point_id": fid})
            results[job.id]["faces_found"] += len(faces)
            if item.part == "image":
                results[job.id]["faces"] = summaries
        if ids:
            self.index.upsert(ids, np.stack(vecs), payloads)
        if face_ids:
            self.index.upsert(
                face_ids, np.stack(face_vecs), face_payloads, self.settings.qdrant_faces_collection
            )
        self.stats.faces += len(face_ids)
        return list(results.items())

    def _result(self, job: Job, dec: Decoded) -> dict[str, Any]:
        result: dict[str, Any] = {"model_id": self.model_id, "worker": self.worker_id}
        if dec.video is not None:
            result.update(media="video", frames=len(dec.items), video=dec.video)
        else:
            img = dec.items[0].image
            result.update(media="image", width=img.width, height=img.height, format=img.format)
        if job.pipeline.finds_faces:
            result["faces_found"] = 0 if self.faces else None
        return result

    def _payload(self, job: Job, item: Item, now: float) -> dict[str, Any]:
        payload = {
            "job_id": job.id,
            "source": job.source,
            "source_kind": job.source_kind.value,
            "name": job.name,
            "sha256": job.sha256,
            "model_id": self.model_id,
            "created_at": now,
        }
        if item.part != "image":
            payload.update(media="video", video_id=job.id, **item.meta)
        return payload
