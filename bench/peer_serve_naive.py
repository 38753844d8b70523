"""Peer "naive Serve": one Ray Serve HTTP deployment, one image per request, no @serve.batch.

One replica; its __init__ loads the model once and opens the Qdrant local collection. Each
POST carries one image's bytes; the replica embeds it (decode + forward at batch 1, like
bench_core's raw-limit row), upserts the vector and only then answers, so a response means
the vector is stored. The embed runs in a thread of the replica (the event loop stays free for
Serve); at most max_ongoing_requests (Serve's default, 5) requests run in the replica at once,
the proxy queues the rest.

The client (this process) posts every image as its own request from `clients` (32) concurrent
asyncio + httpx clients. Latency = request -> response; images/s = images / (first request
-> last response). Model load and a warm-up request happen before the clock starts.

    uv run python bench/peer_serve_naive.py --images 24 --model ViT-B-32 [--threads 2] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_common import (  # noqa: E402
    DEFAULT_TIMEOUT_S,
    EmbedStore,
    Journal,
    PeerMemory,
    deploy,
    image_keys,
    main,
    peer_row,
    serve_cluster,
    warm_up,
)

NAME = "serve_naive"
APP = "peer-naive"
ROUTE = "/embed"
CLIENTS = 32


def naive_app(
    model: str,
    pretrained: str,
    model_config: Path | None,
    threads: int,
    qdrant_path: Path,
    max_ongoing_requests: int | None,
    journal: Journal | None = None,
) -> Any:
    """The HTTP deployment (one replica, one image per request)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    options: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": threads}}
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests

    @serve.deployment(**options)
    class NaiveEmbed:
        def __init__(self) -> None:
            self.work = EmbedStore(model, pretrained, model_config, threads, qdrant_path, journal)

        async def __call__(self, request: Request) -> JSONResponse:
            data = await request.body()
            key = request.query_params.get("key")
            warmup = request.query_params.get("warmup") == "1"
            if not key and not warmup:
                return JSONResponse({"error": "missing ?key="}, status_code=400)
            loop = asyncio.get_running_loop()
            try:
                if warmup:  # the same work, not stored
                    await loop.run_in_executor(None, self.work.embed, data)
                    return JSONResponse({"warmup": True})
                stored_at = await loop.run_in_executor(None, self.work.embed_store, data, key)
            except Exception as exc:  # e.g. an undecodable image: this request fails
                return JSONResponse(
                    {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}, status_code=422
                )
            return JSONResponse({"stored_at": stored_at})

        def count(self) -> int:
            return self.work.count()

        def info(self) -> dict[str, Any]:
            return self.work.info()

    return NaiveEmbed


async def post_all(
    url: str, keys: list[str], data: list[bytes], clients: int, timeout_s: float
) -> dict[str, Any]:
    """`clients` concurrent clients, one image per POST; every request answered or failed."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float | None] = [None] * len(data)
    ends: list[float] = []
    errors: list[str] = []
    failed_keys: list[str] = []
    next_item = iter(range(len(data)))

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as http:

        async def client() -> None:
            for i in next_item:  # shared iterator: each client takes the next image
                t0 = time.perf_counter()
                try:
                    resp = await http.post(ROUTE, params={"key": keys[i]}, content=data[i])
                except httpx.TransportError as exc:
                    errors.append(f"{keys[i]}: {type(exc).__name__}: {exc}"[:300])
                    failed_keys.append(keys[i])
                    continue
                t1 = time.perf_counter()
                if resp.status_code == 200:
                    latencies[i] = t1 - t0
                    ends.append(t1)
                else:
                    errors.append(f"{keys[i]}: HTTP {resp.status_code} {resp.text[:200]}")
                    failed_keys.append(keys[i])

        started = time.perf_counter()
        tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    answered = sum(v is not None for v in latencies) + len(errors)
    if answered != len(data):
        raise TimeoutError(
            f"{NAME}: {len(data) - answered} of {len(data)} requests got no answer within "
            f"{timeout_s:.0f}s"
        )
    return {
        "started": started,
        "last_done": max(ends, default=started),
        "latencies": [v for v in latencies if v is not None],
        "errors": errors,
        "failed_keys": failed_keys,
    }


def run(
    paths: list[Path],
    model: str,
    threads: int,
    work_dir: Path,
    pretrained: str = "none",
    model_config: Path | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    clients: int = CLIENTS,
    max_ongoing_requests: int | None = None,
    journal: Path | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Embed `paths` through a naive Serve HTTP deployment; the row (_peer_common.peer_row).

    timeout_s bounds the deployment (model load) and, separately, the run itself. `journal`
    and strict=False are for the failure drills: every image's start and store appended to
    that file, and a collection that disagrees with the answers reported, not raised.
    """
    keys = image_keys(NAME, paths)
    work_dir.mkdir(parents=True, exist_ok=True)
    data = [p.read_bytes() for p in paths]  # file reads are not what we measure
    with PeerMemory() as mem:  # RowMemory(include_self=True), + own tree
        with serve_cluster(NAME, threads, http=True) as port:
            url = f"http://127.0.0.1:{port}"
            t_setup = time.perf_counter()
            deployment = naive_app(
                model,
                pretrained,
                model_config,
                threads,
                work_dir / "qdrant",
                max_ongoing_requests,
                Journal(journal),
            )
            ongoing = deployment.max_ongoing_requests
            handle = deploy(deployment.bind(), APP, ROUTE, timeout_s)
            info = handle.info.remote().result(timeout_s=60)
            warm_up(NAME, f"{url}{ROUTE}", data[0])
            setup_s = time.perf_counter() - t_setup
            # ---- the clock starts
            up = asyncio.run(post_all(url, keys, data, clients, timeout_s))
            points = int(handle.count.remote().result(timeout_s=60))
    done = len(up["latencies"])
    if strict and points != done:
        raise RuntimeError(f"{NAME}: {done} requests succeeded but the collection has {points}")
    return peer_row(
        NAME,
        images=len(paths),
        done=done,
        failed=len(up["errors"]),
        first_submit=up["started"],
        last_stored=up["last_done"],
        latencies_s=up["latencies"],
        mem=mem,
        notes=(
            f"Serve HTTP deployment, one image per POST, no @serve.batch; 1 replica "
            f"({threads} CPUs, {info['torch_threads']} torch threads), max_ongoing_requests "
            f"{ongoing}{' (Serve default)' if max_ongoing_requests is None else ''}, embed in "
            f"the replica's default thread pool; {clients} concurrent httpx clients"
        ),
        points=points,
        clients=clients,
        max_ongoing_requests=ongoing,
        torch_threads=info["torch_threads"],
        replica_num_cpus=threads,
        device=info["device"],
        setup_s=setup_s,
        errors=up["errors"][:5],
        failed_keys=up["failed_keys"],
    )


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
