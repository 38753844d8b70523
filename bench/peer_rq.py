"""Benchmark peer "rq": the setup raylens replaces, an RQ worker with OpenCLIP preloaded.

What runs (all started and stopped by `run`, on this machine):

* a redis-server of its own on a free port (the options raylens asks of its Redis: AOF
  everysec, noeviction, no RDB snapshots, loopback only);
* one RQ worker process, class `rq.Worker` (RQ's default: it forks a work-horse per job, not
  `SimpleWorker`). Before `worker.work()` it loads the model with raylens' own
  `ClipEmbedder(model, pretrained, model_config=..., device="auto")`, so every forked
  work-horse inherits it copy-on-write (RQ's documented preload pattern), then writes a Redis
  key saying it is ready. Load and warm-up are not timed: the clock starts after that key and
  the worker's registration are seen;
* this (client) process enqueues one job per image, the payload being the image's path on shared
  disk (what a typical RQ user enqueues), with RQ's default Redis connection and pickle
  serializer. Each job reads the file, decodes it with raylens' `decode_image` (the same
  arguments as bench_core's raw limit) and embeds it at batch 1 (`emb.embed_images(pix[None])`).

Torch threads and fork: loading and warming the model with `threads` OpenMP threads in the
worker parent and then forking DEADLOCKS the work-horse in its first parallel region (GNU
libgomp, which the torch wheels use, is not fork-safe once its thread pool exists; checked with
ViT-B-32: the forked child never returns from embed_images). So the parent loads and warms the
model with 1 torch thread (no OpenMP pool exists at fork time) and each work-horse calls
`torch.set_num_threads(threads)` before its forward pass; the job reports the thread count it
inherited and the one it ran with.

Storing the vectors: Qdrant local mode (`QdrantClient(path=...)`) locks its folder to one process
and the work-horse is a fresh fork per job, so the horses cannot write to it. The job returns its
vector; RQ stores the return value in Redis (its Result stream, pickled) and adds the job to the
queue's FinishedJobRegistry in one transaction. A collector in the client process polls the
finished/failed registries every `POLL_S` (20 ms, also between enqueues), fetches the results of
whatever finished since the last poll (`Job.latest_result()`), and upserts them as one batch
(`wait=True`) into a cosine collection of a Qdrant local store in its own folder under work_dir.
"Vector stored" is the moment that upsert returns. At the end the collection must hold exactly
`done` points (= len(paths) when nothing failed), else the run raises.

Figures: images_per_s = done / (first enqueue -> last upsert returned); latency per image = its
enqueue call -> the upsert that stored its vector; p50/p99 over all stored images. Peak memory is
bench/_rss.py's RowMemory around redis + worker + the run (its forked horses
included): RSS counts the inherited model pages once per live horse, PSS splits them.

    .venv/bin/python bench/peer_rq.py [--images 24] [--model ViT-B-32] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
from rq import Queue, Worker
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import RowMemory  # noqa: E402

NAME = "rq"
JOB_FUNC = "peer_rq.embed_one"  # resolved by import in the worker (bench/ is its sys.path[0])
POLL_S = 0.02
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 600.0
RESULT_TTL_S = 3600

# Set in the worker parent before worker.work(); forked work-horses inherit them.
_EMBEDDER: Any = None
_THREADS = 1
_JOURNAL: str | None = None  # the failure drills' journal file (_peer_common.Journal)


# ---- the job (runs in a forked RQ work-horse) ------------------------------------------------


def embed_one(path: str) -> dict[str, Any]:
    """One image: read, decode, embed at batch 1 with the preloaded model; returns the vector."""
    import torch
    from _peer_common import Journal, decode_like_raw

    Journal(_JOURNAL).began(path)
    emb = _EMBEDDER
    if emb is None:
        raise RuntimeError("no preloaded model: embed_one runs only in a peer_rq worker")
    inherited = torch.get_num_threads()
    if inherited != _THREADS:
        torch.set_num_threads(_THREADS)
    t0 = time.perf_counter()
    pixels = decode_like_raw(emb, Path(path).read_bytes())
    t1 = time.perf_counter()
    vector = emb.embed_images(pixels[None])[0]
    t2 = time.perf_counter()
    return {
        "vector": np.asarray(vector, dtype=np.float32),
        "pid": os.getpid(),
        "threads_inherited": inherited,
        "threads": torch.get_num_threads(),
        "decode_s": t1 - t0,
        "embed_s": t2 - t1,
    }


# ---- the worker process ------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """Preload the model, announce readiness in Redis, then run RQ's forking worker."""
    global _EMBEDDER, _THREADS, _JOURNAL
    from raylens.models.clip import ClipEmbedder

    _THREADS = args.threads
    _JOURNAL = args.journal
    config = Path(args.model_config) if args.model_config else None
    # 1 thread here, `threads` in each horse: see the module docstring (libgomp and fork).
    _EMBEDDER = ClipEmbedder(
        args.model, args.pretrained, model_config=config, device="auto", threads=1
    )
    conn = redis.Redis.from_url(args.redis_url)
    worker = Worker([Queue(args.queue, connection=conn)], connection=conn)
    info = {
        "pid": os.getpid(),
        "worker_class": f"{type(worker).__module__}.{type(worker).__qualname__}",
        "dim": _EMBEDDER.dim,
        "device": _EMBEDDER.device,
        "dtype": str(_EMBEDDER.dtype),
        "load_seconds": _EMBEDDER.load_seconds,
        "warmup_seconds": _EMBEDDER.warmup_seconds,
    }
    conn.set(args.ready_key, json.dumps(info))
    worker.work(logging_level=args.log_level)
    return 0


