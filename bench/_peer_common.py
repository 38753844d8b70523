"""Shared bits of the Ray Serve benchmark peers (peer_serve_tc.py, peer_serve_naive.py).

Benchmark fixtures, never imported by raylens. What they share:

- `EmbedStore`: the replica's work, the same per image as bench_core's raw-limit row: the model
  loaded once (`ClipEmbedder`, torch threads = threads), `decode_image` with the raw row's
  limits, `embed_images` at batch 1, then one upsert into a Qdrant local-mode collection that
  the replica opened once (local mode locks its folder to one process: one replica only);
- `serve_cluster`: a local Ray cluster started inside this process (own namespace, no
  dashboard) with Serve on a free loopback port, shut down (Serve, then Ray) on the way out;
  `deploy`: `serve.run` under a deadline, so a replica that never starts is an error;
- `redis_broker`: a redis-server of our own on a free port (tests/_redis_server.RedisServer);
- `peer_row`: the row every peer returns (images/s, latency percentiles, peak memory);
- `Journal`: what the failure drills (bench/failure_drills.py) read back: one line per image
  whose processing began and one per image stored, appended by whichever process did it;
- `main`: the standalone command line of a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _rss import RowMemory

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
COLLECTION = "peer"
# The raw-limit row's decode limits (bench_core.raw_limit).
MAX_PIXELS = 150_000_000
MAX_BYTES = 1 << 30
DEFAULT_TIMEOUT_S = 600.0


def decode_like_raw(emb: Any, data: bytes) -> np.ndarray:
    """One image as the model's uint8 square, exactly as the raw-limit row decodes it (the same
    raylens decode, reduced-scale JPEG decode included): every row decodes alike."""
    from raylens.media.transforms import decode_image

    return decode_image(
        data,
        emb.image_size,
        max_pixels=MAX_PIXELS,
        max_bytes=MAX_BYTES,
        resize_mode=emb.resize_mode,
        interpolation=emb.interpolation,
    ).pixels


def free_port() -> int:
    """A port outside the kernel's ephemeral range (tests/_ports.py says why)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))
    from _ports import free_port as pick  # type: ignore[import-not-found]

    port: int = pick()
    return port


async def post_upload(
    http: Any, files: list[Any], headers: dict[str, str], attempts: int = 20
) -> tuple[Any, int]:
    """POST /v1/jobs (embed pipeline) until it is not refused with 429/503 (waiting what
    Retry-After says), at most `attempts` times; (the last answer, how many were refused)."""
    refused = 0
    for attempt in range(attempts):
        resp = await http.post("/v1/jobs", files=files, data={"pipeline": "embed"}, headers=headers)
        if resp.status_code not in (429, 503) or attempt == attempts - 1:
            break
        refused += 1
        await asyncio.sleep(float(resp.headers.get("Retry-After", 1)))
    return resp, refused


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Ray and Serve print to stdout from background threads (e.g. "(raylet) Task ...
    graceful_shutdown failed" while Serve stops): send all of that to stderr while the
    benchmark runs, so stdout carries only the report (clean JSON with --json)."""
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(report_fd, 1)
        os.close(report_fd)


def image_keys(name: str, paths: list[Path]) -> list[str]:
    """Each image's key (its resolved path); ValueError for no images or a path given twice."""
    if not paths:
        raise ValueError(f"{name}: no images")
    keys = [str(p.resolve()) for p in paths]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name}: the image paths are not distinct")
    return keys


def warm_up(name: str, url: str, data: bytes) -> None:
    """One `?warmup=1` request (the same work, not stored) before the clock starts."""
    import httpx

    warm = httpx.post(url, params={"warmup": "1"}, content=data, timeout=60)
    if warm.status_code != 200:
        raise RuntimeError(
            f"{name}: the warm-up request failed: HTTP {warm.status_code} {warm.text[:300]}"
        )


class Journal:
    """An append-only file of `B key` (processing of an image began), `E key` (its vector
    computed, where another process stores it) and `S key` (its vector stored) lines, written
    by the peers' worker processes for the failure drills.

    Each line is one os.write on an O_APPEND descriptor, so the lines of several processes
    interleave whole and a process killed with SIGKILL loses nothing it wrote. A None path
    writes nothing (the timed rows run without a journal).
    """

    def __init__(self, path: Path | str | None) -> None:
        self.path = None if path is None else str(path)
        self._fd: int | None = None

    def _write(self, tag: str, keys: Any) -> None:
        if self.path is None:
            return
        if self._fd is None:  # opened lazily: the object travels to Ray workers by pickle
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        lines = "".join(f"{tag} {k}\n" for k in keys)
        if lines:
            os.write(self._fd, lines.encode())

    def began(self, *keys: str) -> None:
        self._write("B", keys)

    def embedded(self, *keys: str) -> None:
        """The model is done with these (for a pipeline that stores them in another process)."""
        self._write("E", keys)

    def stored(self, *keys: str) -> None:
        self._write("S", keys)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_fd": None}


