"""Supervisor: a progress-based health check of the workers (a ping is not enough), and scaling.

A worker whose inference hangs still answers actor calls and its heartbeat thread still runs;
only its progress stops. Every `supervise_interval_s` the supervisor reads each worker's report;
a worker holding jobs without progress for `worker_stall_timeout_s` (or not answering at all) is
killed and restarted by Ray (it reloads its model), and its leases go back to the queue at once.
A worker that has not answered yet since it was created (pending resources, such as a GPU node
the autoscaler is still adding, or loading its model) gets `worker_start_timeout_s` first.

Then, when max_workers > min_workers, one scaling step (cluster/scaler.py): add a worker for a
backlog, or drain and remove one idle for `scale_down_idle_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from raylens.actors import launch, metrics
from raylens.cluster import scaler
from raylens.cluster.active_model import ActiveModel
from raylens.cluster.active_model import apply as apply_model
from raylens.cluster.settings import Settings
from raylens.errors import ModelLoadError
from raylens.models.model_id import model_id_for

log = logging.getLogger("raylens.supervisor")


class Supervisor:
    """Named detached async actor; one per raylens namespace."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replaced: list[dict[str, Any]] = []
        self.checks = 0
        self._task: asyncio.Task[None] | None = None
        self._first_seen: dict[str, float] = {}  # worker name -> when this supervisor saw it
        self._answered: set[str] = set()  # workers that have answered a report at least once
        self._draining: dict[str, asyncio.Task[Any]] = {}
        self.scale_state = scaler.ScalerState()
        self._rolling = False  # a model switch is rolling the workers over
        # The loop runs from construction, so a supervisor that Ray restarts (max_restarts=-1)
        # goes on supervising with no caller having to ping it first. Ray runs an async actor's
        # __init__ on its event loop; where a Ray version does not, ping/report start it.
        try:
            self._ensure_started()
        except RuntimeError:
            pass

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def ping(self) -> bool:
        self._ensure_started()
        return True

    async def report(self) -> dict[str, Any]:
        self._ensure_started()
        return {
            "checks": self.checks,
            "replaced": list(self.replaced),
            "scaling": self.settings.scaling,
            "min_workers": self.settings.worker_min,
            "max_workers": self.settings.worker_max,
            "scale_history": list(self.scale_state.history[-50:]),
            "draining": sorted(self._draining),
        }

    async def _loop(self) -> None:
        await self._follow_active_model()
        while True:
            await asyncio.sleep(self.settings.supervise_interval_s)
            try:
                await self.check()
            except Exception:  # never die: the next round tries again
                log.exception("supervisor check failed")
            self._nudge_index()

    async def _follow_active_model(self) -> None:
        """Take the active model from the queue: a supervisor that Ray restarts after a model
        switch gets the settings of its creation, and would start workers of the old model."""
        try:
            record = await launch.queue_handle(self.settings).active_model.remote()
        except Exception as exc:  # no queue yet: the settings' model it is, until a switch
            log.warning("could not read the active model from the queue: %s", exc)
            return
        active = ActiveModel.from_json(record)
        mine = model_id_for(self.settings.clip_model, self.settings.clip_pretrained)
        self.settings = apply_model(self.settings, active)
        if mine != active.model_id:  # restarted during (or after) a switch: finish its roll
            log.warning("workers of %s found after a switch to %s: rolling", mine, active.model_id)
            asyncio.get_running_loop().create_task(self.switch_model(record))

    async def switch_model(self, record: str) -> dict[str, Any]:
        """Roll every worker over to the active model `record` (already stored by the queue),
        one at a time: start a worker of the new model, wait until it has loaded it, then drain
        one of the old model (it finishes what it holds) and remove it. Scaling pauses
        meanwhile. Where the new worker cannot start beside the old ones (no free CPU or GPU),
        an old one is drained first. Returns what it did, with timings."""
        t0 = time.perf_counter()
        active = ActiveModel.from_json(record)
        self.settings = apply_model(self.settings, active)
        model_id = active.model_id
        loop = asyncio.get_running_loop()
        self._rolling = True
        rolled: list[dict[str, Any]] = []
        try:
            named = await loop.run_in_executor(None, launch.named_workers, self.settings)
            named = [(n, w) for n, w in named if n not in self._draining]
            answers = await self._reports([w for _, w in named], [n for n, _ in named])
            old = [
                (n, w)
                for (n, w), r in zip(named, answers)
                if not (isinstance(r, dict) and r.get("model_id") == model_id)
            ]
            taken = {n for n, _ in named}
            for name, worker in old:
                new_name = scaler.free_name(self.settings, taken)
                taken.add(new_name)
                step: dict[str, Any] = {"old": name, "new": new_name}
                s0 = time.perf_counter()
                new = await loop.run_in_executor(None, launch.start_worker, self.settings, new_name)
                self._first_seen[new_name] = time.time()
                wait = min(60.0, self.settings.worker_start_timeout_s)
                self._draining[name] = asyncio.current_task()  # type: ignore[assignment]
                try:
                    if not await self._loaded(new, wait):
                        step["drained_first"] = True  # no room beside it: make room
                        await self._remove(name, worker)
                        if not await self._loaded(new, self.settings.worker_start_timeout_s):
                            raise ModelLoadError(
                                f"worker {new_name} of {model_id} did not load its model within "
                                f"{self.settings.worker_start_timeout_s}s "
                                "(RAYLENS_WORKER_START_TIMEOUT_S)"
                            )
                    else:
                        await self._remove(name, worker)
                finally:
                    self._draining.pop(name, None)
                step["took_s"] = round(time.perf_counter() - s0, 2)
                rolled.append(step)
        finally:
            self._rolling = False
        return {
            "model_id": model_id,
            "rolled": rolled,
            "took_s": round(time.perf_counter() - t0, 2),
        }

    async def _loaded(self, worker: Any, timeout_s: float) -> bool:
        """Whether the worker answers a report (its model loaded) within timeout_s; a worker
        whose model failed to load raises ModelLoadError with its own message."""
        try:
            await asyncio.wait_for(worker.report.remote(), timeout=timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        except ray.exceptions.RayActorError as exc:
            ray.kill(worker, no_restart=True)
            raise ModelLoadError(launch.creation_error(exc)) from None

    def _nudge_index(self) -> None:
        """The embedded engine's HNSW builds advance on index calls; when nothing calls (no
        ingest, no search), each round calls for them. Fire and forget: never waits on it."""
        if self.settings.qdrant_url:
            return
        try:
            launch.index_handle(self.settings).maintain.remote()
        except Exception:  # no index actor now: the next round tries again
            pass

    async def _reports(self, workers: list[Any], names: list[str]) -> list[Any]:
        """Each worker's report, or the exception; a worker never seen answering gets a short
        timeout (it may be pending resources for minutes)."""
        now = time.time()
        for name in names:
            self._first_seen.setdefault(name, now)

        async def one(worker: Any, name: str) -> Any:
            timeout = 30.0 if name in self._answered else 2.0
            return await asyncio.wait_for(worker.report.remote(), timeout=timeout)

        answers = await asyncio.gather(
            *(one(w, n) for w, n in zip(workers, names)), return_exceptions=True
        )
        for name, report in zip(names, answers):
            if isinstance(report, dict):
                self._answered.add(name)
        return answers

    def _starting(self, name: str) -> bool:
        """Never answered yet and still within its start time: pending or loading, not hung."""
        if name in self._answered:
            return False
        waited = time.time() - self._first_seen.get(name, time.time())
        return waited < self.settings.worker_start_timeout_s

    async def check(self) -> list[str]:
        """One round: replace every stalled or unresponsive worker (returns their names), then
        take at most one scaling step."""
        self.checks += 1
        loop = asyncio.get_running_loop()
        named = await loop.run_in_executor(None, launch.named_workers, self.settings)
        named = [(n, w) for n, w in named if n not in self._draining]
        names = [n for n, _ in named]
        workers = [w for _, w in named]
        answers = await self._reports(workers, names)
        metrics.record_workers(answers, self.settings.worker_stall_timeout_s)
        replaced = []
        for worker, name, report in zip(workers, names, answers):
            if isinstance(report, ray.exceptions.RayActorError):
                continue  # dead or restarting: Ray brings it back, its leases expire
            if isinstance(report, BaseException):
                if self._starting(name):
                    continue
                why, worker_id = f"does not answer ({type(report).__name__})", None
            elif report.get("stalled_s", 0.0) > self.settings.worker_stall_timeout_s:
                why = f"no progress for {report['stalled_s']:.0f}s while holding jobs"
                worker_id = report["worker_id"]
            else:
                continue
            log.warning("worker %s %s: replacing it", name, why)
            ray.kill(worker, no_restart=False)  # Ray restarts it; __init__ reloads the model
            metrics.WORKERS_REPLACED.inc()
            released = 0
            if worker_id is not None:
                queue = launch.queue_handle(self.settings)
                released = await queue.release.remote(
                    worker_id, f"worker {worker_id} stalled ({why}); replaced"
                )
            self.replaced.append(
                {"worker": name, "why": why, "at": time.time(), "released": released}
            )
            replaced.append(name)
        if self._rolling:  # a model switch adds and removes workers itself
            return replaced
        if self.settings.scaling or len(workers) < self.settings.worker_min:
            await self.scale(workers, names, answers)
        return replaced

    async def scale(self, workers: list[Any], names: list[str], answers: list[Any]) -> str:
        """One scaling step from this round's reports and the queue's backlog."""
        stats = await launch.queue_handle(self.settings).stats.remote()
        views = [
            scaler.WorkerView(
                name,
                ready=isinstance(report, dict),
                held_leases=report.get("held_leases", 0) if isinstance(report, dict) else 0,
                idle_s=scaler.idle_seconds(report) if isinstance(report, dict) else 0.0,
                paused=bool(report.get("paused")) if isinstance(report, dict) else False,
            )
            for name, report in zip(names, answers)
        ]
        backlog = sum(stats["depth"].values())
        oldest = max(stats.get("oldest_queued_s", {}).values(), default=0.0)
        decision = scaler.decide(self.settings, views, backlog, oldest, self.scale_state)
        if decision.action == "hold" or decision.name is None:
            return decision.action
        now = time.time()
        self.scale_state.last_action_at = now
        self.scale_state.history.append(
            {"at": now, "action": decision.action, "worker": decision.name, "why": decision.reason}
        )
        log.warning("scaling %s: %s (%s)", decision.action, decision.name, decision.reason)
        if decision.action == "up":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, launch.start_worker, self.settings, decision.name)
            self._first_seen[decision.name] = now
        else:
            worker = workers[names.index(decision.name)]
            task = asyncio.get_running_loop().create_task(self._remove(decision.name, worker))
            self._draining[decision.name] = task
        return decision.action

    async def _remove(self, name: str, worker: Any) -> None:
        """Drain (finish what it holds, lease nothing more), then remove it for good."""
        try:
            out = await worker.drain.remote(self.settings.lease_timeout_s)
            log.warning("worker %s drained: %s", name, out)
        except Exception as exc:  # dead already: its leases expire and are retried
            log.warning("worker %s did not drain: %s", name, exc)
        finally:
            ray.kill(worker, no_restart=True)
            self._answered.discard(name)
            self._first_seen.pop(name, None)
            self._draining.pop(name, None)