# ---- processes: redis-server and the worker -----------------------------------------------------


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL; also kills a work-horse left behind (RQ puts it in its own group)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a free port (a few ports tried: another process may grab one)."""
    from _peer_common import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found; apt-get install redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    for _ in range(3):
        port = free_port()
        argv = [exe, "--port", str(port), "--dir", str(folder), "--appendonly", "yes"]
        argv += ["--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction"]
        argv += ["--bind", "127.0.0.1", "--daemonize", "no", "--logfile", str(log)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        conn = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if conn.ping():
                    conn.close()
                    return proc, port
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.05)
        conn.close()
        _stop(proc)
    raise RuntimeError(f"redis-server did not start; log:\n{_log_tail(log)}")


def _start_worker(
    url: str,
    queue: str,
    ready_key: str,
    model: str,
    pretrained: str,
    model_config: Path | None,
    threads: int,
    log: Path,
    journal: Path | None = None,
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--redis-url", url]
    argv += ["--queue", queue, "--ready-key", ready_key, "--model", model]
    argv += ["--pretrained", pretrained, "--threads", str(threads)]
    if model_config is not None:
        argv += ["--model-config", str(model_config)]
    if journal is not None:
        argv += ["--journal", str(journal)]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _wait_ready(
    conn: redis.Redis, proc: subprocess.Popen[bytes], queue: Queue, key: str, log: Path
) -> dict[str, Any]:
    """Until the worker has loaded the model (its key) and registered (RQ's worker set)."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the RQ worker exited with {proc.returncode}:\n{_log_tail(log)}")
        raw = conn.get(key)
        if raw is not None and Worker.count(connection=conn, queue=queue) >= 1:
            return json.loads(raw)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the RQ worker did not load the model in {LOAD_TIMEOUT_S}s")
        time.sleep(0.05)


# ---- the client: enqueue + collect into Qdrant -------------------------------------------------


class Collector:
    """Polls RQ's finished/failed registries; upserts each poll's new vectors as one batch."""

    def __init__(
        self,
        conn: redis.Redis,
        queue: Queue,
        qdrant: Any,
        collection: str,
        journal: Path | None = None,
    ) -> None:
        from _peer_common import Journal

        self.conn, self.queue, self.qdrant, self.collection = conn, queue, qdrant, collection
        self.journal = Journal(journal)
        self.pending: dict[str, tuple[int, str, float]] = {}  # job id -> (index, path, t_enqueue)
        self.latencies: list[float] = []
        self.failed: list[str] = []
        self.failed_keys: list[str] = []
        self.errors: list[str] = []
        self.jobs: list[dict[str, Any]] = []  # what each horse reported (vector dropped)
        self.last_store = 0.0
        self.last_poll = 0.0
        self.upserts = 0

    def poll(self) -> None:
        from qdrant_client import models

        self.last_poll = time.perf_counter()
        finished = self.queue.finished_job_registry.get_job_ids(cleanup=False)
        failed = self.queue.failed_job_registry.get_job_ids(cleanup=False)
        for job_id in failed:
            if job_id in self.pending:
                self.failed_keys.append(self.pending.pop(job_id)[1])
                self.failed.append(job_id)
                self._note_error(job_id)
        new = [j for j in finished if j in self.pending]
        if not new:
            return
        points, keys = [], []
        for job in Job.fetch_many(new, connection=self.conn):
            assert job is not None
            result = job.latest_result()
            if result is None or result.return_value is None:
                raise RuntimeError(f"job {job.id} finished without a stored result")
            out = dict(result.return_value)
            index, path, _ = self.pending[job.id]
            keys.append(path)
            points.append(
                models.PointStruct(
                    id=index, vector=out.pop("vector").tolist(), payload={"path": path}
                )
            )
            self.jobs.append(out)
        self.qdrant.upsert(self.collection, points=points, wait=True)
        self.journal.stored(*keys)
        self.upserts += 1
        self.last_store = time.perf_counter()
        for job_id in new:
            self.latencies.append(self.last_store - self.pending.pop(job_id)[2])

    def _note_error(self, job_id: str) -> None:
        if len(self.errors) >= 3:
            return
        job = Job.fetch(job_id, connection=self.conn)
        result = job.latest_result()
        text = (result.exc_string if result is not None else None) or "(no exception stored)"
        self.errors.append(text.strip().splitlines()[-1][:300])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class KillPlan:
    """The failure drill's kill (bench/failure_drills.py): once `at` vectors are stored, the
    worker and its work-horse get SIGKILL and `restart()` starts the same worker command again
    (what a process supervisor would do); an image still neither stored nor failed after
    `settle_s` without progress is left unfinished instead of timing the run out."""

    def __init__(self, at: int, restart: Callable[[], subprocess.Popen[bytes]], settle_s: float):
        self.at, self.restart, self.settle_s = at, restart, settle_s
        self.killed_pids: list[int] = []
        self.stored_at_kill: int | None = None
        self.began_at_kill: int | None = None

    def kill(self, proc: subprocess.Popen[bytes], stored: int) -> None:
        """SIGKILL the worker and its horse, in the middle of a job: the collector sees a job
        finish just after its horse exits, so wait (up to 2 s) for the next horse, and then
        0.1 s more (a tiny-model job takes 0.15-0.4 s), first."""

        def horses() -> list[psutil.Process]:
            return [c for c in parent.children() if c.status() != psutil.STATUS_ZOMBIE]

        try:
            parent = psutil.Process(proc.pid)
            deadline = time.monotonic() + 2.0
            while not horses() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.1)
            victims = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        for p in victims:
            try:
                p.kill()
                self.killed_pids.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=STOP_TIMEOUT_S)
        self.stored_at_kill = stored


