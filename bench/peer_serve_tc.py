"""Peer "Ray's own answer": Ray Serve asynchronous inference, one Celery task per image.

A `@serve.deployment` + `@task_consumer` (ray.serve.task_consumer) whose task processor is
Ray's `CeleryTaskProcessorAdapter` on a Redis broker and result backend (a redis-server of our
own on a free port). One replica; its __init__ loads the model once and opens the Qdrant local
collection; its `@task_handler` embeds one image (decode + forward at batch 1, like bench_core's
raw-limit row) and upserts the vector, then returns `time.time()` after the upsert. The adapter
runs handlers in a Celery worker thread pool inside the replica (pool "threads", concurrency =
the deployment's max_ongoing_requests, Serve's default 5 unless `consumer_concurrency` is set).

The client (this process) enqueues every image's path with the adapter's `enqueue_task_sync`,
as fast as it can, stamping time.time() before each enqueue; it then reads each task's result
(the stored-at time) back from the result backend. Latency = stored_at - submitted (one host,
one clock); images/s = images / (last stored_at - first submission). Model load and a warm-up
task happen before the clock starts.

    uv run python bench/peer_serve_tc.py --images 24 --model ViT-B-32 [--threads 2] [--json]
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

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
    redis_broker,
    serve_cluster,
)

NAME = "serve_task_consumer"
TASK = "embed_image"
APP = "peer-tc"
POLL_S = 0.05


def consumer_app(
    config: Any,
    model: str,
    pretrained: str,
    model_config: Path | None,
    threads: int,
    qdrant_path: Path,
    consumer_concurrency: int | None,
    journal: Journal | None = None,
) -> Any:
    """The task-consumer deployment, bound. Built at run time: the decorator needs the
    processor config, whose broker URL is only known once our redis-server is up."""
    from ray import serve
    from ray.serve.task_consumer import task_consumer, task_handler

    options: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": threads}}
    if consumer_concurrency is not None:  # the adapter's worker_concurrency follows this
        options["max_ongoing_requests"] = consumer_concurrency

    @serve.deployment(**options)
    @task_consumer(task_processor_config=config)
    class EmbedConsumer:
        def __init__(self) -> None:
            self.work = EmbedStore(model, pretrained, model_config, threads, qdrant_path, journal)

        @task_handler(name=TASK)
        def embed_image(self, path: str, warmup: bool = False) -> dict[str, Any]:
            data = Path(path).read_bytes()
            if warmup:  # the same work, not stored
                self.work.embed(data)
                return {"stored_at": time.time(), "warmup": True}
            return {"stored_at": self.work.embed_store(data, path)}

        def count(self) -> int:
            return self.work.count()

        def info(self) -> dict[str, Any]:
            adapter = getattr(self, "_adapter", None)
            app = getattr(adapter, "_app", None)
            return {
                **self.work.info(),
                "consumer_concurrency": None if app is None else app.conf.worker_concurrency,
                "worker_pool": None if app is None else app.conf.worker_pool,
            }

    return EmbedConsumer.bind()


def _wait(adapter: Any, task_id: str, deadline: float) -> Any:
    """The task's TaskResult once it is SUCCESS or FAILURE; None past the deadline.

    The adapter's get_task_status_sync reads the result, then the status, from the backend in
    two separate reads: a task finishing between them reads SUCCESS with result None. Our
    handler never returns None, so such a read is polled again.
    """
    while True:
        res = adapter.get_task_status_sync(task_id)
        if res.status in ("SUCCESS", "FAILURE") and res.result is not None:
            return res
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def _produce(
    client: Any,
    keys: list[str],
    timeout_s: float,
    t_setup: float,
    queue: str,
    broker_url: str,
    results_timeout_s: float | None = None,
) -> tuple[list[float], list[Any], float, float]:
    """Warm-up task, then the timed run: every image enqueued (time.time() stamped before
    each enqueue), then every task's result read back, oldest first (they finish in about
    submission order; the stored-at times come from the results, so polling adds nothing).
    Returns (submitted times, TaskResults, setup seconds, enqueue seconds). With
    `results_timeout_s` (the failure drills), a task without a result by then is None in the
    results instead of an error."""
    warm = client.enqueue_task_sync(TASK, args=[keys[0]], kwargs={"warmup": True})
    res = _wait(client, warm.id, time.monotonic() + timeout_s)
    if res is None or res.status != "SUCCESS":
        raise RuntimeError(
            f"{NAME}: the warm-up task did not succeed within {timeout_s:.0f}s: "
            f"{'no result' if res is None else f'{res.status} {res.result!r}'}"
        )
    setup_s = time.perf_counter() - t_setup

    # ---- the clock starts
    submitted: list[float] = []
    ids: list[str] = []
    for key in keys:
        submitted.append(time.time())
        ids.append(client.enqueue_task_sync(TASK, args=[key]).id)
    submit_s = time.time() - submitted[0]
    deadline = time.monotonic() + (results_timeout_s or timeout_s)
    results = [_wait(client, task_id, deadline) for task_id in ids]
    missing = sum(r is None for r in results)
    if missing and results_timeout_s is None:
        raise TimeoutError(
            f"{NAME}: {missing} of {len(ids)} tasks never finished within {timeout_s:.0f}s "
            f"(queue {queue}, broker {broker_url})"
        )
    return submitted, results, setup_s, submit_s


def run(
    paths: list[Path],
    model: str,
    threads: int,
    work_dir: Path,
    pretrained: str = "none",
    model_config: Path | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    consumer_concurrency: int | None = None,
    journal: Path | None = None,
    results_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Embed `paths` through a Serve task consumer; the row (see _peer_common.peer_row).

    timeout_s bounds the deployment (model load) and, separately, the run itself. For the
    failure drills: `journal` (every image's start and store appended to that file) and
    `results_timeout_s` (a task without a result by then is counted as never finished, in
    `unfinished_keys`, and the collection is not required to match).
    """
    from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
    from ray.serve.task_consumer import instantiate_adapter_from_config

    keys = image_keys(NAME, paths)
    work_dir.mkdir(parents=True, exist_ok=True)
    with PeerMemory() as mem:  # RowMemory(include_self=True), + own tree
        with redis_broker(work_dir) as broker:
            config = TaskProcessorConfig(
                queue_name=f"peer-tc-{uuid.uuid4().hex[:8]}",
                adapter_config=CeleryAdapterConfig(broker_url=broker.url, backend_url=broker.url),
                # No retries: a failed image fails at once (retries would back off for up to
                # a minute); the happy path is unaffected.
                max_retries=0,
            )
            with serve_cluster(NAME, threads, http=False):
                t_setup = time.perf_counter()
                handle = deploy(
                    consumer_app(
                        config,
                        model,
                        pretrained,
                        model_config,
                        threads,
                        work_dir / "qdrant",
                        consumer_concurrency,
                        Journal(journal),
                    ),
                    APP,
                    None,
                    timeout_s,
                )
                info = handle.info.remote().result(timeout_s=60)
                client = instantiate_adapter_from_config(config)  # the producer side
                try:
                    submitted, results, setup_s, submit_s = _produce(
                        client,
                        keys,
                        timeout_s,
                        t_setup,
                        config.queue_name,
                        broker.url,
                        results_timeout_s,
                    )
                finally:
                    client._app.close()  # its Redis connections, before the server stops
                points = int(handle.count.remote().result(timeout_s=60))
            broker_state = _broker_state(broker, config.queue_name)
    ok = [
        (s, r.result["stored_at"])
        for s, r in zip(submitted, results)
        if r is not None and r.status == "SUCCESS"
    ]
    bad = [(k, r) for k, r in zip(keys, results) if r is not None and r.status != "SUCCESS"]
    errors = [f"{k}: {r.result!r}"[:300] for k, r in bad]
    unfinished = [k for k, r in zip(keys, results) if r is None]
    if results_timeout_s is None and points != len(ok):
        raise RuntimeError(f"{NAME}: {len(ok)} tasks succeeded but the collection has {points}")
    concurrency = info["consumer_concurrency"]
    return peer_row(
        NAME,
        images=len(paths),
        done=len(ok),
        failed=len(errors),
        first_submit=submitted[0],
        last_stored=max((t for _, t in ok), default=submitted[0]),
        latencies_s=[t - s for s, t in ok],
        mem=mem,
        notes=(
            f"Serve task_consumer + CeleryTaskProcessorAdapter, Redis broker/backend; 1 replica "
            f"({threads} CPUs, {info['torch_threads']} torch threads), Celery pool "
            f"{info['worker_pool']} x {concurrency} (consumer_concurrency = max_ongoing_requests"
            f"{', Serve default' if consumer_concurrency is None else ''}); one task per image "
            "(path), batch 1; max_retries=0"
        ),
        points=points,
        consumer_concurrency=concurrency,
        torch_threads=info["torch_threads"],
        replica_num_cpus=threads,
        device=info["device"],
        setup_s=setup_s,
        submit_s=submit_s,
        errors=errors[:5],
        failed_keys=[k for k, _ in bad],
        unfinished_keys=unfinished,
        broker=broker_state,
    )


def _broker_state(broker: Any, queue: str) -> dict[str, int]:
    """Messages still in the Redis broker at the end: queued, and delivered but unacknowledged
    (kombu's Redis transport keeps those in its "unacked" hash and hands them out again only
    after its visibility_timeout, an hour by default)."""
    conn = broker.client()
    try:
        return {"queued": int(conn.llen(queue)), "unacked": int(conn.hlen("unacked"))}
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
