"""Peer "serve_batch": the online endpoint a good Ray Serve user would write, `@serve.batch`.

One Serve HTTP deployment, one image per POST (like the raylens_http row), with Serve's
dynamic batching:

- `@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.1)`: concurrent requests are
  gathered into one forward pass of up to 32 images (raylens's RAYLENS_MAX_BATCH_SIZE default;
  the wait is tuned, see BATCH_WAIT_S);
- `max_ongoing_requests` = 128 (Serve's default of 5 would cap every batch at 5: only requests
  inside the replica can join a batch); 32 clients, so batches fill from the clients alone;
- decoding runs off the event loop, in a thread pool of `threads` threads (one image each, as
  it arrives, before it joins a batch); the batched forward and the upsert run in one more
  thread, so the loop keeps accepting requests meanwhile;
- vectors go to Qdrant Edge, the engine raylens embeds (raylens's own VectorIndex over it; one
  replica owns the folder), one upsert per batch, then every request of the batch is answered:
  a response means its vector is stored.

Latency = request -> response; images/s = images / (first request -> last response). Model
load and a warm-up request happen before the clock starts.

    uv run python bench/peer_serve_batch.py --images 24 --model ViT-B-32 [--threads 2] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_common import (  # noqa: E402
    DEFAULT_TIMEOUT_S,
    Journal,
    PeerMemory,
    decode_like_raw,
    deploy,
    image_keys,
    main,
    peer_row,
    point_id,
    serve_cluster,
    warm_up,
)
from peer_serve_naive import post_all  # noqa: E402

NAME = "serve_batch"
APP = "peer-batch"
ROUTE = "/embed"
CLIENTS = 32
MAX_BATCH_SIZE = 32
# Tuned on this machine (2 cores, ViT-B-32, 96 images, 32 clients): a 10 ms wait formed
# batches of 1.7 on average (7.2 img/s); 100 ms, batches of 6.9 (11.6 img/s).
BATCH_WAIT_S = 0.1
MAX_ONGOING = 128
COLLECTION = "peer"


def batch_app(
    model: str,
    pretrained: str,
    model_config: Path | None,
    threads: int,
    qdrant_dir: Path,
    max_batch_size: int,
    batch_wait_s: float,
    max_ongoing_requests: int,
    journal: Journal | None = None,
) -> Any:
    """The HTTP deployment (one replica, @serve.batch over the forward pass and the upsert)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": threads},
    )
    class BatchEmbed:
        def __init__(self) -> None:
            from concurrent.futures import ThreadPoolExecutor

            from raylens.cluster.index import VectorIndex
            from raylens.cluster.settings import Settings
            from raylens.models.clip import ClipEmbedder

            self.emb = ClipEmbedder(
                model, pretrained, model_config=model_config, device="auto", threads=threads
            )
            settings = Settings(
                data_dir=qdrant_dir, qdrant_collection=COLLECTION, index_build_points=0
            )
            self.index = VectorIndex(settings, self.emb.dim)
            self.decode_pool = ThreadPoolExecutor(threads, "decode")
            self.model_pool = ThreadPoolExecutor(1, "model")
            self.journal = journal or Journal(None)
            self.batches: list[int] = []
            self.seconds = {"decode": 0.0, "infer": 0.0, "write": 0.0}

        def _decode(self, data: bytes) -> Any:
            t0 = time.perf_counter()
            try:
                return decode_like_raw(self.emb, data)
            finally:
                self.seconds["decode"] += time.perf_counter() - t0  # summed over threads

        def _embed_store(self, pixels: list[Any], keys: list[str]) -> float:
            import numpy as np

            t0 = time.perf_counter()
            vectors = self.emb.embed_images(np.stack(pixels))
            t1 = time.perf_counter()
            self.index.upsert([point_id(k) for k in keys], vectors, [{"key": k} for k in keys])
            self.journal.stored(*keys)
            self.seconds["infer"] += t1 - t0
            self.seconds["write"] += time.perf_counter() - t1
            return time.time()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def store(self, items: list[tuple[Any, str]]) -> list[float]:
            self.batches.append(len(items))
            loop = asyncio.get_running_loop()
            at = await loop.run_in_executor(
                self.model_pool, self._embed_store, [p for p, _ in items], [k for _, k in items]
            )
            return [at] * len(items)

        async def __call__(self, request: Request) -> JSONResponse:
            data = await request.body()
            key = request.query_params.get("key")
            warmup = request.query_params.get("warmup") == "1"
            if not key and not warmup:
                return JSONResponse({"error": "missing ?key="}, status_code=400)
            loop = asyncio.get_running_loop()
            if not warmup:
                self.journal.began(key)
            try:
                pixels = await loop.run_in_executor(self.decode_pool, self._decode, data)
            except Exception as exc:  # an undecodable image fails its own request only
                return JSONResponse(
                    {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}, status_code=422
                )
            if warmup:  # the same forward, not stored
                await loop.run_in_executor(self.model_pool, self.emb.embed_images, pixels[None])
                return JSONResponse({"warmup": True})
            stored_at = await self.store((pixels, key))
            return JSONResponse({"stored_at": stored_at})

        def count(self) -> int:
            return self.index.count()

        def info(self) -> dict[str, Any]:
            import torch

            sizes = self.batches
            return {
                "device": self.emb.device,
                "torch_threads": torch.get_num_threads(),
                "batches": len(sizes),
                "mean_batch": sum(sizes) / len(sizes) if sizes else 0.0,
                "max_batch": max(sizes, default=0),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            }

    return BatchEmbed


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
    max_batch_size: int = MAX_BATCH_SIZE,
    batch_wait_s: float = BATCH_WAIT_S,
    max_ongoing_requests: int = MAX_ONGOING,
    journal: Path | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Embed `paths` through a @serve.batch HTTP deployment into Qdrant Edge; the row.

    `journal` and strict=False are for the failure drills (see peer_serve_naive.run)."""
    keys = image_keys(NAME, paths)
    work_dir.mkdir(parents=True, exist_ok=True)
    data = [p.read_bytes() for p in paths]  # file reads are not what we measure
    with PeerMemory() as mem:
        with serve_cluster(NAME, threads, http=True) as port:
            url = f"http://127.0.0.1:{port}"
            t_setup = time.perf_counter()
            deployment = batch_app(
                model, pretrained, model_config, threads, work_dir / "qdrant",
                max_batch_size, batch_wait_s, max_ongoing_requests, Journal(journal),
            )  # fmt: skip
            handle = deploy(deployment.bind(), APP, ROUTE, timeout_s)
            warm_up(NAME, f"{url}{ROUTE}", data[0])
            setup_s = time.perf_counter() - t_setup
            # ---- the clock starts
            up = asyncio.run(post_all(url, keys, data, clients, timeout_s))
            points = int(handle.count.remote().result(timeout_s=60))
            info = handle.info.remote().result(timeout_s=60)
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
            f"Serve HTTP deployment, one image per POST, @serve.batch(max_batch_size="
            f"{max_batch_size}, batch_wait_timeout_s={batch_wait_s}), max_ongoing_requests "
            f"{max_ongoing_requests}; 1 replica ({threads} CPUs, {info['torch_threads']} torch "
            f"threads), decode in a {threads}-thread pool, forward + upsert (Qdrant Edge) per "
            f"batch; mean batch {info['mean_batch']:.1f}; {clients} concurrent httpx clients"
        ),
        points=points,
        clients=clients,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_s,
        max_ongoing_requests=max_ongoing_requests,
        mean_batch=info["mean_batch"],
        max_batch=info["max_batch"],
        stage_seconds=info["seconds"],
        torch_threads=info["torch_threads"],
        replica_num_cpus=threads,
        device=info["device"],
        setup_s=setup_s,
        errors=up["errors"][:5],
        failed_keys=up["failed_keys"],
    )


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