def point_id(key: str) -> str:
    """One point per image: the id depends only on the image's key (its path)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


# ---- the replica's work -----------------------------------------------------------------------


class EmbedStore:
    """Model + Qdrant local collection, loaded/opened once in a replica's __init__.

    Thread-safe: the model runs concurrently in the caller's threads (as a Celery thread pool
    or a Serve thread pool would run it); the upsert is serialised by a lock (Qdrant local mode
    is one in-process store, not a server).
    """

    def __init__(
        self,
        model: str,
        pretrained: str,
        model_config: Path | None,
        threads: int,
        qdrant_path: Path,
        journal: Journal | None = None,
    ) -> None:
        from qdrant_client import QdrantClient, models

        from raylens.models.clip import ClipEmbedder

        self.emb = ClipEmbedder(
            model, pretrained, model_config=model_config, device="auto", threads=threads
        )
        self.threads = threads
        self._models = models
        self.client = QdrantClient(path=str(qdrant_path))
        if not self.client.collection_exists(COLLECTION):
            self.client.create_collection(
                COLLECTION,
                vectors_config=models.VectorParams(
                    size=self.emb.dim, distance=models.Distance.COSINE
                ),
            )
        self._lock = threading.Lock()
        self.journal = journal or Journal(None)

    def embed(self, data: bytes) -> np.ndarray:
        """One image's bytes -> its (dim,) vector: decode, preprocess, forward at batch 1."""
        return self.emb.embed_images(decode_like_raw(self.emb, data)[None])[0]

    def embed_store(self, data: bytes, key: str) -> float:
        """Embed, upsert, and return when the vector was stored (time.time() after upsert)."""
        self.journal.began(key)
        vector = self.embed(data)
        point = self._models.PointStruct(
            id=point_id(key), vector=vector.tolist(), payload={"key": key}
        )
        with self._lock:
            self.client.upsert(COLLECTION, points=[point], wait=True)
        self.journal.stored(key)
        return time.time()

    def count(self) -> int:
        with self._lock:
            return int(self.client.count(COLLECTION, exact=True).count)

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "device": self.emb.device,
            "dtype": str(self.emb.dtype).replace("torch.", ""),
            "dim": self.emb.dim,
            "torch_threads": torch.get_num_threads(),
            "pid": os.getpid(),
        }


# ---- Ray + Serve, Redis ---------------------------------------------------------------------


@contextmanager
def local_ray(name: str, num_cpus: int) -> Iterator[None]:
    """A local Ray cluster started inside this process (own namespace, no dashboard), shut
    down on the way out. Never touches other clusters on the machine (no `ray stop`)."""
    import ray

    if ray.is_initialized():
        raise RuntimeError(
            f"{name}: Ray is already initialised in this process; the peer needs its own "
            "local cluster (call ray.shutdown() first)"
        )
    # Ray's workers do not see the driver's sys.path (bench/ is not a package): the replicas'
    # classes travel by value, and so does this module, which they use.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"{name}-{uuid.uuid4().hex[:8]}",
        object_store_memory=1 << 29,
    )
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def serve_cluster(name: str, threads: int, http: bool = True) -> Iterator[int | None]:
    """A local Ray cluster in this process (local_ray) with Serve started; yields Serve's HTTP
    port (None without HTTP)."""
    from ray import serve

    with local_ray(name, max(threads, os.cpu_count() or 1)):
        try:
            port = free_port() if http else None
            if http:
                serve.start(http_options={"host": "127.0.0.1", "port": port})
            else:
                serve.start(proxy_location="Disabled")
            yield port
        finally:
            serve.shutdown()


def deploy(app: Any, name: str, route_prefix: str | None, timeout_s: float) -> Any:
    """serve.run(app) under a deadline (a replica that cannot start or schedule is an error,
    not a hang); returns the deployment handle."""
    from ray import serve

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["handle"] = serve.run(app, name=name, route_prefix=route_prefix)
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    t = threading.Thread(target=target, name=f"deploy-{name}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(
            f"{name}: the Serve application did not become RUNNING within {timeout_s:.0f}s "
            f"(serve.status(): {_app_status(name)})"
        )
    if "error" in out:
        raise RuntimeError(
            f"{name}: deploying failed: {str(out['error'])[:300]} "
            f"(serve.status(): {_app_status(name)})"
        ) from out["error"]
    return out["handle"]


def _app_status(name: str) -> str:
    try:
        from ray import serve

        app = serve.status().applications.get(name)
        if app is None:
            return "no such application"
        parts = [f"{app.status}: {app.message[:300]}"]
        for dep_name, dep in app.deployments.items():
            parts.append(f"{dep_name} {dep.status}: {dep.message[-2000:]}")
        return "; ".join(parts)
    except Exception as exc:  # only for an error message
        return f"unavailable ({type(exc).__name__})"


