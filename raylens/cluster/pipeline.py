"""The batch pipeline a worker runs: read -> decode -> embed -> faces -> write, without Ray.

A plain object built from settings and its collaborators (embedder, face backend, payload store,
vector index), so it is tested directly; the Worker actor adds leasing, acks, threads and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from raylens.cluster.faults import NoFaults, fault_injector
from raylens.cluster.index import point_id
from raylens.cluster.jobs import Failure, Job, Pipeline
from raylens.cluster.model_setup import video_limits as video_limits_for
from raylens.cluster.payloads import PayloadStore
from raylens.cluster.pipeline_read import Decoded, Item, JobReader, decode_device_for
from raylens.cluster.settings import Settings
from raylens.errors import INFRA_ERRORS, ErrorCode, RaylensError

if TYPE_CHECKING:  # torch, open_clip and dlib load in the process that runs the model
    from raylens.media.video import VideoLimits
    from raylens.models.clip import ClipEmbedder
    from raylens.models.faces import Face, FaceBackend

__all__ = [
    "Batch",
    "BatchOutcome",
    "BatchPipeline",
    "Computed",
    "Decoded",
    "Item",
    "decode_device_for",
    "pooled_map",
]

log = logging.getLogger("raylens.worker")


def pooled_map(pool: Executor, threads: int) -> Callable[[Callable[[Any], Any], list[Any]], list]:
    """A map for BatchPipeline.decode_batch that runs on `threads` of `pool`: each thread takes
    the next input until none is left, so a batch costs `threads` futures, not one per input
    (a future and its lock cost about as much as decoding a small JPEG), and a slow input (a
    video, a large photo) holds up one thread while the others go on. Results in input order."""

    def run(fn: Callable[[Any], Any], items: list[Any]) -> list:
        out: list[Any] = [None] * len(items)
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        pending = iter(enumerate(items))
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    nxt = next(pending, None)
                if nxt is None:
                    return
                out[nxt[0]] = fn(nxt[1])

        for future in [pool.submit(drain) for _ in range(min(threads, len(items)))]:
            future.result()  # fn never raises (it returns a Failure); a bug would surface here
        return out

    return run


class Upserter(Protocol):
    """The part of a vector index the pipeline writes through (VectorIndex, RemoteIndex)."""

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
        collection: str | None = None,
    ) -> int: ...


@dataclass
class Batch:
    """Leased jobs with what decoding made of each (pictures or a Failure), in job order."""

    jobs: list[Job]
    decoded: list[Decoded | Failure]
    decode_s: float


@dataclass
class Computed:
    """What the model made of a batch, for `BatchPipeline.write`: the decoded jobs, the items
    embedded and their vectors (or exceptions), the items searched for faces and the faces
    found, the first model error of each job, the failures so far, and the model's seconds."""

    good: list[tuple[Job, Decoded]]
    embed: list[tuple[Job, Item]]
    vectors: list[Any]
    finds: list[tuple[Job, Item]]
    found: list[Any]
    errors: dict[str, str]
    failures: list[Failure]
    infer_s: float
    faces_s: float


@dataclass
class BatchOutcome:
    """What one batch came to: results to ack, failures to ack, and what each stage cost."""

    done: list[tuple[str, dict[str, Any]]]
    failures: list[Failure]
    infer_s: float
    faces_s: float
    write_s: float
    embedded: bool  # whether each stage had work: a stage with none records no timing
    found_faces: bool
    wrote: bool
    frames: int  # video frames of the jobs that succeeded
    faces: int  # face points written

    def stage_seconds(self) -> dict[str, float | None]:
        """Timings for metrics.record_batch: None for a stage that had nothing to do."""
        return {
            "infer": self.infer_s if self.embedded else None,
            "faces": self.faces_s if self.found_faces else None,
            "write": self.write_s if self.wrote else None,
        }