def _collect(
    conn: redis.Redis,
    queue: Queue,
    paths: list[Path],
    qdrant: Any,
    collection: str,
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    log: Path,
    journal: Path | None = None,
    kill: KillPlan | None = None,
) -> tuple[Collector, float, subprocess.Popen[bytes]]:
    """Enqueue every path (polling between enqueues too), then poll until all are accounted
    for. Returns the collector, the clock start and the worker process (a new one after a
    KillPlan's restart)."""
    col = Collector(conn, queue, qdrant, collection, journal)
    job_timeout = max(180, int(timeout_s))
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        t = time.perf_counter()
        job = queue.enqueue(
            JOB_FUNC,
            str(p),
            job_timeout=job_timeout,
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
        )
        col.pending[job.id] = (i, str(p), t)
        if time.perf_counter() - col.last_poll >= POLL_S:
            col.poll()
    deadline = t0 + timeout_s
    progress = (len(col.latencies) + len(col.failed), time.perf_counter())
    while col.pending:
        time.sleep(max(0.0, col.last_poll + POLL_S - time.perf_counter()))
        col.poll()
        if not col.pending:
            break
        if kill is not None and kill.stored_at_kill is None and len(col.latencies) >= kill.at:
            kill.kill(proc, len(col.latencies))
            proc = kill.restart()  # returns once the new worker has its model
            progress = (-1, time.perf_counter())
        accounted = len(col.latencies) + len(col.failed)
        if accounted != progress[0]:
            progress = (accounted, time.perf_counter())
        elif kill is not None and time.perf_counter() - progress[1] > kill.settle_s:
            break  # the rest never finishes: the drill counts them as unfinished
        if proc.poll() is not None:
            raise RuntimeError(
                f"rq peer: the worker exited with {proc.returncode} with {len(col.pending)} of "
                f"{len(paths)} images neither stored nor failed; log:\n{_log_tail(log)}"
            )
        if time.perf_counter() > deadline:
            raise TimeoutError(
                f"rq peer: {len(col.pending)} of {len(paths)} images neither stored nor failed "
                f"after {timeout_s:.0f}s (worker log: {log})"
            )
    return col, t0, proc