@contextmanager
def redis_broker(folder: Path) -> Iterator[Any]:
    """A redis-server of our own on a free port (tests/_redis_server.RedisServer), stopped on
    the way out. Yields the RedisServer (`.url`)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))
    from _redis_server import RedisServer  # type: ignore[import-not-found]

    last: RuntimeError | None = None
    for attempt in range(3):  # another process may take the free port between probe and bind
        server = RedisServer(free_port(), folder / f"redis-{attempt}")
        server.dir.mkdir(parents=True, exist_ok=True)
        try:
            server.start()
            break
        except RuntimeError as exc:
            last = exc
    else:
        assert last is not None
        raise last
    try:
        yield server
    finally:
        server.stop()


# ---- the row ----------------------------------------------------------------------------------


class PeerMemory(RowMemory):
    """RowMemory plus the same sums over this process's own tree only (its descendants: the Ray
    daemons and workers it started, redis-server). On a shared machine, RowMemory also counts
    other users' processes started meanwhile; the tree cannot be inflated that way. Like every
    row of `make bench`, this process itself (the clients) is not counted."""

    def __init__(self, period_s: float = 1.0) -> None:
        super().__init__(include_self=False, period_s=period_s)
        self.tree_rss_mb = 0.0
        self.tree_pss_mb: float | None = None

    def sample(self) -> None:
        """One pass: RowMemory's processes, and which of them are this process's tree."""
        procs = self._procs()
        me = psutil.Process()
        try:
            tree = {me.pid, *(c.pid for c in me.children(recursive=True))}
        except psutil.Error:
            tree = {me.pid}
        rss = pss = tree_rss = tree_pss = 0
        has_pss = True
        for p in procs:
            try:
                full = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            has_pss = has_pss and hasattr(full, "pss")
            p_pss = getattr(full, "pss", 0)
            rss += full.rss
            pss += p_pss
            if p.pid in tree:
                tree_rss += full.rss
                tree_pss += p_pss
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        self.tree_rss_mb = max(self.tree_rss_mb, tree_rss / 2**20)
        if has_pss:
            self.peak_pss_mb = max(self.peak_pss_mb or 0.0, pss / 2**20)
            self.tree_pss_mb = max(self.tree_pss_mb or 0.0, tree_pss / 2**20)


def pct_ms(latencies_s: list[float], q: float) -> float | None:
    return float(np.percentile(latencies_s, q) * 1000) if latencies_s else None


def peer_row(
    name: str,
    *,
    images: int,
    done: int,
    failed: int,
    first_submit: float,
    last_stored: float,
    latencies_s: list[float],
    mem: Any,
    notes: str,
    **extras: Any,
) -> dict[str, Any]:
    """The contract every peer returns (see bench_http): images/s from the first submission
    to the last vector stored; per-image latency submission -> stored."""
    seconds = last_stored - first_submit
    return {
        "name": name,
        "images_per_s": done / seconds if done and seconds > 0 else 0.0,
        "p50_ms": pct_ms(latencies_s, 50),
        "p99_ms": pct_ms(latencies_s, 99),
        "peak_rss_mb": mem.peak_rss_mb,
        "peak_pss_mb": mem.peak_pss_mb,
        "done": done,
        "failed": failed,
        "notes": notes,
        "images": images,
        "seconds": seconds,
        "max_ms": max(latencies_s) * 1000 if latencies_s else None,
        # This process's own tree only (see PeerMemory); None from a plain RowMemory.
        "peak_rss_tree_mb": getattr(mem, "tree_rss_mb", None),
        "peak_pss_tree_mb": getattr(mem, "tree_pss_mb", None),
        **extras,
    }


# ---- standalone --------------------------------------------------------------------------------

RunFn = Callable[..., dict[str, Any]]


def main(run: RunFn, description: str | None) -> int:
    """`--images N --model M [--threads T] [--json]`: generated images (bench_core), one run."""
    from bench_core import make_images

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--model-config", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="raylens-peer-") as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        out = run(
            paths,
            args.model,
            args.threads,
            Path(tmp) / "work",
            pretrained=args.pretrained,
            model_config=args.model_config,
            timeout_s=args.timeout,
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(summary_line(out))
    return 0


def summary_line(out: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return (
        f"{out['name']}: {out['done']}/{out['images']} done, {out['failed']} failed, "
        f"{out['images_per_s']:.2f} images/s, p50 {f(out['p50_ms'])} ms, "
        f"p99 {f(out['p99_ms'])} ms, peak RSS {out['peak_rss_mb']:.0f} MB, "
        f"PSS {f(out['peak_pss_mb'])} MB (own process tree: RSS {f(out['peak_rss_tree_mb'])} "
        f"MB, PSS {f(out['peak_pss_tree_mb'])} MB); {out['notes']}"
    )
