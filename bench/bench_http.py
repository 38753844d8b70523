"""`make bench`: raylens against the raw limit and the systems users would otherwise run.

One run, one generated image set (bench_core.make_images: small web images and 2-12 MP camera
JPEGs), one architecture (ViT-B-32 by default, random weights: RAYLENS_CLIP_PRETRAINED=none),
the same torch threads everywhere. Rows (names as in --json):

  raw                  decode + preprocess + forward at the best batch size; no queue, no Ray
                       (bench_core.raw_limit, in its own process)
  raylens_bulk         `raylens ingest` of the image folder (raylens up --no-http)
  raylens_http         the images posted one per request by --clients concurrent clients
                       (asyncio + httpx) through the Ray Serve ingress
  rq                   peer: an RQ forking worker, model preloaded, one job per image
                       (bench/peer_rq.py)
  serve_task_consumer  peer: Ray Serve asynchronous inference, task_consumer + Celery on Redis,
                       one task per image (bench/peer_serve_tc.py)
  serve_naive          peer: a Serve deployment embedding one image per request, no batching
                       (bench/peer_serve_naive.py)
  ray_data             peer: a Ray Data pipeline, read_binary_files -> map_batches actor pool
                       -> one Qdrant Edge writer (bench/peer_ray_data.py)
  serve_batch          peer: a Serve deployment with @serve.batch (up to 32 per forward pass,
                       100 ms wait, max_ongoing_requests 128), Qdrant Edge
                       (bench/peer_serve_batch.py)

Every row: images/s (first submission to last vector stored), p50/p99 latency from an image's
submission to its vector stored, peak RSS (and PSS) summed over the processes the row started
(bench/_rss.py; the benchmark process itself is the client and is not counted), ratio to raw.
Then, on the raylens_http system: healthz latency while the workers are saturated, search
latency over --index-points stored vectors, and faces/s and video frames/s (bench_media).

Failure columns (--failure-drills, on by default; bench/failure_drills.py): one short drill per
row (raw, the raylens rows that ran, the --peers rows) on the tests' tiny OpenCLIP model and
--drill-images generated JPEGs (a batching row at least 4 batches of them) plus one corrupt
file; at half-way every process of the row that runs the model gets SIGKILL and the row
restarts the way that system restarts (raylens: the worker processes, replaced by its
supervisor; rq: the worker and its work-horse, started again by the drill; Serve rows: the
replica, replaced by Serve; ray_data: the Embedder actors, restarted by Ray). Columns:

{definitions}
    uv run python bench/bench_http.py [--images 192] [--clients 32] [--peers rq,...] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_common import free_port, post_upload, stdout_to_stderr  # noqa: E402
from _rss import RowMemory  # noqa: E402
from bench_core import (  # noqa: E402
    WORKERS_HELP,
    make_images,
    raw_limit_isolated,
    run_core,
    worker_layout,
)
from bench_media import print_media, run_media  # noqa: E402
from failure_drills import DEFINITIONS, run_drills, table_lines  # noqa: E402

__doc__ = __doc__.replace("{definitions}", DEFINITIONS)

TERMINAL = ("done", "failed")
QUERIES = [
    "a photo of a cat",
    "a red car parked on a street",
    "mountains at sunset",
    "a bowl of fruit on a table",
    "people walking on a beach",
    "a city skyline at night",
    "a dog running in a park",
    "an old wooden boat",
    "a plate of pasta",
    "snow on pine trees",
]


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


# ---- the system under test ----------------------------------------------------------------


def start_system(
    data_dir: Path,
    model: str,
    threads: int,
    batch: int,
    decode_threads: int,
    workers: int | None = None,
) -> Any:
    """Ray in this process, raylens (queue, index, one worker) and the Serve ingress."""
    import ray

    from raylens.actors import launch
    from raylens.cluster.settings import Settings
    from raylens.serve_app.deploy import deploy

    for key in [k for k in os.environ if k.startswith("RAYLENS_")]:
        os.environ.pop(key)  # like bench_core's subprocess env: only what is set below
    n_workers, per_worker = worker_layout(threads, workers)
    settings = Settings(
        data_dir=data_dir,
        clip_model=model,
        clip_pretrained="none",
        num_workers=n_workers,
        worker_num_cpus=per_worker,
        torch_threads=per_worker,
        max_batch_size=batch,
        decode_threads=decode_threads,
        namespace=f"raylens-bench-{uuid.uuid4().hex[:8]}",
        http_port=free_port(),
    )
    ray.init(
        address="local",
        num_cpus=max(threads, os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
        namespace=settings.namespace,
        object_store_memory=1 << 30,
    )
    try:
        started = launch.start(settings)
        url = deploy(settings)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/v1/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the ingress at {url} never became ready")
            time.sleep(0.5)
    except BaseException:
        stop_system(settings)
        raise
    return settings, url, started["workers"][0]


def stop_system(settings: Any) -> None:
    import ray

    from raylens.actors import launch
    from raylens.serve_app.deploy import undeploy

    try:
        undeploy()
        launch.stop(settings, timeout_s=10)
    finally:
        ray.shutdown()


# ---- 2 + 3: uploads by concurrent clients, healthz sampled meanwhile ------------------------


class HealthSampler(threading.Thread):
    """GET /v1/healthz every `period_s` (its own thread and connection) until stopped."""

    def __init__(self, url: str, period_s: float = 0.25) -> None:
        super().__init__(name="healthz", daemon=True)
        self.url = url
        self.period_s = period_s
        self.latencies: list[float] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            next_at = time.perf_counter()
            while not self.halt.is_set():
                t0 = time.perf_counter()
                try:
                    ok = http.get("/v1/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.perf_counter() - t0)
                else:
                    self.errors += 1
                next_at += self.period_s
                self.halt.wait(max(0.0, next_at - time.perf_counter()))


async def upload_all(url: str, data: list[bytes], clients: int) -> dict[str, Any]:
    """`clients` concurrent clients, one image per POST /v1/jobs; then wait for every job."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(300.0)
    ids: list[str | None] = [None] * len(data)
    sent_at: dict[str, float] = {}  # job id -> Unix time its upload request was first sent
    latencies: list[float] = []
    retries = 0
    next_item = iter(range(len(data)))

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:

        async def client() -> None:
            nonlocal retries
            for i in next_item:  # shared iterator: each client takes the next image
                files = [("files", (f"photo_{i:05d}.jpg", data[i], "image/jpeg"))]
                headers = {"Idempotency-Key": uuid.uuid4().hex}
                t0, t0_wall = time.perf_counter(), time.time()
                resp, refused = await post_upload(http, files, headers)
                retries += refused
                if resp.status_code != 202:
                    raise SystemExit(f"upload {i}: HTTP {resp.status_code} {resp.text[:300]}")
                latencies.append(time.perf_counter() - t0)
                ids[i] = resp.json()["jobs"][0]["id"]
                sent_at[ids[i]] = t0_wall

        started_at = time.time()
        await asyncio.gather(*(client() for _ in range(clients)))
        uploaded_at = time.time()
        if len(set(ids)) != len(data):
            raise SystemExit("uploads were deduplicated: the images are not distinct")

        # Jobs finish in about submission order: poll the oldest unfinished one (low load on
        # the ingress; the throughput comes from the jobs' own `done` timestamps anyway).
        records: list[dict[str, Any]] = []
        for job_id in ids:
            while True:
                resp = await http.get(f"/v1/jobs/{job_id}")
                resp.raise_for_status()
                job = resp.json()
                if job["state"] in TERMINAL:
                    records.append(job)
                    break
                await asyncio.sleep(0.25)
    done = [j for j in records if j["state"] == "done"]
    last_done = max((j["timestamps"]["done"] for j in done), default=uploaded_at)
    return {
        "started_at": started_at,
        "uploaded_at": uploaded_at,
        "last_done_at": last_done,
        "seconds": last_done - started_at,
        "upload_seconds": uploaded_at - started_at,
        "done": len(done),
        "failed": len(records) - len(done),
        "retries_429_503": retries,
        "upload": summary_ms(latencies),
        # From the client sending the upload (its first attempt) to the job's vector stored.
        "submit_to_done": summary_ms([j["timestamps"]["done"] - sent_at[j["id"]] for j in done]),
        # From the job record's creation (upload received and fsynced) to its vector stored.
        "queued_to_done": summary_ms(
            [j["timestamps"]["done"] - j["timestamps"]["queued"] for j in done]
        ),
    }


