"""Webhooks: a named detached async actor that POSTs each finished job to its callback_url.

It follows the job events (JobQueue.events, states done and failed) from a cursor kept in the
job store, so a restarted actor goes on where it left off. For each event of a job that has a
callback_url it delivers the signed body (cluster/webhooks.py), retrying with exponential
backoff for webhook_retry_s; every attempt is recorded (`webhook:<job id>` in the job store,
answered by GET /v1/jobs/{id}/deliveries). The cursor advances past an event only once its
delivery is settled (delivered, or given up), so a crash delivers again what was in flight:
delivery is at least once, and receivers deduplicate by the Raylens-Delivery header. A job's
state never depends on its webhook: a receiver that never answers leaves the job done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from raylens.actors.handles import NamedActor
from raylens.cluster import webhooks
from raylens.cluster.settings import Settings
from raylens.errors import EventsExpired, RaylensError

log = logging.getLogger("raylens.webhooks")

CURSOR_KEY = "webhooks_cursor"
TERMINAL = ["done", "failed"]


def delivery_key(job_id: str) -> str:
    return f"webhook:{job_id}"


class Webhooks:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delivered = 0
        self.failed = 0
        self._inflight: dict[str, asyncio.Task[None]] = {}  # event id -> its delivery
        self._order: list[str] = []  # event ids seen, in order, not yet behind the cursor
        self._task: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(settings.webhook_concurrency)
        self._queue_actor = NamedActor(settings.queue_actor_name, settings.namespace)
        try:  # as the supervisor: the loop runs from construction, so a restart resumes
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
            "delivered": self.delivered,
            "failed": self.failed,
            "in_flight": len(self._inflight),
        }

    async def _queue(self, method: str, *args: Any) -> Any:
        """Call the queue through its cached handle (looked up again after a failure)."""
        loop = asyncio.get_running_loop()
        queue = await loop.run_in_executor(None, self._queue_actor.handle)
        try:
            return await getattr(queue, method).remote(*args)
        except RaylensError:
            raise
        except Exception:
            self._queue_actor.forget()  # the queue may have been re-created
            raise

    async def _loop(self) -> None:
        cursor: str | None = None  # every event up to here is settled (kept in the store)
        read: str | None = None  # every event up to here has been read
        while True:
            try:
                if cursor is None:
                    cursor = await self._queue("get_meta", CURSOR_KEY) or await self._queue(
                        "last_event_id"
                    )
                    read = cursor
                page = await self._queue(
                    "events", read, None, self.settings.events_keepalive_s, None, TERMINAL
                )
                await self._start(page["events"])
                read = page["last"] or read
                if not self._order and read is not None and read != cursor:  # past filtered-out
                    self._order.append(read)
                cursor = await self._settle(cursor)
            except EventsExpired:  # away longer than the event window: go on from now
                log.error("webhook events expired while raylens-webhooks was away; resuming now")
                self._order, cursor = [], None
                await self._queue("put_meta", CURSOR_KEY, await self._queue("last_event_id"))
            except Exception:  # the queue restarting: try again shortly, never die
                log.warning("webhooks: reading events failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _start(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        jobs = await self._queue("states", [e["job_id"] for e in events])
        for event, job in zip(events, jobs):
            self._order.append(event["id"])
            if job is not None and job.callback_url and job.state.terminal:
                self._inflight[event["id"]] = asyncio.get_running_loop().create_task(
                    self._deliver(event["id"], job)
                )

    async def _settle(self, cursor: str | None) -> str | None:
        """Move the cursor past every event at the head whose delivery is settled."""
        moved = cursor
        while self._order:
            head = self._order[0]
            task = self._inflight.get(head)
            if task is not None and not task.done():
                break
            self._inflight.pop(head, None)
            moved = self._order.pop(0)
        if moved != cursor and moved is not None:
            await self._queue("put_meta", CURSOR_KEY, moved)
        return moved

    async def _record(self, job_id: str, record: dict[str, Any]) -> None:
        await self._queue("put_meta", delivery_key(job_id), json.dumps(record))

    async def _deliver(self, event_id: str, job: Any) -> None:
        s = self.settings
        record: dict[str, Any] = {
            "url": job.callback_url,
            "event_id": event_id,
            "state": "pending",
            "attempts": [],
        }
        payload = webhooks.body(job, event_id)
        give_up_at = time.time() + s.webhook_retry_s
        attempt = 0
        async with self._limit, httpx.AsyncClient(timeout=s.webhook_timeout_s) as http:
            while True:
                attempt += 1
                t0 = time.time()
                entry: dict[str, Any] = {"at": t0}
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, webhooks.check_url, job.callback_url, s.webhook_allow_private
                    )
                    resp = await http.post(
                        job.callback_url,
                        content=payload,
                        headers={
                            "Content-Type": "application/json",
                            webhooks.SIGNATURE_HEADER: webhooks.sign(
                                s.webhook_secret or "", payload
                            ),
                            webhooks.DELIVERY_HEADER: event_id,
                            "User-Agent": "raylens-webhooks",
                        },
                    )
                    entry["status"] = resp.status_code
                    ok = 200 <= resp.status_code < 300
                except RaylensError as exc:  # the URL now resolves to a refused address
                    entry["error"], ok = exc.message, False
                    give_up_at = 0.0
                except httpx.HTTPError as exc:
                    entry["error"], ok = f"{type(exc).__name__}: {exc}"[:300], False
                entry["seconds"] = round(time.time() - t0, 3)
                record["attempts"].append(entry)
                if ok:
                    record["state"] = "delivered"
                    self.delivered += 1
                    break
                delay = webhooks.next_delay(
                    attempt, s.webhook_backoff_first_s, s.webhook_backoff_max_s
                )
                if time.time() + delay > give_up_at:
                    record["state"] = "failed"
                    self.failed += 1
                    break
                await self._safe_record(job.id, record)
                await asyncio.sleep(delay)
        await self._safe_record(job.id, record)

    async def _safe_record(self, job_id: str, record: dict[str, Any]) -> None:
        try:
            await self._record(job_id, record)
        except Exception:  # the record is for people; the delivery goes on regardless
            log.warning("could not record the webhook delivery of job %s", job_id, exc_info=True)