def run(
    paths: list[Path],
    model: str,
    threads: int,
    work_dir: Path,
    pretrained: str = "none",
    model_config: Path | None = None,
    timeout_s: float = 1800.0,
    journal: Path | None = None,
    kill_at: int | None = None,
    settle_s: float = 15.0,
) -> dict:
    """The RQ peer on `paths`; see the module docstring for what is measured and how.

    For the failure drills: `journal` (every image's start and store appended to that file)
    and `kill_at` (SIGKILL the worker and its horse once that many vectors are stored, start
    the same worker command again, and leave what never finishes within `settle_s` of no
    progress unfinished; see KillPlan)."""
    from qdrant_client import QdrantClient, models

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "rq-worker.log"
    queue_name, ready_key = f"raylens-peer-rq-{uuid.uuid4().hex[:8]}", "raylens-peer-rq:ready"
    redis_proc = worker = None
    qdrant = conn = None
    with RowMemory() as mem:  # redis, the worker and its horses; not this client process
        try:
            redis_proc, port = _start_redis(work_dir / "rq-redis")
            url = f"redis://127.0.0.1:{port}/0"
            conn = redis.Redis.from_url(url)
            queue = Queue(queue_name, connection=conn)

            def start() -> subprocess.Popen[bytes]:
                return _start_worker(
                    url, queue_name, ready_key, model, pretrained, model_config, threads, log,
                    journal,
                )  # fmt: skip

            def restart() -> subprocess.Popen[bytes]:
                assert conn is not None
                conn.delete(ready_key)
                proc = start()
                _wait_ready(conn, proc, queue, ready_key, log)
                return proc

            worker = start()
            info = _wait_ready(conn, worker, queue, ready_key, log)
            plan = None if kill_at is None else KillPlan(kill_at, restart, settle_s)
            qdrant = QdrantClient(path=str(work_dir / "rq-qdrant"))
            collection = "images"
            qdrant.create_collection(
                collection,
                vectors_config=models.VectorParams(
                    size=info["dim"], distance=models.Distance.COSINE
                ),
            )
            col, t0, worker = _collect(
                conn, queue, paths, qdrant, collection, worker, timeout_s, log, journal, plan
            )
            points = qdrant.count(collection, exact=True).count
            # Jobs RQ still holds as started (a killed horse's job stays there until its
            # job_timeout, then fails as abandoned; RQ retries it only with a Retry policy).
            started = len(queue.started_job_registry.get_job_ids(cleanup=False))
        finally:
            if qdrant is not None:
                qdrant.close()
            if conn is not None:
                conn.close()
            _stop(worker)
            _stop(redis_proc)
    out = _summary(col, t0, points, info, paths, threads, mem, strict=plan is None)
    if plan is not None:
        out.update(
            killed_pids=plan.killed_pids,
            stored_at_kill=plan.stored_at_kill,
            unfinished_keys=[path for _, path, _ in col.pending.values()],
            started_registry=started,
        )
    return out