# ---- 4: search over many stored vectors ---------------------------------------------------


def fill_index(settings: Any, report: dict[str, Any], points: int, batch: int = 1000) -> int:
    """`points` random unit vectors with worker-like ids and payloads, straight into the index
    actor. Returns the points in the index afterwards."""
    import ray

    from raylens.cluster.index import point_id

    index = ray.get_actor(settings.index_actor_name, namespace=settings.namespace)
    dim, model_id = int(report["dim"]), report["model_id"]
    rng = np.random.default_rng(1)
    for start in range(0, points, batch):
        n = min(batch, points - start)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        shas = [hashlib.sha256(f"bench-http-{start + k}".encode()).hexdigest() for k in range(n)]
        now = time.time()
        payloads = [
            {
                "job_id": uuid.uuid4().hex,
                "source": sha,
                "source_kind": "upload",
                "name": f"synthetic_{start + k:05d}.jpg",
                "sha256": sha,
                "model_id": model_id,
                "created_at": now,
            }
            for k, sha in enumerate(shas)
        ]
        ids = [point_id(sha, model_id) for sha in shas]
        ray.get(index.upsert.remote(ids, vectors, payloads))
    return int(ray.get(index.count.remote()))


def search_latency(url: str, queries: int, top_k: int = 10, warmup: int = 10) -> dict[str, Any]:
    latencies, took, hits = [], [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(warmup + queries):
            body = {"text": QUERIES[i % len(QUERIES)], "top_k": top_k}
            t0 = time.perf_counter()
            resp = http.post("/v1/search", json=body)
            elapsed = time.perf_counter() - t0
            if resp.status_code != 200:
                raise SystemExit(f"search: HTTP {resp.status_code} {resp.text[:300]}")
            if i >= warmup:
                out = resp.json()
                latencies.append(elapsed)
                took.append(out["took_ms"])
                hits.append(len(out["hits"]))
    s = summary_ms(latencies)
    return {
        "queries": queries,
        "warmup": warmup,
        "top_k": top_k,
        **s,
        "server_took_p50_ms": pct(took, 50),
        "min_hits": min(hits) if hits else 0,
    }


# ---- the run --------------------------------------------------------------------------------


def worker_stage_seconds(settings: Any) -> list[dict[str, Any]]:
    """Each worker's seconds per stage so far (decode, infer, faces, write, and ack: its write
    thread waiting for the queue to record a batch)."""
    import ray

    from raylens.actors import launch

    return [ray.get(w.report.remote())["seconds"] for w in launch.worker_handles(settings)]


def run_http(
    paths: list[Path],
    data_dir: Path,
    model: str,
    threads: int,
    batch: int,
    decode_threads: int,
    clients: int,
    index_points: int,
    search_queries: int,
    face_jobs: int = 24,
    video_seconds: int = 60,
    workers: int | None = None,
) -> dict[str, Any]:
    data = [p.read_bytes() for p in paths]  # file reads are not what we measure
    # Peak memory of the Ray processes (queue, worker, index, Serve proxy and replica) from
    # start to the last upload done; this process is the clients, as in every peer's row.
    mem = RowMemory().__enter__()
    settings, url, report = start_system(data_dir, model, threads, batch, decode_threads, workers)
    try:
        sampler = HealthSampler(url)
        sampler.start()
        try:
            up = asyncio.run(upload_all(url, data, clients))
        finally:
            sampler.halt.set()
            sampler.join()
            mem.__exit__(None, None, None)
        up.update(peak_rss_mb=mem.peak_rss_mb, peak_pss_mb=mem.peak_pss_mb)
        up["stage_seconds"] = worker_stage_seconds(settings)
        healthz = {
            "period_ms": sampler.period_s * 1000,
            "errors": sampler.errors,
            **summary_ms(sampler.latencies),
        }
        points = fill_index(settings, report, index_points)
        search = {"index_points": points, **search_latency(url, search_queries)}
        media = run_media(url, face_jobs, video_seconds) if face_jobs else None
    finally:
        stop_system(settings)
    return {
        "worker": {
            "workers": settings.num_workers,
            "num_cpus": settings.worker_num_cpus,
            "torch_threads": settings.torch_threads,
            "max_batch_size": batch,
            "decode_threads": decode_threads,
            "device": report.get("device"),
        },
        "upload": up,
        "healthz": healthz,
        "search": search,
        "media": media,
    }


ROW_KEYS = ("images_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "peak_pss_mb")
FAILURE_KEYS = ("corrupt", "redone", "lost", "dup")
PEERS = {  # row name -> module in bench/ with run(paths, model, threads, work_dir) -> dict
    "rq": "peer_rq",
    "serve_task_consumer": "peer_serve_tc",
    "serve_naive": "peer_serve_naive",
    "ray_data": "peer_ray_data",
    "serve_batch": "peer_serve_batch",
}


def _row(name: str, fig: dict[str, Any], raw_ips: float, **extra: Any) -> dict[str, Any]:
    row = {"name": name, **{k: fig.get(k) for k in ROW_KEYS}, **extra}
    row["ratio_to_raw"] = fig["images_per_s"] / raw_ips
    return row


def rows_of(
    core: dict[str, Any] | None,
    raw: dict[str, Any],
    http: dict[str, Any],
    peers: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The table: one row per system; p50/p99 run from submission to the vector stored."""
    ips = raw["images_per_s"]
    rows = [_row("raw", raw, ips, batch_size=raw["batch_size"])]
    if core is not None:
        rows.append(_row("raylens_bulk", core["raylens_ingest"], ips))
    up = http["upload"]
    fig = {
        "images_per_s": up["done"] / up["seconds"],
        "p50_ms": up["submit_to_done"]["p50_ms"],
        "p99_ms": up["submit_to_done"]["p99_ms"],
        "peak_rss_mb": up["peak_rss_mb"],
        "peak_pss_mb": up["peak_pss_mb"],
    }
    rows.append(_row("raylens_http", fig, ips, clients=http["clients"]))
    for name, out in peers.items():
        rows.append(_row(name, out, ips, done=out.get("done"), failed=out.get("failed")))
    return rows


def add_failures(rows: list[dict[str, Any]], drills: list[dict[str, Any]] | None) -> None:
    """Each row gets its drill's corrupt / redone / lost / dup (None: no drill ran for it)."""
    by_name = {d["name"]: d for d in drills or []}
    for r in rows:
        d = by_name.get(r["name"], {})
        r.update({k: d.get(k) for k in FAILURE_KEYS})


def run_peers(
    names: list[str], paths: list[Path], model: str, threads: int, work_dir: Path
) -> dict[str, dict[str, Any]]:
    import importlib

    out = {}
    for name in names:
        module = importlib.import_module(PEERS[name])
        print(f"peer {name} ...", file=sys.stderr, flush=True)
        out[name] = module.run(paths, model, threads, work_dir / name)
    return out


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def cell(v: Any) -> str:
    return "-" if v is None else str(v)


def table_rows(rows: list[dict[str, Any]], failures: bool) -> list[str]:
    """The bench table's header and one line per row (with the failure columns if drilled)."""
    head = (
        f"  {'row':22} {'images/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'peak RSS MB':>12} "
        f"{'PSS MB':>8} {'vs raw':>7}"
    )
    if failures:
        head += f"  {'corrupt':22} {'redone':>6} {'lost':>5} {'dup':>4}"
    lines = [head]
    for r in rows:
        line = (
            f"  {r['name']:22} {r['images_per_s']:9.2f} {fmt(r['p50_ms']):>9} "
            f"{fmt(r['p99_ms']):>9} {fmt(r['peak_rss_mb']):>12} {fmt(r['peak_pss_mb']):>8} "
            f"{r['ratio_to_raw']:7.3f}"
        )
        if failures:
            line += (
                f"  {cell(r.get('corrupt')):22} {cell(r.get('redone')):>6} "
                f"{cell(r.get('lost')):>5} {cell(r.get('dup')):>4}"
            )
        lines.append(line)
    return lines


def print_table(out: dict[str, Any]) -> None:
    print(
        f"{out['images']} images (mean {out['mean_megapixels']:.1f} MP), {out['model']} random "
        f"weights on {out['device']} ({out['dtype']}), {out['threads']} threads; latency = "
        "submission -> vector stored; memory = peak of the row's own processes"
    )
    drills = out.get("failure_drills")
    print("\n".join(table_rows(out["rows"], drills is not None)))
    best = out["rows"][0].get("batch_size")
    print(f"  raw: best batch {best}; images/s by batch size {out['raw_by_batch_size']}")
    for name, peer in out.get("peers", {}).items():
        if peer.get("notes"):
            print(f"  {name}: {peer['notes']}")
    if drills is not None:
        print(
            f"Failure drills (tiny model, {out['drill_images']} good images, batching rows at "
            "least 4 batches, + 1 corrupt per row; SIGKILL at half-way, then the row's own "
            "restart):"
        )
        print("\n".join(table_lines(drills)))
        print(DEFINITIONS.rstrip())


def print_http(out: dict[str, Any]) -> None:
    up, hz, se = out["upload"], out["healthz"], out["search"]
    w = out["worker"]
    print(
        f"HTTP ingress (Ray Serve), {out['images']} images one per request, "
        f"{out['clients']} concurrent clients; {w.get('workers', 1)} worker(s) of "
        f"{w['num_cpus']:g} CPUs, "
        f"batch {w['max_batch_size']}, {w['decode_threads']} decode threads"
    )
    print(
        f"    http: first upload -> last job done {up['seconds']:.1f}s (uploads took "
        f"{up['upload_seconds']:.1f}s); request -> 202 p50 {fmt(up['upload']['p50_ms'])} ms, "
        f"p99 {fmt(up['upload']['p99_ms'])} ms; {up['done']} done, {up['failed']} failed, "
        f"{up['retries_429_503']} 429/503 retries"
    )
    print(
        f"    http: job created -> done p50 {fmt(up['queued_to_done']['p50_ms'])} ms, "
        f"p99 {fmt(up['queued_to_done']['p99_ms'])} ms"
    )
    print(
        f"  healthz while workers are saturated ({hz['n']} samples every "
        f"{hz['period_ms']:.0f} ms, {hz['errors']} errors): p50 {fmt(hz['p50_ms'])} ms, "
        f"p99 {fmt(hz['p99_ms'])} ms, max {fmt(hz['max_ms'])} ms"
    )
    print(
        f"  search: {se['queries']} text queries (top_k {se['top_k']}, after {se['warmup']} "
        f"warm-up) over {se['index_points']} points: p50 {fmt(se['p50_ms'])} ms, "
        f"p99 {fmt(se['p99_ms'])} ms (server took p50 {fmt(se['server_took_p50_ms'])} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--search-queries", type=int, default=200)
    ap.add_argument("--index-points", type=int, default=10_000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="raylens decode threads per worker (default: the setting's default)",
    )
    ap.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    ap.add_argument(
        "--no-ingest",
        action="store_true",
        help="skip the raylens_bulk row (`raylens ingest`)",
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"peer rows to run, comma-separated, from {','.join(PEERS)} ('' for none)",
    )
    ap.add_argument(
        "--face-jobs", type=int, default=24, help="face photos for faces/s (0: skip faces/video)"
    )
    ap.add_argument("--video-seconds", type=int, default=60, help="length of the 720p test video")
    ap.add_argument(
        "--failure-drills",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the failure columns: one drill per row, on the tiny model (default: on)",
    )
    ap.add_argument(
        "--drill-images",
        type=int,
        default=48,
        help="good images per failure drill (default 48; a batching row gets at least 4 batches)",
    )
    ap.add_argument(
        "--drill-settle",
        type=float,
        default=15.0,
        help="a drill ends after this many seconds without progress (default 15)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; choose from {sorted(PEERS)}")
    with stdout_to_stderr():
        out, core, http = measure(args, peers)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print_table(out)
    if core is not None:
        for st in core["raylens_ingest"]["stage_seconds"]:
            print(
                "  raylens_bulk worker stage seconds: "
                + ", ".join(f"{k} {v:.1f}" for k, v in (st or {}).items())
            )
    print_http(http)
    if http.get("media"):
        print_media(http["media"])
    return 0


def measure(
    args: argparse.Namespace, peers: list[str]
) -> tuple[dict[str, Any], dict[str, Any] | None, dict]:
    """Everything, on one image set: (the JSON object, the core figures, the HTTP figures)."""
    from PIL import Image

    from raylens.cluster.settings import Settings

    decode_threads = args.decode_threads or Settings.model_fields["decode_threads"].default
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="raylens-bench-") as tmp:
        folder = Path(tmp) / "images"
        paths = make_images(folder, args.images)
        mp = sum(Image.open(p).width * Image.open(p).height for p in paths) / len(paths) / 1e6
        core = None
        if args.no_ingest:
            raw = raw_limit_isolated(folder, args.model, args.threads, sizes)
        else:
            data_dir = Path(tmp) / "core-data"
            core = run_core(
                folder, paths, data_dir, args.model, args.threads, sizes, decode_threads,
                args.workers,
            )  # fmt: skip
            raw = core["raw"]
        http = run_http(
            paths,
            Path(tmp) / "http-data",
            args.model,
            args.threads,
            raw["batch_size"],
            decode_threads,
            args.clients,
            args.index_points,
            args.search_queries,
            args.face_jobs,
            args.video_seconds,
            args.workers,
        )
        peer_out = run_peers(peers, paths, args.model, args.threads, Path(tmp) / "peers")
        drills = None
        if args.failure_drills:
            drilled = ["raw", *([] if args.no_ingest else ["raylens_bulk"]), "raylens_http"]
            drills = run_drills(
                [*drilled, *peers],
                Path(tmp) / "drills",
                images=args.drill_images,
                threads=args.threads,
                batch=raw["batch_size"],
                settle_s=args.drill_settle,
            )
    http.update(images=args.images, clients=args.clients)
    rows = rows_of(core, raw, http, peer_out)
    if drills is not None:
        add_failures(rows, drills)
    out = {
        "device": raw["device"],
        "dtype": raw["dtype"],
        "model": args.model,
        "images": args.images,
        "mean_megapixels": round(mp, 2),
        "threads": args.threads,
        "clients": args.clients,
        "rows": rows,
        "raw_by_batch_size": {str(k): round(v, 2) for k, v in raw["by_batch_size"].items()},
        "peers": peer_out,
        "http_upload": http["upload"],
        "search": http["search"],
        "healthz": http["healthz"],
        "media": http["media"],
        "worker": http["worker"],
        "core": core if core is not None else {"raw": raw},
        "failure_drills": drills,
        "drill_images": args.drill_images if drills is not None else None,
        "failure_definitions": DEFINITIONS if drills is not None else None,
    }
    return out, core, http


if __name__ == "__main__":
    sys.exit(main())
