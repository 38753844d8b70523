"""Composition of the running system: where the queue, index and worker actors are declared.

Resources are declared here, from settings, and nowhere else (ray.remote(...).options(...)).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from raylens.actors.handles import ActorMissing, lookup
from raylens.actors.queue import JobQueue
from raylens.cluster.active_model import ActiveModel, differs_from_settings
from raylens.cluster.active_model import apply as apply_model
from raylens.cluster.index import VectorIndex
from raylens.cluster.payloads import open_payload_store
from raylens.cluster.settings import Settings
from raylens.errors import (
    IndexUnavailable,
    ModelLoadError,
    RaylensError,
    SettingsError,
    StoreUnavailable,
)
from raylens.models.model_id import model_id_for
from raylens.models.reachability import tcp_reachable

log = logging.getLogger("raylens.system")

WORKER_PREFIX = "raylens-worker-"


def resolve_address(settings: Settings, address: str | None = None) -> str | None:
    """--address, else RAYLENS_RAY_ADDRESS, else RAY_ADDRESS (set by `ray job submit`; Ray reads
    it itself when given None), else the local cluster `raylens up` starts on ray_port."""
    if address or settings.ray_address:
        return address or settings.ray_address
    if os.environ.get("RAY_ADDRESS"):
        return None
    return settings.local_ray_address


# A TCP connect to the GCS before ray.init: with no GCS there ray.init retries for minutes and
# ignores SIGINT/SIGTERM, so a CLI verb with no cluster would hang instead of saying so.
GCS_PROBE_TIMEOUT_S = 2.0


def gcs_endpoint(address: str | None) -> tuple[str, int, str]:
    """(host, port, name) that ray.init(address=address) will dial, resolved as Ray resolves it:
    None reads RAY_ADDRESS, "auto" Ray's current-cluster file (or a running local GCS), and
    127.0.0.1/localhost become this node's IP. name is what to show the user. Raises
    StoreUnavailable when Ray itself finds no cluster ("auto" with none running)."""
    from ray._private import services

    name = str(address) if address else f"{os.environ.get('RAY_ADDRESS', '')} (RAY_ADDRESS)"
    raw = address if address is not None else os.environ.get("RAY_ADDRESS")
    if not raw:  # ray.init would start a new cluster inside this process
        raise StoreUnavailable(no_cluster_message(name))
    if raw.startswith(("http://", "https://")):  # the dashboard/jobs API, not a cluster
        raise StoreUnavailable(
            f"{name} is an HTTP address (the dashboard's); give the GCS address instead, "
            "e.g. HEAD:6379, or ray://HEAD:10001"
        )
    if "://" in raw:  # Ray Client: the client server, no GCS resolution
        host, _, port = raw.split("://", 1)[1].rstrip("/").rpartition(":")
        return host.strip("[]"), int(port) if port.isdigit() else 10001, name
    try:
        canonical = services.canonicalize_bootstrap_address(raw)
    except ConnectionError:
        raise StoreUnavailable(no_cluster_message(name)) from None
    except ValueError as exc:
        raise StoreUnavailable(f"bad Ray cluster address {name}: {exc}") from None
    if canonical is None:  # "local": ray.init would start a cluster in this process
        raise StoreUnavailable(no_cluster_message(name))
    host, _, port = canonical.rpartition(":")
    return host.strip("[]"), int(port), name


def no_cluster_message(name: str) -> str:
    return (
        f"no Ray cluster at {name}; start one with `raylens up` (or `raylens up --detach`), "
        "or point RAYLENS_RAY_ADDRESS / --address at a running one"
    )


def gcs_listening(host: str, port: int, timeout_s: float = GCS_PROBE_TIMEOUT_S) -> bool:
    """Whether Ray's GCS accepts a TCP connection at host:port within timeout_s."""
    return tcp_reachable(host, port, timeout_s)


