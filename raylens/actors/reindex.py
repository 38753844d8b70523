"""Re-embed every done image with another model, into that model's own collection, then switch.

`raylens reindex --model NAME --pretrained TAG`:
1. loads the new model in `reindex_actors` Reembedder actors (once each, like a worker);
2. pages through the done jobs of the job store (newest first), skips content whose point the
   new collection already holds (so an interrupted run resumes where it stopped), and has the
   rest re-read (path or kept upload), decoded and embedded by the same BatchPipeline the
   workers run, faces off (face vectors come from dlib and do not change with the model);
   the old collection keeps answering searches meanwhile;
3. passes again until a pass finds nothing new (jobs finished while it ran), then switches in
   one step: the queue stores the new active-model record (new submissions are keyed by the new
   model id), then the supervisor rolls every worker over to the new model, one at a time;
   while it rolls, each query is searched in the collection of the model that embedded it, so
   no search fails and none mixes two models;
4. one last pass re-embeds what old workers finished during the roll.

Content whose bytes are gone (a file moved, an upload not kept) is listed with its error code,
never silently dropped; a content deleted while it runs has its new points removed again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray

from raylens.actors import launch
from raylens.cluster import model_setup
from raylens.cluster.active_model import ActiveModel, alias_for, collection_for
from raylens.cluster.active_model import apply as apply_model
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.jobs import Job, JobState
from raylens.cluster.payloads import open_payload_store
from raylens.cluster.pipeline import BatchPipeline, pooled_map
from raylens.cluster.settings import Settings
from raylens.cluster.store import open_job_store
from raylens.errors import ModelLoadError
from raylens.models.model_id import model_id_for

log = logging.getLogger("raylens.reindex")

MAX_PASSES = 5  # catch-up passes before the switch; each takes only what finished meanwhile


class Reembedder:
    """A Ray actor: the new model, loaded once in this process; embeds given done jobs into the
    new model's collection (through the index actor, or a Qdrant server)."""

    def __init__(self, settings: Settings, name: str) -> None:
        from raylens.actors.worker import RemoteIndex, ServerIndex

        self.settings = settings
        self.embedder = model_setup.build_embedder(settings)
        index = (
            ServerIndex(settings, self.embedder.dim)
            if settings.qdrant_url
            else RemoteIndex(settings)
        )
        self.pipeline = BatchPipeline(
            settings,
            self.embedder,
            open_payload_store(settings),
            index,
            faces=None,
            worker_name=name,
            worker_id=f"{name}:{os.getpid()}",
            video_limits=model_setup.video_limits(settings),
        )
        self._pool = ThreadPoolExecutor(settings.decode_threads, "raylens-reindex-decode")

    def report(self) -> dict[str, Any]:
        return self.embedder.report()

    def embed(self, jobs: list[Job]) -> dict[str, Any]:
        """Re-read, decode, embed and upsert these jobs' content: {"done": [job id],
        "failed": [{"job_id", "code", "message"}]}."""
        decode = pooled_map(self._pool, self.settings.decode_threads)
        out = self.pipeline.process(self.pipeline.decode_batch(jobs, decode))
        return {
            "done": [job_id for job_id, _ in out.done],
            "failed": [
                {"job_id": f.job_id, "code": f.code.value, "message": f.message}
                for f in out.failures
            ],
        }


@dataclass
class ReindexRun:
    """What one `raylens reindex` did (its --json output)."""

    model_id: str
    collection: str
    previous_model_id: str
    previous_collection: str
    embedded: int = 0
    skipped: int = 0  # already in the new collection (an earlier, interrupted run)
    not_embedded: int = 0  # done contents with no image vector (faces-only pipeline)
    unavailable: list[dict[str, Any]] = field(default_factory=list)  # bytes gone, or failed
    purged: int = 0  # contents deleted while this ran: their new points removed again
    passes: int = 0
    complete: bool = False  # every done image is in the new collection (or listed)
    switched: bool = False
    switch: dict[str, Any] | None = None
    alias: str | None = None  # on a Qdrant server: the alias now naming the new collection
    points: int | None = None  # points in the new collection at the end
    took_s: float = 0.0
    embed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["images_per_s"] = round(self.embedded / self.embed_s, 1) if self.embed_s > 0 else None
        return d


def _first_part(job: Job) -> str:
    """The part whose point stands for the job's content: a video's first sampled frame."""
    return "frame:0" if (job.result or {}).get("media") == "video" else "image"