class BatchPipeline:
    """One model's batch loop body: jobs in, per-job results or Failures out."""

    def __init__(
        self,
        settings: Settings,
        embedder: ClipEmbedder,
        payloads: PayloadStore,
        index: Upserter,
        *,
        faces: FaceBackend | None = None,
        worker_name: str = "worker",
        worker_id: str = "worker",
        video_limits: VideoLimits | None = None,
        faults: NoFaults | None = None,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.faces = faces
        self.index = index
        self.worker_id = worker_id
        self.model_id = embedder.model_id
        self.decode_device = decode_device_for(settings.decode_device, embedder.device)
        self.reader = JobReader(
            settings,
            embedder,
            payloads,
            video_limits or video_limits_for(settings),
            faces_on=faces is not None,
            decode_device=self.decode_device,
        )
        self.overlap = settings.overlap_decode == "on" or (
            settings.overlap_decode == "auto" and embedder.device != "cpu"
        )
        # Without overlap, decode and inference take turns on the CPU (leasing, upserts and acks
        # still overlap); with it, the lock is never contended.
        self.cpu_turn: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if self.overlap else threading.Lock()
        )
        # Called after every chunk of work (a max_batch_size slice of embeddings or face
        # finds, a few dozen decoded video frames): a long video is progress, not a stall.
        self.progress: Callable[[], None] = progress or (lambda: None)
        if progress is not None:
            self.reader.progress = progress
        self.faults = faults or fault_injector(settings, worker_name, worker_id)
        # Chosen once: with no drill configured the embed step is the plain one, no check per call.
        self._embed_step = self.faults.wrap(self._embed_items, _shas)
        self._decode_step = self.faults.wrap_decode(self.reader.load_and_decode)

    # ---- stages -------------------------------------------------------------------------------
    def decode_batch(
        self,
        jobs: list[Job],
        map_fn: Callable[[Callable[[Job], Decoded | Failure], list[Job]], Iterable[Any]] = map,
    ) -> Batch:
        """Read and decode every job (map_fn: a thread pool's map, or the builtin)."""
        with self.cpu_turn:
            t0 = time.perf_counter()
            decoded = list(map_fn(self._decode_step, jobs))
            return Batch(jobs, decoded, time.perf_counter() - t0)

    def run(self, jobs: list[Job]) -> BatchOutcome:
        """Decode then process, in this thread (tests, and callers without a decode pool)."""
        return self.process(self.decode_batch(jobs))

    def process(self, batch: Batch) -> BatchOutcome:
        """Compute then write, in this thread (tests, and callers without a writer thread)."""
        return self.write(self.compute(batch))

    def compute(self, batch: Batch) -> Computed:
        """Embed every item (image or frame) of the batch, then find faces on the items whose
        job asks for them: one batch of face work at most between two embedding batches. The
        model's part of a batch; `write` stores what it made (the worker runs the two in
        different threads, so the model never waits for the index or the queue)."""
        failures = [d for d in batch.decoded if isinstance(d, Failure)]
        good = [(j, d) for j, d in zip(batch.jobs, batch.decoded) if isinstance(d, Decoded)]
        embed = [(j, it) for j, d in good if j.pipeline.embeds for it in d.items]
        # Timed inside the CPU turn: waiting for a decode to end its turn is neither model time
        # nor face time (the lease size is set from these).
        with self.cpu_turn:
            t0 = time.perf_counter()
            vectors = self._in_chunks(self._embed_step, embed)
            infer_s = time.perf_counter() - t0
        finds = [(j, it) for j, d in good if self.reader.wants_faces(j) for it in d.items]
        found: list[list[Face] | Exception] = []
        faces_s = 0.0
        if finds:  # no faces asked for: no turn taken (it would wait for the next decode)
            with self.cpu_turn:
                t1 = time.perf_counter()
                found = self._find_faces([it.image for _, it in finds])
                faces_s = time.perf_counter() - t1
        errors = _first_errors([*zip(embed, vectors), *zip(finds, found)])
        failures += [
            Failure(job_id, ErrorCode.MODEL_ERROR, msg, retryable=True)
            for job_id, msg in errors.items()
        ]
        failures += self._faces_off_failures(good, errors)
        # The write needs what each item was, not its pixels: let those go now rather than
        # hold a third batch of pictures (frames, face-size images) while it is written.
        light = {id(it): _without_pixels(it) for _, d in good for it in d.items}
        return Computed(
            [(j, Decoded([light[id(it)] for it in d.items], d.video)) for j, d in good],
            [(j, light[id(it)]) for j, it in embed],
            vectors,
            [(j, light[id(it)]) for j, it in finds],
            found,
            errors,
            failures,
            infer_s,
            faces_s,
        )

    def write(self, c: Computed) -> BatchOutcome:
        """Upsert each collection once for the jobs the model did not fail; an unavailable
        index fails them as retryable infrastructure faults (invariant 10)."""
        t0 = time.perf_counter()
        failures = list(c.failures)
        ok_jobs = [(j, d) for j, d in c.good if j.id not in c.errors]
        done: list[tuple[str, dict[str, Any]]] = []
        face_points = 0
        if ok_jobs:
            try:
                done, face_points = self._store(
                    ok_jobs, c.embed, c.vectors, c.finds, c.found, c.errors
                )
            except RaylensError as exc:  # index down: not the jobs' fault, retry them
                infra = isinstance(exc, INFRA_ERRORS)  # and at no attempt's cost (invariant 10)
                failures += [
                    Failure(j.id, exc.code, exc.message, True, infra=infra) for j, _ in ok_jobs
                ]
        return BatchOutcome(
            done=done,
            failures=failures,
            infer_s=c.infer_s,
            faces_s=c.faces_s,
            write_s=time.perf_counter() - t0,
            embedded=bool(c.embed),
            found_faces=bool(c.finds),
            wrote=bool(ok_jobs),
            frames=sum(len(d.items) for _, d in ok_jobs if d.video is not None),
            faces=face_points,
        )

    def _faces_off_failures(
        self, good: list[tuple[Job, Decoded]], errors: dict[str, str]
    ) -> list[Failure]:
        """Faces only, with the face models off: retrying cannot help, fail it at once (a `both`
        job still gets its vector; its result says faces_found: null)."""
        out = []
        for job, _ in good:
            if job.pipeline is Pipeline.FACES and self.faces is None and job.id not in errors:
                errors[job.id] = "face models are off (RAYLENS_FACES_ENABLED=false)"
                out.append(Failure(job.id, ErrorCode.MODEL_LOAD_FAILED, errors[job.id]))
        return out

    # ---- batch isolation ----------------------------------------------------------------------
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
            self.progress()
        return out

    # ---- models -------------------------------------------------------------------------------
    def _embed_items(self, items: list[tuple[Job, Item]]) -> list[np.ndarray]:
        import torch

        pixels = [it.image.pixels for _, it in items]
        if all(isinstance(p, torch.Tensor) for p in pixels):  # decoded on the device
            return list(self.embedder.embed_images(torch.stack(pixels)))  # type: ignore[arg-type]
        host = [p.cpu().numpy() if isinstance(p, torch.Tensor) else p for p in pixels]
        return list(self.embedder.embed_images(np.stack(host)))

    def _find_faces(self, images: list[Any]) -> list[list[Face] | Exception]:
        assert self.faces is not None
        backend = self.faces
        return self._in_chunks(
            lambda imgs: backend.faces([i.full for i in imgs], [i.full_scale for i in imgs]),
            images,
        )

    # ---- write --------------------------------------------------------------------------------
    def _store(
        self,
        ok_jobs: list[tuple[Job, Decoded]],
        embed: list[tuple[Job, Item]],
        vectors: list[Any],
        finds: list[tuple[Job, Item]],
        found: list[Any],
        errors: dict[str, str],
    ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Upsert image and face points (one call per collection); the jobs' results and the
        number of face points written."""
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
            face_model = self.faces.model_id
            summaries = []
            for k, face in enumerate(faces):
                fid = point_id(job.sha256, face_model, f"{item.part}:face:{k}")
                face_ids.append(fid)
                face_vecs.append(face.vector)
                face_payloads.append(
                    {
                        **self._payload(job, item, now),
                        **face.summary(),
                        "face_index": k,
                        "model_id": face_model,
                        "parent_point_id": point_id(job.sha256, self.model_id, item.part),
                    }
                )
                summaries.append({**face.summary(), "face_index": k, "point_id": fid})
            results[job.id]["faces_found"] += len(faces)
            if item.part == "image":
                results[job.id]["faces"] = summaries
        if ids:  # into this model's own collection, named explicitly (a switch may be under way)
            self.index.upsert(ids, np.stack(vecs), payloads, self.settings.qdrant_collection)
        if face_ids:
            self.index.upsert(
                face_ids, np.stack(face_vecs), face_payloads, self.settings.qdrant_faces_collection
            )
        return list(results.items()), len(face_ids)

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


_NO_PIXELS = np.empty((0, 0, 3), np.uint8)


def _without_pixels(item: Item) -> Item:
    """The item as the write step sees it: what it was (size, format, part, frame), no pixels."""
    image = dataclasses.replace(item.image, pixels=_NO_PIXELS, full=None)
    return Item(image, item.part, item.meta)


def _shas(items: list[tuple[Job, Item]]) -> list[str]:
    return [job.sha256 for job, _ in items]


def _first_errors(outputs: Iterator[Any] | list[Any]) -> dict[str, str]:
    """job id -> its first model error, from (job, item), output pairs."""
    errors: dict[str, str] = {}
    for (job, _), out in outputs:
        if isinstance(out, Exception):
            errors.setdefault(job.id, f"{type(out).__name__}: {out}")
    return errors