def connect(settings: Settings, address: str | None = None) -> None:
    """Join a running Ray cluster (or reuse the one this process already joined). Raises
    StoreUnavailable within seconds when nothing listens at the address."""
    if ray.is_initialized():
        return
    address = resolve_address(settings, address)
    host, port, name = gcs_endpoint(address)
    if not gcs_listening(host, port):
        shown = name if host in name else f"{name}, i.e. {host}:{port}"
        raise StoreUnavailable(no_cluster_message(shown))
    try:
        ray.init(
            address=address,
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except ConnectionError as exc:
        raise StoreUnavailable(f"{no_cluster_message(name)} ({exc})") from None


def worker_gpus(settings: Settings) -> float:
    if settings.worker_num_gpus is not None:
        return settings.worker_num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _actor(name: str, settings: Settings) -> Any:
    return lookup(name, settings.namespace)


def queue_handle(settings: Settings) -> Any:
    try:
        return _actor(settings.queue_actor_name, settings)
    except ActorMissing:
        raise StoreUnavailable(
            "the raylens queue is not running on this Ray cluster; start it with `raylens up`"
        ) from None


def supervisor_handle(settings: Settings) -> Any:
    """The supervisor actor, or None when it is not running."""
    try:
        return _actor(settings.supervisor_actor_name, settings)
    except ActorMissing:
        return None


def index_handle(settings: Settings) -> Any:
    """The named index actor (embedded engine), or None when a Qdrant server is configured."""
    if settings.qdrant_url:
        return None
    return _actor(settings.index_actor_name, settings)


def worker_names(settings: Settings) -> list[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == settings.namespace and a["name"].startswith(WORKER_PREFIX)
    )


def named_workers(settings: Settings) -> list[tuple[str, Any]]:
    """(name, handle) of every worker; one removed meanwhile is left out."""
    out = []
    for name in worker_names(settings):
        try:
            out.append((name, _actor(name, settings)))
        except ActorMissing:
            continue
    return out


def worker_handles(settings: Settings) -> list[Any]:
    return [handle for _, handle in named_workers(settings)]


def _detached(settings: Settings, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
    }


def start_queue(settings: Settings) -> Any:
    """The one queue of the cluster; on (re)start it rebuilds itself from the job store."""
    model_id = model_id_for(settings.clip_model, settings.clip_pretrained)
    queue = (
        ray.remote(JobQueue)
        .options(max_concurrency=1000, num_cpus=0, **_detached(settings, settings.queue_actor_name))
        .remote(settings, model_id)
    )
    ray.get(queue.ping.remote())  # type: ignore[union-attr]
    return queue


def start_index(settings: Settings) -> Any:
    """The embedded engine: exactly one process may own its folder, so one named actor owns it
    (and runs its HNSW builds, each in a process of its own)."""
    if settings.qdrant_url:
        return None
    index = (
        ray.remote(VectorIndex)
        .options(num_cpus=0, **_detached(settings, settings.index_actor_name))
        .remote(settings, builds=True)
    )
    try:
        ray.get(index.count.remote())  # type: ignore[union-attr]
    except ray.exceptions.RayActorError as exc:  # its constructor failed: say why, not Ray
        why = creation_error(exc).replace("worker failed", "the index actor failed")
        ray.kill(index, no_restart=True)  # type: ignore[arg-type]
        raise (SettingsError if "SettingsError: " in str(exc) else IndexUnavailable)(why) from None
    return index


def worker_options(settings: Settings, name: str, gpus: float) -> dict[str, Any]:
    """Ray options of one worker: pinned to a GPU share (or CPUs), named, restarted on death."""
    return {
        "max_task_retries": 0,
        "max_concurrency": 4,
        "num_cpus": settings.worker_num_cpus,
        "num_gpus": gpus,
        **({"resources": dict(settings.worker_resources)} if settings.worker_resources else {}),
        **_detached(settings, name),
    }


def start_worker(settings: Settings, name: str, gpus: float | None = None) -> Any:
    """Create (or find) one named worker; does not wait for its model. A worker asking for a
    GPU the cluster lacks stays pending, which is what makes Ray's autoscaler add a GPU node."""
    # Imported here: the worker module brings torch, open_clip and dlib (seconds of imports),
    # which the supervisor, the Serve replica and the CLI, all importers of this module, skip.
    from raylens.actors.worker import Worker

    gpus = worker_gpus(settings) if gpus is None else gpus
    options = worker_options(settings, name, gpus)
    return ray.remote(Worker).options(**options).remote(settings, name)


def start_workers(settings: Settings) -> list[dict[str, Any]]:
    """num_workers workers (kept within min/max_workers); waits for their models."""
    gpus = worker_gpus(settings)
    n = min(max(settings.num_workers, settings.worker_min), settings.worker_max)
    workers = [start_worker(settings, settings.worker_name(i), gpus) for i in range(n)]
    return wait_for_workers(settings, workers)


def start_supervisor(settings: Settings) -> Any:
    """The progress-based health check of the workers (cluster/supervisor.py)."""
    from raylens.actors.supervisor import Supervisor

    sup = (
        ray.remote(Supervisor)
        .options(num_cpus=0, **_detached(settings, settings.supervisor_actor_name))
        .remote(settings)
    )
    ray.get(sup.ping.remote())  # type: ignore[union-attr]
    return sup


def start_webhooks(settings: Settings) -> Any:
    """The webhook deliverer (actors/webhooks.py), when RAYLENS_WEBHOOK_SECRET is set."""
    if not settings.webhook_secret:
        return None
    from raylens.actors.webhooks import Webhooks

    hooks = (
        ray.remote(Webhooks)
        .options(num_cpus=0, **_detached(settings, settings.webhooks_actor_name))
        .remote(settings)
    )
    ray.get(hooks.ping.remote())  # type: ignore[union-attr]
    return hooks


def start(settings: Settings) -> dict[str, Any]:
    """Create (or find) the queue, the index owner and num_workers workers; wait until every
    worker has loaded its model, then start the supervisor. Raises ModelLoadError with the
    worker's own message."""
    queue = start_queue(settings)
    settings = active_settings(settings, queue)  # a `raylens reindex` switch outranks settings
    start_webhooks(settings)  # before any worker: it follows events from now on
    start_index(settings)
    reports = start_workers(settings)
    start_supervisor(settings)
    return {"workers": reports, "queue": ray.get(queue.stats.remote())}


def active_model(settings: Settings, queue: Any = None) -> ActiveModel:
    """The active model record, as the queue holds it."""
    queue = queue if queue is not None else queue_handle(settings)
    return ActiveModel.from_json(ray.get(queue.active_model.remote()))  # type: ignore[union-attr]


def active_settings(settings: Settings, queue: Any = None) -> Settings:
    """The settings with the active model's weights and collection (they differ from the
    environment's once `raylens reindex` has switched models)."""
    record = active_model(settings, queue)
    note = differs_from_settings(settings, record)
    if note:
        log.warning("%s", note)
    return apply_model(settings, record)


def wait_for_workers(settings: Settings, workers: list[Any]) -> list[dict[str, Any]]:
    try:
        return ray.get(
            [w.report.remote() for w in workers], timeout=settings.worker_start_timeout_s
        )
    except ray.exceptions.GetTimeoutError:
        raise ModelLoadError(
            f"workers did not load their model within {settings.worker_start_timeout_s}s "
            "(RAYLENS_WORKER_START_TIMEOUT_S); are the requested CPUs/GPUs available? "
            f"cluster has {ray.cluster_resources()}"
        ) from None
    except ray.exceptions.RayActorError as exc:
        for w in workers:
            ray.kill(w, no_restart=True)
        raise ModelLoadError(creation_error(exc)) from None


def creation_error(exc: Exception) -> str:
    """The worker's own error line out of Ray's actor-died text."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        line = line.strip()
        for marker in ("ModelLoadError: ", "SettingsError: "):
            if marker in line:
                return line.split(marker, 1)[1]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "worker failed to start: " + (lines[-1] if lines else text)


def stop(settings: Settings, timeout_s: float = 30.0) -> dict[str, Any]:
    """Drain and remove the workers, then the queue and the index actor."""
    stopped: dict[str, Any] = {"workers": 0}
    try:  # first, so it does not replace workers that are being stopped
        ray.kill(_actor(settings.supervisor_actor_name, settings), no_restart=True)
    except ActorMissing:
        pass
    workers = worker_handles(settings)
    drains = [w.stop.remote(timeout_s) for w in workers]
    try:
        ray.get(drains, timeout=timeout_s + 10)
    except Exception as exc:  # a dead worker needs no draining; its leases expire
        log.warning("draining workers: %s", exc)
    for w in workers:
        ray.kill(w, no_restart=True)
        stopped["workers"] += 1
    for name in (
        settings.queue_actor_name,
        settings.index_actor_name,
        settings.webhooks_actor_name,
    ):
        try:
            ray.kill(_actor(name, settings), no_restart=True)
            stopped[name] = True
        except ActorMissing:
            stopped[name] = False
    return stopped


def worker_reports(settings: Settings, timeout_s: float = 10) -> list[dict[str, Any]]:
    """Each worker's loaded-model report, or {"error": ...} for one that did not answer."""
    reports = []
    for w in worker_handles(settings):
        try:
            reports.append(ray.get(w.report.remote(), timeout=timeout_s))
        except Exception as exc:
            reports.append({"error": f"{type(exc).__name__}: {exc}"[:500]})
    return reports


def status(settings: Settings) -> dict[str, Any]:
    """Queue depth per lane, job counts per state, each worker's loaded-model report, the
    index's counts, and the payload store's files and bytes (a scan of it)."""
    queue = queue_handle(settings)
    reports = worker_reports(settings)
    out: dict[str, Any] = {"queue": ray.get(queue.stats.remote()), "workers": reports}
    record = active_model(settings, queue)
    out["model"] = record.to_dict()
    index = index_handle(settings)
    try:
        if index is not None:
            out["index"] = ray.get(index.info.remote(record.collection), timeout=30)
        else:
            out["index"] = VectorIndex(settings).info(record.collection)
    except (RaylensError, ray.exceptions.RayError) as exc:
        out["index"] = {"error": str(exc)[:500]}
    try:
        payloads = open_payload_store(settings)
        try:
            count, held = payloads.usage()
        finally:
            payloads.close()
        out["payloads"] = {"count": count, "bytes": held}
    except RaylensError as exc:
        out["payloads"] = {"error": str(exc)[:500]}
    out["at"] = time.time()
    return out


def search_text(settings: Settings, text: str, top_k: int = 10) -> list[dict[str, Any]]:
    """Text search for synchronous callers (the CLI): the hits of `ClusterAPI.search`, run to
    completion here, so the CLI and the HTTP ingress share one search path (same checks, same
    round robin over workers, same timeouts, same hit shape). Call it where no event loop runs."""
    # api imports this module (for the actor handles), so it is imported here, when used.
    from raylens.actors.api import ClusterAPI

    api = ClusterAPI(settings, io_threads=2)
    try:
        hits: list[dict[str, Any]] = asyncio.run(api.search(text=text, top_k=top_k))["hits"]
    finally:
        api.close()
    return hits