class Reindexer:
    """The driver (the CLI, or a `ray job submit` entrypoint): reads the job store, feeds the
    Reembedder actors, then switches. Synchronous; call it where no event loop runs."""

    def __init__(
        self,
        settings: Settings,
        target: ActiveModel,
        *,
        batch: int | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.target_settings = apply_model(settings, target)
        self.batch = batch or settings.max_batch_size
        self.progress = progress or (lambda stage, n, total: None)
        self.queue = launch.queue_handle(settings)
        self.current = launch.active_model(settings, self.queue)
        self.store = open_job_store(settings)  # read only: the queue stays the only writer
        self._server_index = VectorIndex(self.target_settings) if settings.qdrant_url else None
        self.actors: list[Any] = []
        self.run = ReindexRun(
            target.model_id, target.collection, self.current.model_id, self.current.collection
        )
        self._seen: set[str] = set()  # sha256 already handled in this pass
        self._failed: set[str] = set()  # sha256 whose re-embed failed in this run (listed)
        self._embedded: set[str] = set()  # sha256 this run embedded
        self._skipped: set[str] = set()  # sha256 found in the new collection already
        self._faces_only: set[str] = set()  # sha256 of done faces-only jobs

    # ---- index access ---------------------------------------------------------------------------
    def _index(self, method: str, *args: Any) -> Any:
        """A VectorIndex method on the new collection's index: the index actor (embedded
        engine) or this process's own server client."""
        if self._server_index is not None:
            return getattr(self._server_index, method)(*args)
        return ray.get(getattr(launch.index_handle(self.settings), method).remote(*args))

    # ---- the actors -----------------------------------------------------------------------------
    def start_actors(self, n: int) -> None:
        gpus = (
            self.settings.reindex_num_gpus
            if self.settings.reindex_num_gpus is not None
            else launch.worker_gpus(self.settings)
        )
        options = {
            "num_cpus": 0,  # beside the workers, which hold the CPUs they asked for
            "num_gpus": gpus,
            "max_restarts": 0,
            **(
                {"resources": dict(self.settings.worker_resources)}
                if self.settings.worker_resources
                else {}
            ),
        }
        self.actors = [
            ray.remote(Reembedder)
            .options(**options)
            .remote(self.target_settings, f"raylens-reindex-{i}")
            for i in range(max(1, n))
        ]
        try:
            ray.get(
                [a.report.remote() for a in self.actors],
                timeout=self.settings.worker_start_timeout_s,
            )
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ModelLoadError(
                f"the re-embedding actors did not load {self.target.model_id} within "
                f"{self.settings.worker_start_timeout_s}s (RAYLENS_WORKER_START_TIMEOUT_S)"
            ) from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise ModelLoadError(launch.creation_error(exc)) from None

    def close(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # gone already
                pass
        self.actors = []
        self.store.close()

    # ---- passes ---------------------------------------------------------------------------------
    def _pages(self) -> Iterator[list[Job]]:
        cursor: str | None = None
        while True:
            jobs, cursor = self.store.list(
                JobState.DONE, limit=max(self.batch * 4, 256), cursor=cursor
            )
            yield jobs
            if cursor is None:
                return

    def _lacking(self, page: list[Job]) -> list[Job]:
        """The jobs of a page whose content the new collection lacks (one existence call),
        each content once per pass; faces-only jobs and contents already there are noted."""
        candidates: list[tuple[Job, str]] = []
        for job in page:
            if job.sha256 in self._seen or job.sha256 in self._failed:
                continue
            if not job.pipeline.embeds:  # faces only: no image vector to redo
                self._faces_only.add(job.sha256)
                continue
            self._seen.add(job.sha256)
            candidates.append((job, point_id(job.sha256, self.target.model_id, _first_part(job))))
        if not candidates:
            return []
        have = set(self._index("existing", [pid for _, pid in candidates], self.target.collection))
        todo = []
        for job, pid in candidates:
            if pid not in have:
                todo.append(job)
            elif job.sha256 not in self._embedded:  # there from an earlier run
                self._skipped.add(job.sha256)
        return todo

    def one_pass(self, limit: int | None = None) -> int:
        """Embed every done content not in the new collection yet; returns how many it sent
        (0: nothing new). Stops after `limit` embedded in this run."""
        sent = 0
        self.run.passes += 1
        self._seen.clear()  # each pass looks again at what finished meanwhile
        for page in self._pages():
            todo = self._lacking(page)
            self.progress("skipped", len(self._skipped) - self.run.skipped, None)
            self.run.skipped = len(self._skipped)
            if limit is not None:
                todo = todo[: max(0, limit - self.run.embedded - len(self.run.unavailable))]
            if todo:
                sent += len(todo)
                self._embed(todo)
            if limit is not None and self.run.embedded + len(self.run.unavailable) >= limit:
                return sent
        return sent

    def nothing_lacking(self) -> bool:
        """After a limited run: is every done content in the new collection (or listed)?"""
        self._seen.clear()
        return not any(self._lacking(page) for page in self._pages())

    def _embed(self, jobs: list[Job]) -> None:
        chunks = [jobs[i : i + self.batch] for i in range(0, len(jobs), self.batch)]
        t0 = time.perf_counter()
        pending: dict[Any, list[Job]] = {}
        k = 0
        while chunks or pending:
            while chunks and len(pending) < 2 * len(self.actors):  # two batches per actor
                chunk = chunks.pop(0)
                pending[self.actors[k % len(self.actors)].embed.remote(chunk)] = chunk
                k += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(ready[0])
            out = ray.get(ready[0])
            self.run.embedded += len(out["done"])
            by_id = {j.id: j for j in chunk}
            self._embedded.update(by_id[i].sha256 for i in out["done"])
            for f in out["failed"]:
                job = by_id[f["job_id"]]
                self.run.unavailable.append(
                    {"job_id": job.id, "sha256": job.sha256, "source": job.source, **f}
                )
                self._failed.add(job.sha256)  # listed once; a later run tries it again
            self._fence(chunk)
            self.progress("embedded", len(out["done"]), None)
        self.run.embed_s += time.perf_counter() - t0

    def _fence(self, chunk: list[Job]) -> None:
        """Invariant 12: a content deleted after it was listed must not come back through the
        new collection. Tombstones of the chunk's jobs are looked up and their points removed."""
        tombs = ray.get(self.queue.tombstones.remote([j.id for j in chunk]))
        if tombs:
            shas = sorted({t["sha256"] for t in tombs.values()})
            self._index("delete_content", shas, [self.target.collection])
            self.run.purged += len(shas)

    # ---- the whole run --------------------------------------------------------------------------
    def execute(self, *, limit: int | None = None, switch: bool = True) -> ReindexRun:
        t0 = time.perf_counter()
        total = self.store.counts()[JobState.DONE]
        self.progress("total", total, total)
        try:
            for _ in range(MAX_PASSES):
                if self.one_pass(limit) == 0:
                    break
                if limit is not None and self.run.embedded + len(self.run.unavailable) >= limit:
                    break
            else:
                log.warning("jobs kept finishing through %d passes; switching anyway", MAX_PASSES)
            self.run.complete = limit is None or self.nothing_lacking()
            if switch and self.run.complete:
                self._switch()
                self.one_pass()  # what old-model workers finished while they rolled over
        finally:
            self.run.not_embedded = len(self._faces_only - self._embedded - self._skipped)
            try:
                self.run.points = int(self._index("count", self.target.collection))
            except Exception as exc:  # the count is a report, not the work
                log.warning("counting the new collection failed: %s", exc)
            self.close()
            self.run.took_s = round(time.perf_counter() - t0, 3)
        return self.run

    def _switch(self) -> None:
        t0 = time.perf_counter()
        record = self.current.switched_to(self.target)
        ray.get(self.queue.switch_model.remote(record.to_json()))
        self.run.switched = True
        if self._server_index is not None:  # for readers outside raylens: one stable name
            alias = alias_for(self.settings)
            self._server_index.point_alias(alias, self.target.collection)
            self.run.alias = alias
        self.progress("switched", 1, None)
        out: dict[str, Any] = {"stored_s": round(time.perf_counter() - t0, 3)}
        try:
            sup = launch.supervisor_handle(self.settings)
        except Exception:
            sup = None
        if sup is None:  # no supervisor (not started by `raylens up`): workers stay as they are
            out["rolled"] = None
            out["note"] = "no supervisor: restart the workers (`raylens up`) to load the new model"
        else:
            try:
                out.update(ray.get(sup.switch_model.remote(record.to_json())))
            except Exception as exc:  # stored already: say so, and how to finish the roll
                out["error"] = (
                    f"switched, but rolling the workers over failed: {exc}"[:1000]
                    + "; run the same `raylens reindex` again to finish it"
                )
        out["took_s"] = round(time.perf_counter() - t0, 3)
        self.run.switch = out


def target_for(
    settings: Settings, model: str, pretrained: str, model_config: str | None, current: ActiveModel
) -> ActiveModel:
    """The record to re-embed into: a model whose collection raylens already holds (a switch
    back) reuses it; a new one gets `{collection}--{model id}`."""
    mid = model_id_for(model, pretrained)
    collection = current.routes().get(mid) or collection_for(settings, mid)
    return ActiveModel(model, pretrained, model_config, mid, collection)


def reindex(
    settings: Settings,
    model: str,
    pretrained: str,
    model_config: str | None = None,
    *,
    limit: int | None = None,
    switch: bool = True,
    actors: int | None = None,
    batch: int | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Re-embed and (when complete and `switch`) switch; returns ReindexRun.to_dict(), or
    {"already_active": True, ...} when the model is the active one."""
    current = launch.active_model(settings)
    target = target_for(settings, model, pretrained, model_config, current)
    if target.model_id == current.model_id:
        out: dict[str, Any] = {
            "already_active": True,
            "model_id": current.model_id,
            "collection": current.collection,
        }
        behind = [
            r.get("worker")
            for r in launch.worker_reports(settings, timeout_s=30)
            if r.get("model_id") not in (None, current.model_id)
        ]
        sup = launch.supervisor_handle(settings)
        if behind and sup is not None:  # an earlier switch whose roll did not finish
            out["switch"] = ray.get(sup.switch_model.remote(current.to_json()))
        return out
    r = Reindexer(settings, target, batch=batch, progress=progress)
    r.start_actors(actors or settings.reindex_actors)
    return r.execute(limit=limit, switch=switch).to_dict()
