"""The cluster's async API for front ends (the HTTP ingress): intake, job reads, search, health.

Every method is a coroutine that never blocks its caller's event loop: Ray calls are awaited,
payload writes, hashing and actor lookups run on a small thread pool. It raises RaylensError
subclasses only (their code and HTTP status say what went wrong) and knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import ray

from raylens.actors import launch
from raylens.actors.handles import UNAVAILABLE
from raylens.cluster import runs, webhooks
from raylens.cluster.active_model import ActiveModel
from raylens.cluster.coalesce import Coalescer
from raylens.cluster.hits import (
    check_filters,
    check_one_query,
    check_sha256,
    check_top_k,
    face_matches,
    hit_out,
)
from raylens.cluster.intake import check_upload, spec_for_upload
from raylens.cluster.jobs import Job, JobSpec, JobState, Lane, Pipeline, SubmitResult
from raylens.cluster.payloads import PayloadStore, open_payload_store
from raylens.cluster.settings import Settings
from raylens.errors import (
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    RaylensError,
    StoreUnavailable,
)

log = logging.getLogger("raylens.api")


def _actor_key(handle: Any) -> Any:
    """What tells two worker handles apart: the actor's id (a replaced worker has a new one)."""
    return getattr(handle, "_actor_id", None) or id(handle)


_UNAVAILABLE_OR_TIMEOUT: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncio.TimeoutError)
T = TypeVar("T")

WORKER_REFRESH_S = 10.0


