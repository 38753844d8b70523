"""Supervisor: a progress-based health check of the workers (a ping is not enough).

A worker whose inference hangs still answers actor calls and its heartbeat thread still runs;
only its progress stops. Every `supervise_interval_s` the supervisor reads each worker's report;
a worker holding jobs without progress for `worker_stall_timeout_s` (or not answering at all) is
killed and restarted by Ray (it reloads its model), and its leases go back to the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from raylens.cluster import metrics, system
from raylens.cluster.settings import Settings

log = logging.getLogger("raylens.supervisor")


class Supervisor:
    """Named detached async actor; one per raylens namespace."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replaced: list[dict[str, Any]] = []
        self.checks = 0
        self._task: asyncio.Task[None] | None = None

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def ping(self) -> bool:
        self._ensure_started()
        return True

    async def report(self) -> dict[str, Any]:
        self._ensure_started()
        return {"checks": self.checks, "replaced": list(self.replaced)}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.supervise_interval_s)
            try:
                await self.check()
            except Exception:  # never die: the next round tries again
                log.exception("supervisor check failed")

    async def check(self) -> list[str]:
        """One round: replace every stalled or unresponsive worker; returns their names."""
        self.checks += 1
        loop = asyncio.get_running_loop()
        workers = await loop.run_in_executor(None, system.worker_handles, self.settings)
        answers = await asyncio.gather(
            *(asyncio.wait_for(w.report.remote(), timeout=30) for w in workers),
            return_exceptions=True,
        )
        metrics.record_workers(answers, self.settings.worker_stall_timeout_s)
        replaced = []
        for worker, report in zip(workers, answers):
            if isinstance(report, ray.exceptions.RayActorError):
                continue  # dead or restarting: Ray brings it back, its leases expire
            if isinstance(report, BaseException):
                why, worker_id = f"does not answer ({type(report).__name__})", None
            elif report.get("stalled_s", 0.0) > self.settings.worker_stall_timeout_s:
                why = f"no progress for {report['stalled_s']:.0f}s while holding jobs"
                worker_id = report["worker_id"]
            else:
                continue
            name = report["worker"] if isinstance(report, dict) else "?"
            log.warning("worker %s %s: replacing it", name, why)
            ray.kill(worker, no_restart=False)  # Ray restarts it; __init__ reloads the model
            metrics.WORKERS_REPLACED.inc()
            released = 0
            if worker_id is not None:
                queue = system.queue_handle(self.settings)
                released = await queue.release.remote(
                    worker_id, f"worker {worker_id} stalled ({why}); replaced"
                )
            self.replaced.append(
                {"worker": name, "why": why, "at": time.time(), "released": released}
            )
            replaced.append(name)
        return replaced