def _summary(
    col: Collector,
    t0: float,
    points: int,
    info: dict,
    paths: list[Path],
    threads: int,
    mem: RowMemory,
    strict: bool = True,
) -> dict:
    done = len(col.latencies)
    if strict and points != done:
        raise RuntimeError(f"rq peer: the Qdrant collection holds {points} points; {done} stored")
    seconds = (col.last_store - t0) if done else float("nan")
    pids = {j["pid"] for j in col.jobs}
    ms = [v * 1000 for v in col.latencies]
    return {
        "name": NAME,
        "images_per_s": done / seconds if done else 0.0,
        "p50_ms": _pct(ms, 50),
        "p99_ms": _pct(ms, 99),
        "peak_rss_mb": mem.peak_rss_mb,
        "peak_pss_mb": mem.peak_pss_mb,
        "done": done,
        "failed": len(col.failed),
        "notes": (
            f"{info['worker_class']} (forks a work-horse per job: {len(pids)} distinct horse pids "
            f"for {done} jobs), model preloaded in the worker parent at 1 torch thread (libgomp "
            f"is not fork-safe), {threads} threads set in each horse; payload = file path; job "
            "returns the vector, RQ keeps it in Redis, a client-side collector polls every "
            f"{POLL_S * 1000:.0f} ms and batch-upserts into Qdrant local (cosine); redis AOF "
            "everysec"
        ),
        "seconds": seconds,
        "images": len(paths),
        "points": points,
        "errors": col.errors,
        "failed_keys": col.failed_keys,
        "worker_class": info["worker_class"],
        "horse_pids": len(pids),
        "worker_pid_ran_a_job": info["pid"] in pids,
        "horse_threads": sorted({j["threads"] for j in col.jobs}),
        "horse_threads_inherited": sorted({j["threads_inherited"] for j in col.jobs}),
        "job_decode_ms_p50": _pct([j["decode_s"] * 1000 for j in col.jobs], 50),
        "job_embed_ms_p50": _pct([j["embed_s"] * 1000 for j in col.jobs], 50),
        "upserts": col.upserts,
        "device": info["device"],
        "dtype": info["dtype"],
        "model_load_seconds": info["load_seconds"],
        "model_warmup_seconds": info["warmup_seconds"],
    }


# ---- command line --------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    ap.add_argument("--json", action="store_true")
    # The worker process (started by run()):
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    ap.add_argument("--ready-key", help=argparse.SUPPRESS)
    ap.add_argument("--log-level", default="INFO", help=argparse.SUPPRESS)
    ap.add_argument("--journal", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        # Run from the module named peer_rq (not __main__): the job, looked up as JOB_FUNC,
        # must see the model this sets.
        import peer_rq

        return peer_rq.worker_main(args)
    from bench_core import make_images

    with tempfile.TemporaryDirectory(prefix="raylens-bench-rq-") as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        config = Path(args.model_config) if args.model_config else None
        out = run(
            paths,
            args.model,
            args.threads,
            Path(tmp) / "work",
            args.pretrained,
            config,
            timeout_s=args.timeout,
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"rq: {out['done']} done, {out['failed']} failed, {out['images_per_s']:.2f} images/s, "
            f"p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms, peak RSS "
            f"{out['peak_rss_mb']:.0f} MB, PSS {out['peak_pss_mb'] or float('nan'):.0f} MB "
            f"({out['worker_class']}, {out['horse_pids']} horses)"
        )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # finally-blocks run on SIGTERM
    sys.exit(main())