def unwrap(exc: BaseException) -> BaseException:
    """The exception an actor raised, out of Ray's RayTaskError wrapper."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return exc.cause
    return exc


class ClusterAPI:
    """One per ingress replica. Holds cached actor handles; safe for concurrent coroutines."""

    def __init__(self, settings: Settings, io_threads: int = 8) -> None:
        self.settings = settings
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="raylens-api-io")
        self._payloads: PayloadStore | None = None
        self._queue: Any = None
        self._workers: list[Any] = []
        self._workers_at = 0.0
        self._next_worker = 0
        self._index: Any = None  # the index actor (the embedded engine)
        self._index_server: Any = None  # VectorIndex when a Qdrant server is configured
        self._dim: int | None = None
        self._report: dict[str, Any] | None = None  # a worker's report: the models queries use
        self._report_at = 0.0
        self._active: ActiveModel | None = None  # the active model record (model switches)
        self._active_at = 0.0
        # Concurrent uploads share queue calls (a keyed one goes alone: its key names it).
        self._submits: Coalescer[JobSpec, SubmitResult] = Coalescer(
            lambda specs: self._queue_call("submit", specs, None),
            settings.submit_coalesce_jobs,
            alone=(QueueFull,),
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ---- handles ------------------------------------------------------------------------------
    async def _queue_handle(self) -> Any:
        if self._queue is None:
            self._queue = await self._run(launch.queue_handle, self.settings)
        return self._queue

    async def _queue_call(self, method: str, *args: Any) -> Any:
        """Call the queue actor; a restarting or missing queue becomes StoreUnavailable (503)."""
        for attempt in range(2):
            queue = await self._queue_handle()
            try:
                return await getattr(queue, method).remote(*args)
            except ray.exceptions.RayTaskError as exc:
                raise _as_raylens(exc) from None
            except UNAVAILABLE as exc:
                self._queue = None
                if attempt:
                    raise StoreUnavailable(
                        f"the raylens queue is unavailable (restarting?): {type(exc).__name__}"
                    ) from None
        raise AssertionError("unreachable")

    async def _worker_list(self, refresh: bool = False) -> list[Any]:
        stale = time.monotonic() - self._workers_at > WORKER_REFRESH_S
        if refresh or stale or not self._workers:
            self._workers = await self._run(launch.worker_handles, self.settings)
            self._workers_at = time.monotonic()
        return self._workers

    async def _on_worker(self, method: str, *args: Any) -> Any:
        """Run a query method on a worker (round robin), beside its batch loop; skip dead ones.

        When every worker of the cached list fails (replaced by a rollout or a restart since
        the list was read), the list is read again and the workers not tried yet are asked."""
        tried: set[Any] = set()
        last: BaseException | None = None
        for refresh in (False, True):
            workers = await self._worker_list(refresh=refresh)
            start = self._next_worker
            for k in range(len(workers)):
                worker = workers[(start + k) % len(workers)]
                key = _actor_key(worker)
                if key in tried:
                    continue
                tried.add(key)
                self._next_worker += 1
                try:
                    return await asyncio.wait_for(
                        getattr(worker, method).remote(*args),
                        timeout=self.settings.search_timeout_s,
                    )
                except ray.exceptions.RayTaskError as exc:
                    raise _as_raylens(exc) from None
                except _UNAVAILABLE_OR_TIMEOUT as exc:
                    last = exc
        self._workers_at = 0.0  # look the workers up again next time
        if last is None:
            raise StoreUnavailable("no raylens workers are running; start them with `raylens up`")
        why = (
            f"none answered within {self.settings.search_timeout_s}s (RAYLENS_SEARCH_TIMEOUT_S)"
            if isinstance(last, asyncio.TimeoutError)
            else f"the last one: {type(last).__name__}"
        )
        raise StoreUnavailable(f"no raylens worker answered ({len(tried)} tried; {why})")

    async def active_model(self, refresh: bool = False) -> ActiveModel:
        """The active model record, as the queue holds it (cached for a few seconds)."""
        stale = time.monotonic() - self._active_at > WORKER_REFRESH_S
        if refresh or stale or self._active is None:
            self._active = ActiveModel.from_json(await self._queue_call("active_model"))
            self._active_at = time.monotonic()
        return self._active

    async def _collection_of(self, model_id: str) -> str:
        """The image collection holding `model_id`'s vectors: the active model's, or an earlier
        model's while workers still roll over from it. A model the record does not know is
        sent to the active collection, where the index refuses it (ModelMismatch)."""
        active = await self.active_model()
        if model_id not in active.routes():
            active = await self.active_model(refresh=True)
        return active.routes().get(model_id, active.collection)

    # ---- intake -------------------------------------------------------------------------------
    def _payload_store(self) -> PayloadStore:
        if self._payloads is None:
            self._payloads = open_payload_store(self.settings)
        return self._payloads

    async def submit_uploads(
        self,
        files: Sequence[tuple[str | None, bytes]],
        lane: Lane = Lane.NORMAL,
        pipeline: Pipeline = Pipeline.BOTH,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> list[dict[str, Any]]:
        """Validate and store every file, then create their jobs in one queue call.

        Returns only when payloads and job records are durable. One bad file rejects the whole
        request before any job exists (stored payloads are content-addressed and harmless).
        A callback_url (checked here: cluster/webhooks.check_url) is POSTed, signed, when each
        job the request created ends; an existing job of the same content keeps its own.
        """
        if callback_url is not None:
            if not self.settings.webhook_secret:
                raise InvalidRequest(
                    "callback_url needs RAYLENS_WEBHOOK_SECRET set on the server (webhooks are "
                    "signed with it)"
                )
            await self._run(webhooks.check_url, callback_url, self.settings.webhook_allow_private)
        if not files:
            raise InvalidRequest("no files: send one or more file parts named 'files'")
        if len(files) > self.settings.max_upload_files:
            raise InvalidRequest(
                f"{len(files)} files in one request; limit "
                f"RAYLENS_MAX_UPLOAD_FILES={self.settings.max_upload_files}"
            )

        def validate_and_store() -> list[Any]:
            payloads = self._payload_store()
            specs = [
                spec_for_upload(data, payloads, self.settings, lane, name, pipeline)
                for name, data in files
            ]
            return [s.model_copy(update={"callback_url": callback_url}) for s in specs]

        specs = await self._run(validate_and_store)
        results: list[SubmitResult] = (
            await self._submits.submit(specs)
            if idempotency_key is None
            else await self._queue_call("submit", specs, idempotency_key)
        )
        return [
            {
                "id": r.job_id,
                "name": spec.name,
                "sha256": spec.sha256,
                "state": r.state.value,
                "created": r.created,
            }
            for spec, r in zip(specs, results)
        ]

    # ---- jobs ---------------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> Job:
        job: Job = await self._queue_call("get", job_id)
        return job

    async def list_jobs(
        self, state: JobState | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        page: tuple[list[Job], str | None] = await self._queue_call(
            "list_jobs", state, limit, cursor
        )
        return page

    async def retry(self, job_id: str) -> Job:
        """Re-queue one failed job; InvalidTransition (409) when it is not failed."""
        job = await self.get_job(job_id)
        if job.state is not JobState.FAILED:
            raise InvalidTransition(
                f"job {job_id} is {job.state.value}; only failed jobs can be retried"
            )
        moved = await self._queue_call("retry", [job_id])
        if job_id not in moved:
            raise InvalidTransition(
                f"job {job_id} was not re-queued: its content was submitted again as a newer job"
            )
        return await self.get_job(job_id)

    # ---- events -------------------------------------------------------------------------------
    async def events(
        self,
        after: str | None,
        wait_s: float = 0.0,
        job_ids: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of job events (JobQueue.events): {"events", "last"}."""
        ids = list(job_ids) if job_ids is not None else None
        states = list(states) if states else None
        out: dict[str, Any] = await self._queue_call(
            "events", after, None, wait_s, ids, states, run_id
        )
        return out

    async def runs(self, limit: int) -> list[dict[str, Any]]:
        """The newest ingest runs (cluster/runs.py), newest first, as shown."""
        records = await self._queue_call("runs", limit)
        return [runs.view(json.loads(r), self._run_stale_s) for r in records]

    async def run(self, run_id: str) -> dict[str, Any]:
        return runs.view(json.loads(await self._queue_call("run", run_id)), self._run_stale_s)

    @property
    def _run_stale_s(self) -> float:
        """A running run silent this long is shown as interrupted."""
        return max(30.0, 10 * self.settings.run_update_s)

    async def last_event_id(self) -> str:
        out: str = await self._queue_call("last_event_id")
        return out

    async def deliveries(self, job_id: str) -> dict[str, Any]:
        """The webhook deliveries of a job (actors/webhooks.py records each attempt)."""
        job = await self.get_job(job_id)
        record = await self._queue_call("get_meta", f"webhook:{job_id}")
        out: dict[str, Any] = {"job_id": job_id, "callback_url": job.callback_url}
        if job.callback_url is None:
            return {**out, "state": "none", "attempts": []}
        if record is None:
            return {**out, "state": "pending", "attempts": []}
        doc = json.loads(record)
        return {**out, "state": doc["state"], "attempts": doc["attempts"]}

    async def keyed_job_ids(self, idempotency_key: str) -> list[str]:
        out: list[str] = await self._queue_call("keyed_job_ids", idempotency_key)
        return out

    async def jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        out: list[Job | None] = await self._queue_call("states", list(job_ids))
        return out

    async def list_images(self, limit: int, cursor: str | None) -> dict[str, Any]:
        """A page of what is indexed, newest first: one entry per done job (its content's
        sha256, source, model id, faces, frames, point id), and the next page's cursor."""
        jobs, next_cursor = await self.list_jobs(JobState.DONE, limit, cursor)
        return {"images": [image_entry(job) for job in jobs], "next_cursor": next_cursor}

    # ---- delete -------------------------------------------------------------------------------
    async def delete_jobs(self, job_ids: Sequence[str], by: str) -> dict[str, Any]:
        """Delete the images these jobs were for, and everything derived from them (see
        delete_content). JobNotFound (404) names an id that is neither a job nor a deleted one;
        an id deleted before is no error (a repeat)."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidRequest("no job ids to delete")
        shas: dict[str, str] = {}
        tombs: dict[str, Any] = await self._queue_call("tombstones", ids)
        for job_id in ids:
            if job_id in tombs:
                shas[job_id] = tombs[job_id]["sha256"]
                continue
            try:
                shas[job_id] = (await self.get_job(job_id)).sha256
            except JobNotFound:
                raise JobNotFound(f"no job with id {job_id!r} (nor a deleted one)") from None
        return await self.delete_content(list(dict.fromkeys(shas.values())), by)

    async def delete_content(self, sha256s: Sequence[str], by: str) -> dict[str, Any]:
        """Remove everything raylens holds of these contents, as one operation safe to repeat:
        every job of each (any pipeline or model: a queued one is cancelled, a running one's
        late result is thrown away) leaving a tombstone; every point derived from it (image,
        video frames, faces); the uploaded payload. Files ingested by path are never touched.
        Order: jobs first (nothing new starts), then points, then payloads; should a step fail,
        the same call again finishes it."""
        shas = [check_sha256(s) for s in dict.fromkeys(sha256s)]
        if not shas:
            raise InvalidRequest("no sha256 to delete")
        t0 = time.perf_counter()
        queued: dict[str, Any] = await self._queue_call("delete_content", shas, by)
        jobs: list[Job] = queued["jobs"]
        collections = (await self.active_model(refresh=True)).collections()
        points: dict[str, int] = await self._index_call("delete_content", shas, collections)
        payloads = await self._run(self._delete_payloads, shas)
        by_state: dict[str, int] = {}
        for job in jobs:
            by_state[job.state.value] = by_state.get(job.state.value, 0) + 1
        earlier = queued["tombstones"]
        found = bool(jobs or earlier or any(points.values()) or payloads["removed"])
        return {
            "sha256": shas,
            "found": found,
            "jobs": {
                "removed": len(jobs),
                "ids": [job.id for job in jobs],
                "by_state": by_state,
                "cancelled": by_state.get("queued", 0) + by_state.get("running", 0),
                "deleted_before": sorted(t["job_id"] for t in earlier),
            },
            "points": points,
            "payloads": payloads,
            "by": by,
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    async def collect_garbage(self, dry_run: bool = False, chunk: int = 500) -> dict[str, Any]:
        """Remove uploaded payloads no job needs (orphans of a crash between the payload write
        and the job write; with keep_uploads off, bytes of finished jobs), never one younger
        than gc_min_age_s. Returns what it scanned and freed (dry_run: what it would free)."""
        t0 = time.perf_counter()
        store = self._payload_store()
        out = {"scanned": 0, "bytes": 0, "young": 0, "orphans": 0, "orphan_bytes": 0}
        freed = {"removed": 0, "freed_bytes": 0}
        min_age = self.settings.gc_min_age_s

        async def settle(batch: list[Any]) -> None:
            needed = set(await self._queue_call("payloads_needed", [p.key for p in batch]))
            orphans = [p for p in batch if p.key not in needed]
            out["orphans"] += len(orphans)
            out["orphan_bytes"] += sum(p.size for p in orphans)
            if dry_run or not orphans:
                return
            for p in orphans:
                await self._run(store.delete, p.key)
                freed["removed"] += 1
                freed["freed_bytes"] += p.size

        scan = store.scan()
        batch: list[Any] = []
        while True:
            item = await self._run(next, scan, None)
            if item is None:
                break
            out["scanned"] += 1
            out["bytes"] += item.size
            if item.idle_s < min_age:
                out["young"] += 1
                continue
            batch.append(item)
            if len(batch) >= chunk:
                await settle(batch)
                batch = []
        if batch:
            await settle(batch)
        return {
            **out,
            **freed,
            "dry_run": dry_run,
            "min_age_s": min_age,
            "keep_uploads": self.settings.keep_uploads,
            "took_s": round(time.perf_counter() - t0, 3),
        }

    def _delete_payloads(self, shas: Sequence[str]) -> dict[str, int]:
        store = self._payload_store()
        removed = freed = 0
        for sha in shas:
            size = store.size(sha)
            if size is not None:
                store.delete(sha)
                removed += 1
                freed += size
        return {"removed": removed, "bytes": freed}

    # ---- search -------------------------------------------------------------------------------
    async def search(
        self,
        *,
        text: str | None = None,
        image: bytes | None = None,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Embed the query on a worker (not behind the job backlog), then ask the index.

        The one search path: the HTTP ingress awaits it, the CLI runs it through
        `launch.search_text`. Hits are best first, shaped by `cluster.hits.hit_out`.
        """
        check_one_query(text, image, vector)
        check_top_k(top_k, self.settings.search_max_top_k)
        checked = check_filters(filters)
        t0 = time.perf_counter()
        if text is not None or image is not None:
            if image is not None:
                check_upload(image, self.settings, "the query image", video=False)
            embedded = await self._on_worker("embed_query", text, image)
            query, model_id = np.asarray(embedded["vector"]), embedded["model_id"]
        else:
            query = await self._check_vector(vector or [])
            model_id = (await self._worker_report())["model_id"]
        collection = await self._collection_of(model_id)
        hits = await self._index_search(query, top_k, checked, collection, model_id)
        return {
            "hits": [hit_out(h) for h in hits],
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    async def _worker_report(self) -> dict[str, Any]:
        """A worker's report (cached): the models that embed queries, their dimension."""
        stale = time.monotonic() - self._report_at > WORKER_REFRESH_S
        if self._report is None or stale:  # refreshed: a model switch changes it
            self._report = await self._on_worker("report")
            self._report_at = time.monotonic()
            self._dim = int(self._report["dim"])
        return self._report

    async def _check_vector(self, vector: Sequence[float]) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(arr)):
            raise InvalidRequest("vector holds NaN or infinite values")
        self._dim = int((await self._worker_report())["dim"])
        if arr.shape[0] != self._dim:
            raise InvalidRequest(
                f"vector has {arr.shape[0]} values; the model makes {self._dim}-d vectors"
            )
        return arr

    async def _index_search(
        self,
        query: np.ndarray,
        top_k: int,
        filters: dict[str, Any] | None,
        collection: str | None = None,
        model_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The index's nearest points; with model_id (the model that made the query), a
        collection of another model's vectors is refused (VectorIndex.check_model)."""
        hits: list[dict[str, Any]] = await self._index_call(
            "search", query, top_k, filters, collection, model_id
        )
        return hits

    async def _index_call(self, method: str, *args: Any) -> Any:
        """A VectorIndex method: on the index actor (embedded engine) or a server client."""
        if self.settings.qdrant_url:
            if self._index_server is None:
                from raylens.cluster.index import VectorIndex

                self._index_server = await self._run(VectorIndex, self.settings)
            return await self._run(getattr(self._index_server, method), *args)
        try:
            if self._index is None:
                self._index = await self._run(launch.index_handle, self.settings)
            return await asyncio.wait_for(
                getattr(self._index, method).remote(*args), timeout=self.settings.search_timeout_s
            )
        except ray.exceptions.RayTaskError as exc:
            raise _as_raylens(exc) from None
        except _UNAVAILABLE_OR_TIMEOUT as exc:
            self._index = None  # look the index actor up again next time
            raise StoreUnavailable(
                f"the raylens index is unavailable: {type(exc).__name__}: {exc}"[:300]
            ) from None

    # ---- faces --------------------------------------------------------------------------------
    async def faces(self, image: bytes) -> list[dict[str, Any]]:
        """The faces of one image (largest first): box, score, landmarks, vector."""
        check_upload(image, self.settings, "the image", video=False)
        found: list[dict[str, Any]] = await self._on_worker("faces_in_bytes", image)
        return found

    async def search_faces(
        self,
        *,
        image: bytes | None = None,
        face_id: str | None = None,
        face_index: int | None = None,
        top_k: int = 10,
        max_distance: float | None = None,
    ) -> dict[str, Any]:
        """Faces like the largest face of an image (or its face_index), or like a stored face,
        within max_distance (default RAYLENS_FACE_MATCH_THRESHOLD), closest first."""
        if (image is None) == (face_id is None):
            raise InvalidRequest("give exactly one of an image or a face_id")
        check_top_k(top_k, self.settings.search_max_top_k)
        limit = self.settings.face_match_threshold if max_distance is None else max_distance
        if limit <= 0:
            raise InvalidRequest(f"max_distance must be positive, got {limit}")
        t0 = time.perf_counter()
        collection = self.settings.qdrant_faces_collection
        query: dict[str, Any]
        if image is not None:
            found = await self.faces(image)
            if not found:
                raise InvalidRequest("no face found in the query image")
            index = 0 if face_index is None else face_index
            if not 0 <= index < len(found):
                raise InvalidRequest(
                    f"face_index {index} out of range: the image has {len(found)} face(s)"
                )
            chosen = found[index]
            vector = np.asarray(chosen.pop("vector"), dtype=np.float32)
            query = {"face_index": index, "faces_in_image": len(found), **chosen}
            face_model = (await self._worker_report()).get("face_model") or {}
            model_id = face_model.get("model_id")
        else:
            point = await self._index_call("get", face_id, collection)
            if point is None:
                raise JobNotFound(f"no stored face with id {face_id!r}")
            vector = point["vector"]
            query = {"face_id": face_id, **{k: point["payload"].get(k) for k in ("box", "job_id")}}
            model_id = None  # a stored face: of the collection's own model
        hits = await self._index_search(vector, top_k, None, collection, model_id)
        matches = face_matches(hits, limit)
        return {
            "query": query,
            "max_distance": limit,
            "hits": matches,
            "took_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    # ---- health -------------------------------------------------------------------------------
    async def ready(self) -> dict[str, Any]:
        """Ready when the queue answers and at least one worker has its model loaded."""
        out: dict[str, Any] = {"ready": False, "queue": "ok", "workers": []}
        try:
            await asyncio.wait_for(self._queue_call("ping"), timeout=5)
        except (RaylensError, asyncio.TimeoutError) as exc:
            out["queue"] = f"unavailable: {getattr(exc, 'message', type(exc).__name__)}"
        try:
            workers = await self._worker_list(refresh=True)
        except Exception as exc:  # the GCS itself is unreachable
            out["workers"] = [{"error": f"{type(exc).__name__}: {exc}"[:300]}]
            return out
        answers = await asyncio.gather(
            *(asyncio.wait_for(w.report.remote(), timeout=5) for w in workers),
            return_exceptions=True,
        )
        for a in answers:
            if isinstance(a, dict):
                out["workers"].append(a)
            else:
                err = unwrap(a)
                out["workers"].append({"error": f"{type(err).__name__}: {err}"[:300]})
        loaded = any(isinstance(a, dict) and a.get("load_count", 0) >= 1 for a in answers)
        out["ready"] = loaded and out["queue"] == "ok"
        return out

    def close(self) -> None:
        self._io.shutdown(wait=False)


def image_entry(job: Job) -> dict[str, Any]:
    """One indexed image (or video) as GET /v1/images lists it, from its done job."""
    result = job.result or {}
    return {
        "sha256": job.sha256,
        "job_id": job.id,
        "name": job.name,
        "source_kind": job.source_kind.value,
        "source": job.source,
        "pipeline": job.pipeline.value,
        "model_id": result.get("model_id"),
        "media": result.get("media", "image"),
        "point_id": result.get("point_id"),
        "faces": result.get("faces_found"),
        "frames": result.get("frames"),
        "size_bytes": job.size_bytes,
        "created_at": job.created_at,
        "done_at": job.timestamps().get("done"),
    }


def _as_raylens(exc: ray.exceptions.RayTaskError) -> RaylensError:
    cause = unwrap(exc)
    if isinstance(cause, RaylensError):
        return cause
    log.error("actor call failed: %s", exc)
    return RaylensError(f"internal error in a raylens actor: {type(cause).__name__}: {cause}")
