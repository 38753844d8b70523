"""Overhead: raylens's own cost per job, measured with a near-free model (issue 13).

The model is the tests' tiny OpenCLIP (tests/_tiny_clip.py: 32 px input, one layer per tower,
loaded from a real checkpoint through RAYLENS_CLIP_MODEL / _PRETRAINED / _MODEL_CONFIG) and the
inputs are small distinct JPEGs (64x64 noise), so what remains is what raylens itself costs:
queue, leases, payload store, index upserts, Ray calls. Parts:

  ingest     for each --sizes N (its own images, so nothing is skipped as already done):
             - in-process: the same decode (bench/_peer_common.decode_like_raw) + forward
               (raylens.models.clip.ClipEmbedder) in this benchmark process, one thread
               decoding, batches of the max_batch_size setting, --threads torch threads;
               file reads are not timed; images/s and CPU-ms per image (process_time);
             - raylens: one system (`raylens up --detach --no-http`, its own Ray head and data
               dir), `raylens ingest FOLDER --pipeline embed --json --no-progress` per size;
               images/s = done / the summary's seconds, and the ratio to in-process;
             - CPU-ms per job per role: user+system CPU of every process of that Ray session
               (found from its GCS port: the daemons that name the session, and all their
               descendants), sampled before, during (for processes that exit) and after each
               ingest, attributed by process title (ray::JobQueue -> queue, ray::Worker ->
               worker, ...), plus the ingest CLI itself (getrusage of the child). The CLI's own
               start-up (imports, joining Ray) counts: it is what a user's ingest costs.
             Before the sizes: a warm-up ingest, and the idle cost (CPU-ms per second per role
             of the system doing nothing); "of which idle rate" is that rate times the window
             (polls, heartbeats, the dashboard: paid per second, not per job).
  http       (--no-http skips it) a second system with the Serve ingress (`raylens up
             --detach`): --http-images images uploaded one per POST /v1/jobs by 16 concurrent
             clients (httpx), then as many new images 16 files per request; per mode images/s
             (first request to last job done) and CPU-ms per image per role (Serve proxy,
             replica, queue, worker, index, ...). The window ends when the last acknowledged
             job is done; the benchmark's own client CPU is shown apart, not in the total.
             Targets of the issue: <= 5 CPU-ms per image single-image, <= 2 with 16 per
             request.

`raylens down` stops only the Ray head it started (raylens.cli.ray_session), so the benchmark
leaves other Rays on the machine alone; should `down` fail, it ends its session's processes by pid.

    uv run python bench/bench_overhead.py [--sizes 1000,10000,50000] [--http-images 2000]
                                          [--threads 1] [--no-http] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from raylens.cli import ray_session as raylens_session

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
for _p in (BENCH_DIR, TESTS_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
from _peer_common import decode_like_raw, free_port, post_upload  # noqa: E402

from _tiny_clip import TinyModel, write_tiny_model  # noqa: E402

CLI = [sys.executable, "-m", "raylens.cli.main"]
IMAGE_SIDE = 64
WARMUP_JOBS = 64
IDLE_SECONDS = 5.0
HTTP_CLIENTS = 16
HTTP_FILES_PER_REQUEST = 16
SAMPLE_PERIOD_S = 1.0
CMD_TIMEOUT_S = 1800.0

# Roles, in the order the report shows them; Ray actor processes are titled ray::<Class>.
ROLES = [
    "ingest_client",
    "serve_proxy",
    "serve_replica",
    "queue",
    "worker",
    "index",
    "supervisor",
    "metrics",
    "serve_controller",
    "raylet",
    "gcs",
    "ray_idle_workers",
    "ray_dashboard",
    "ray_other",
]
ACTOR_ROLES = {
    "JobQueue": "queue",
    "Worker": "worker",
    "VectorIndex": "index",
    "Supervisor": "supervisor",
    "ProxyActor": "serve_proxy",
    "ServeReplica": "serve_replica",
    "ServeController": "serve_controller",
    "IDLE": "ray_idle_workers",
    "DashboardAgent": "ray_dashboard",
}
CLIENT_ROLE = "bench_http_client"  # the benchmark's own httpx clients: shown, not in the total


# ---- inputs -------------------------------------------------------------------------------


def make_jpegs(folder: Path, n: int, seed: int) -> list[Path]:
    """n distinct 64x64 noise JPEGs (each size and mode its own seed: no content repeats)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        path = folder / f"img_{i:06d}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def default_batch() -> int:
    from raylens.cluster.settings import Settings

    return int(Settings.model_fields["max_batch_size"].default)


# ---- in-process figure --------------------------------------------------------------------


def load_embedder(tiny: TinyModel, threads: int) -> Any:
    from raylens.models.clip import ClipEmbedder

    return ClipEmbedder(
        tiny.name,
        str(tiny.checkpoint_path),
        device="auto",  # as the workers' default (RAYLENS_CLIP_DEVICE)
        model_config=tiny.config_path,
        threads=threads,
    )


def in_process(emb: Any, paths: list[Path], batch: int) -> dict[str, Any]:
    """Decode + forward in this process, batch by batch; file reads are outside the timer."""
    wall = cpu = 0.0
    for i in range(0, len(paths), batch):
        data = [p.read_bytes() for p in paths[i : i + batch]]
        t0, c0 = time.perf_counter(), time.process_time()
        emb.embed_images(np.stack([decode_like_raw(emb, d) for d in data]))
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return {
        "images": len(paths),
        "seconds": round(wall, 3),
        "images_per_s": len(paths) / wall,
        "cpu_ms_per_image": cpu * 1000 / len(paths),
    }


# ---- the processes of one Ray session, and their CPU ---------------------------------------


def role_of(proc: psutil.Process) -> str:
    """A session process's role, from its title (Ray sets ray::<Class>[.<method>])."""
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "ray_other"
    title = (cmdline[0] if cmdline else name).strip()
    if title.startswith("ray::"):
        actor = (title[5:].split() or [""])[0].split(".")[0].split(":")[0]
        if actor in ACTOR_ROLES:
            return ACTOR_ROLES[actor]
        if "Metrics" in actor:
            return "metrics"
        return "ray_other"  # RuntimeEnvAgent, ...
    if name == "raylet":
        return "raylet"
    if name == "gcs_server":
        return "gcs"
    if title.startswith("ray-dashboard-") or any(a.endswith("dashboard.py") for a in cmdline):
        return "ray_dashboard"  # the dashboard and its module heads
    return "ray_other"  # monitor, log monitor, client server, the dashboard's forkserver


def cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(t.user + t.system)


class RaySession(raylens_session.RaySession):
    """The processes of the head on `ray_port` (raylens.cli.ray_session), with their CPU."""

    def __init__(self, ray_port: int) -> None:
        super().__init__(ray_port)
        self._roles: dict[tuple[int, float], str] = {}

    def role(self, key: tuple[int, float], proc: psutil.Process) -> str:
        # An idle worker becomes an actor (its title changes): look until it is not IDLE.
        role = self._roles.get(key)
        if role is None or role == "ray_idle_workers":
            role = self._roles[key] = role_of(proc)
        return role

    def read(self) -> dict[tuple[int, float], tuple[str, float]]:
        out = {}
        for key, p in self.members().items():
            t = cpu_s(p)
            if t is not None:
                out[key] = (self.role(key, p), t)
        return out


@dataclass
class CpuWindow:
    """CPU seconds per role spent by a session between __enter__ and __exit__. A sampler thread
    keeps each process's last reading, so a process that exits inside the window still counts
    (up to its last sample); one that starts inside it counts from zero."""

    session: RaySession
    period_s: float = SAMPLE_PERIOD_S
    by_role_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    exited: int = 0
    started: int = 0

    def __enter__(self) -> CpuWindow:
        self._base = self.session.read()
        self._last = dict(self._base)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-window", daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.wait(self.period_s):
            self._last.update(self.session.read())

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._halt.set()
        self._thread.join(timeout=30)
        final = self.session.read()
        self.exited = len(set(self._last) - set(final))
        self.started = len(set(final) - set(self._base))
        totals: dict[str, float] = defaultdict(float)
        for key, (role, t) in {**self._last, **final}.items():
            totals[role] += t - (self._base[key][1] if key in self._base else 0.0)
        self.by_role_s = dict(totals)


def per_unit_ms(by_role_s: dict[str, float], units: int) -> dict[str, float]:
    return {
        r: round(by_role_s[r] * 1000 / units, 3) for r in ROLES + [CLIENT_ROLE] if r in by_role_s
    }


def total_ms(per_role: dict[str, float]) -> float:
    return round(sum(v for r, v in per_role.items() if r != CLIENT_ROLE), 3)


def idle_share_ms(idle_ms_per_s: dict[str, float], window_s: float, units: int) -> float:
    """CPU-ms per unit that the system would have spent doing nothing over the window (its
    background: polls, heartbeats, the dashboard), to read the per-job cost net of it."""
    return round(sum(idle_ms_per_s.values()) * window_s / max(units, 1), 3)


# ---- one raylens system -------------------------------------------------------------------


class System:
    """`raylens up --detach` of a system of its own (Ray head, data dir, ports), and down."""

    def __init__(self, work: Path, tiny: TinyModel, threads: int, http: bool) -> None:
        self.http = http
        self.ray_port = free_port()
        self.http_port = free_port()
        self.data_dir = work / "data"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))
        }
        self.env.update(
            RAYLENS_DATA_DIR=str(self.data_dir),
            RAYLENS_CLIP_MODEL=tiny.name,
            RAYLENS_CLIP_PRETRAINED=str(tiny.checkpoint_path),
            RAYLENS_CLIP_MODEL_CONFIG=str(tiny.config_path),
            RAYLENS_RAY_PORT=str(self.ray_port),
            RAYLENS_DASHBOARD_PORT=str(free_port()),
            RAYLENS_HTTP_PORT=str(self.http_port),
            RAYLENS_WORKER_NUM_CPUS=str(threads),
            RAYLENS_TORCH_THREADS=str(threads),
        )
        self.session = RaySession(self.ray_port)
        self.url = f"http://127.0.0.1:{self.http_port}"

    def cli(self, *args: str, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def __enter__(self) -> System:
        try:
            up = self.cli("up", "--detach", *([] if self.http else ["--no-http"]), timeout=600)
            if up.returncode != 0:
                raise SystemExit(f"raylens up failed:\n{up.stderr[-3000:]}")
            if not self.session.find():
                raise SystemExit(f"raylens is up but no Ray GCS listens on {self.ray_port}")
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        if self.session.session_name is None:
            self.session.find()  # `up` may have started Ray and then failed
        # `raylens down` stops only this head (not other Rays on the machine); if it fails or
        # hangs, the session's processes are ended by pid here.
        try:
            res = self.cli("down", timeout=300)
            if res.returncode != 0:
                print(f"raylens down: {res.stderr[-1000:]}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            print("raylens down timed out; ending the session's processes", file=sys.stderr)
        finally:
            if self.session.session_name is not None:
                self.session.terminate()

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        """CPU-ms per second per role while nothing is submitted."""
        with CpuWindow(self.session) as w:
            time.sleep(seconds)
        return {r: round(v * 1000 / w.seconds, 3) for r, v in w.by_role_s.items()}

    def ingest(self, folder: Path) -> dict[str, Any]:
        """`raylens ingest` of folder, with the session's and the CLI's CPU over its run."""
        with CpuWindow(self.session) as w:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = self.cli("ingest", str(folder), "--pipeline", "embed", "--json", "--no-progress")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"raylens ingest {folder} failed:\n{res.stderr[-3000:]}")
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        cpu = dict(w.by_role_s)
        cpu["ingest_client"] = (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime
        )
        return {"summary": summary, "cpu_s": cpu, "window_s": w.seconds, "exited": w.exited}


# ---- part 1: ingest -----------------------------------------------------------------------


def run_ingest(work: Path, tiny: TinyModel, sizes: list[int], threads: int) -> dict[str, Any]:
    batch = default_batch()
    folders = {n: work / f"images-{n}" for n in sizes}
    for k, n in enumerate(sizes):
        make_jpegs(folders[n], n, seed=1000 + k)
    make_jpegs(work / "warmup", WARMUP_JOBS, seed=999)

    emb = load_embedder(tiny, threads)
    in_proc = {n: in_process(emb, sorted(folders[n].glob("*.jpg")), batch) for n in sizes}
    del emb

    rows = []
    with System(work / "system-ingest", tiny, threads, http=False) as system:
        warm = system.ingest(work / "warmup")
        idle = system.idle_cpu(IDLE_SECONDS)
        for n in sizes:
            got = system.ingest(folders[n])
            s = got["summary"]
            ips = s["done"] / s["seconds"] if s["seconds"] else 0.0
            per_job = per_unit_ms(got["cpu_s"], max(s["done"], 1))
            rows.append(
                {
                    "jobs": n,
                    "done": s["done"],
                    "failed": s["failed"],
                    "skipped": s["skipped"],
                    "seconds": s["seconds"],
                    "images_per_s": ips,
                    "in_process_images_per_s": in_proc[n]["images_per_s"],
                    "ratio": ips / in_proc[n]["images_per_s"],
                    "in_process_cpu_ms_per_image": in_proc[n]["cpu_ms_per_image"],
                    "latency_p50_s": s["latency_p50_s"],
                    "latency_p99_s": s["latency_p99_s"],
                    "cli_wall_s": round(got["window_s"], 2),
                    "cpu_ms_per_job": per_job,
                    "cpu_ms_per_job_total": total_ms(per_job),
                    "idle_share_ms_per_job": idle_share_ms(idle, got["window_s"], s["done"]),
                    "processes_exited": got["exited"],
                }
            )
    return {
        "batch": batch,
        "warmup": {"jobs": WARMUP_JOBS, "done": warm["summary"]["done"]},
        "idle_cpu_ms_per_s": idle,
        "idle_seconds": IDLE_SECONDS,
        "in_process": {"where": "this benchmark process", "threads": threads, "batch": batch},
        "sizes": rows,
    }


# ---- part 2: HTTP -------------------------------------------------------------------------


async def upload(
    url: str, paths: list[Path], per_request: int, clients: int
) -> tuple[list[str], dict[str, Any]]:
    """Every path uploaded, `per_request` files per POST /v1/jobs, by `clients` concurrent
    clients. Returns the job ids in the order they were acknowledged, and upload figures."""
    import httpx

    data = [p.read_bytes() for p in paths]  # file reads are not what we measure
    starts = range(0, len(data), per_request)
    requests = [list(range(i, min(i + per_request, len(data)))) for i in starts]
    next_request = iter(requests)
    acked: list[str] = []
    created = retries = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300.0) as http:

        async def client() -> None:
            nonlocal created, retries
            for req in next_request:  # shared iterator: each client takes the next request
                files = [("files", (paths[i].name, data[i], "image/jpeg")) for i in req]
                headers = {"Idempotency-Key": uuid.uuid4().hex}
                resp, refused = await post_upload(http, files, headers)
                retries += refused
                if resp.status_code != 202:
                    raise SystemExit(f"upload: HTTP {resp.status_code} {resp.text[:300]}")
                jobs = resp.json()["jobs"]
                created += sum(1 for j in jobs if j["created"])
                acked.extend(j["id"] for j in jobs)

        await asyncio.gather(*(client() for _ in range(clients)))
    return acked, {"requests": len(requests), "created": created, "retries_429_503": retries}


async def wait_done(url: str, job_id: str, poll_s: float = 0.2) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        while True:
            resp = await http.get(f"/v1/jobs/{job_id}")
            resp.raise_for_status()
            if resp.json()["state"] in ("done", "failed"):
                return
            await asyncio.sleep(poll_s)


async def final_states(url: str, ids: list[str], clients: int) -> list[dict[str, Any]]:
    """Every job's record once terminal (after the CPU window: not part of the figures)."""
    import httpx

    out: list[dict[str, Any]] = []
    todo = iter(ids)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as http:

        async def poll() -> None:
            for job_id in todo:
                while True:
                    resp = await http.get(f"/v1/jobs/{job_id}")
                    resp.raise_for_status()
                    job = resp.json()
                    if job["state"] in ("done", "failed"):
                        out.append(job)
                        break
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(poll() for _ in range(clients)))
    return out


def http_mode(
    system: System, paths: list[Path], per_request: int, idle: dict[str, float] | None = None
) -> dict[str, Any]:
    """One upload mode inside a CPU window that closes when the last acknowledged job is done
    (jobs are leased in queue order, one worker: the last acked is about the last done)."""
    with CpuWindow(system.session) as w:
        started_at = time.time()
        client_t0 = time.thread_time()  # the asyncio clients run on this thread
        ids, figures = asyncio.run(upload(system.url, paths, per_request, HTTP_CLIENTS))
        asyncio.run(wait_done(system.url, ids[-1]))
        client_cpu = time.thread_time() - client_t0
    jobs = asyncio.run(final_states(system.url, ids, HTTP_CLIENTS))
    window_end = started_at + w.seconds
    done = [j for j in jobs if j["state"] == "done"]
    unfinished_at_close = sum(1 for j in done if j["timestamps"]["done"] > window_end)
    last_done = max((j["timestamps"]["done"] for j in done), default=window_end)
    cpu = dict(w.by_role_s)
    cpu[CLIENT_ROLE] = client_cpu
    per_image = per_unit_ms(cpu, max(len(done), 1))
    return {
        "files_per_request": per_request,
        "images": len(paths),
        **figures,
        "done": len(done),
        "failed": len(jobs) - len(done),
        "seconds": round(last_done - started_at, 3),
        "images_per_s": len(done) / (last_done - started_at) if done else 0.0,
        "done_after_window": unfinished_at_close,
        "cpu_ms_per_image": per_image,
        "cpu_ms_per_image_total": total_ms(per_image),
        "idle_share_ms_per_image": idle_share_ms(idle or {}, w.seconds, len(done)),
        "processes_exited": w.exited,
    }


def run_http(work: Path, tiny: TinyModel, images: int, threads: int) -> dict[str, Any]:
    single = make_jpegs(work / "http-single", images, seed=2001)
    multi = make_jpegs(work / "http-multi", images, seed=2002)
    warm = make_jpegs(work / "http-warmup", WARMUP_JOBS, seed=2000)
    with System(work / "system-http", tiny, threads, http=True) as system:
        http_mode(system, warm, 1)
        idle = system.idle_cpu(IDLE_SECONDS)
        modes = [
            http_mode(system, single, 1, idle),
            http_mode(system, multi, HTTP_FILES_PER_REQUEST, idle),
        ]
    return {
        "images": images,
        "clients": HTTP_CLIENTS,
        "targets_cpu_ms_per_image": {"1": 5.0, str(HTTP_FILES_PER_REQUEST): 2.0},
        "idle_cpu_ms_per_s": idle,
        "modes": modes,
    }


# ---- report -------------------------------------------------------------------------------


def role_table(header: list[str], columns: list[dict[str, float]], totals: list[float]) -> None:
    used = [r for r in ROLES + [CLIENT_ROLE] if any(r in c for c in columns)]
    print(f"  {'role':<34}" + "".join(f"{h:>12}" for h in header))
    for r in used:
        label = r + (" (not in total)" if r == CLIENT_ROLE else "")
        print(f"  {label:<34}" + "".join(f"{c.get(r, 0.0):>12.3f}" for c in columns))
    print(f"  {'total (raylens)':<34}" + "".join(f"{t:>12.3f}" for t in totals))


def idle_row(columns: list[dict[str, Any]], total: str, idle: str) -> None:
    print(f"  {'  of which idle rate':<34}" + "".join(f"{c[idle]:>12.3f}" for c in columns))
    print(f"  {'total net of idle':<34}" + "".join(f"{c[total] - c[idle]:>12.3f}" for c in columns))


def print_report(out: dict[str, Any]) -> None:
    ing = out["ingest"]
    rows = ing["sizes"]
    print(
        f"overhead: {out['model']} (tiny OpenCLIP, {out['image_size']} px, dim {out['dim']}), "
        f"{IMAGE_SIDE}x{IMAGE_SIDE} JPEGs, {out['threads']} torch thread(s), batch {ing['batch']}"
    )
    print("\nraylens ingest (raylens up --no-http) vs decode + forward in-process")
    header = [str(r["jobs"]) for r in rows]
    print(f"  {'jobs':<34}" + "".join(f"{h:>12}" for h in header))
    lines: list[tuple[str, str, str]] = [
        ("done", "done", "d"),
        ("in-process images/s", "in_process_images_per_s", ".1f"),
        ("raylens images/s", "images_per_s", ".1f"),
        ("ratio raylens/in-proc", "ratio", ".3f"),
        ("ingest seconds", "seconds", ".2f"),
        ("CLI wall seconds", "cli_wall_s", ".2f"),
        ("in-proc CPU-ms/image", "in_process_cpu_ms_per_image", ".3f"),
    ]
    for label, key, fmt in lines:
        print(f"  {label:<34}" + "".join(f"{r[key]:>12{fmt}}" for r in rows))
    print("\n  CPU-ms per job, by process role")
    role_table(
        header, [r["cpu_ms_per_job"] for r in rows], [r["cpu_ms_per_job_total"] for r in rows]
    )
    idle_row(rows, "cpu_ms_per_job_total", "idle_share_ms_per_job")
    idle = ing["idle_cpu_ms_per_s"]
    print(
        "\n  idle system, CPU-ms per second: "
        + ", ".join(f"{r} {idle[r]:.1f}" for r in ROLES if r in idle)
    )
    http = out.get("http")
    if not http:
        return
    modes = http["modes"]
    print(
        f"\nHTTP uploads (raylens up, Serve ingress): {http['images']} images per mode, "
        f"{http['clients']} concurrent clients"
    )
    header = [f"{m['files_per_request']}/request" for m in modes]
    print(f"  {'mode':<34}" + "".join(f"{h:>12}" for h in header))
    for label, key, fmt in [
        ("requests", "requests", "d"),
        ("done", "done", "d"),
        ("images/s", "images_per_s", ".1f"),
        ("retries 429/503", "retries_429_503", "d"),
    ]:
        print(f"  {label:<34}" + "".join(f"{m[key]:>12{fmt}}" for m in modes))
    print("\n  CPU-ms per image, by process role")
    role_table(
        header, [m["cpu_ms_per_image"] for m in modes], [m["cpu_ms_per_image_total"] for m in modes]
    )
    idle_row(modes, "cpu_ms_per_image_total", "idle_share_ms_per_image")
    targets = http["targets_cpu_ms_per_image"]
    print(
        f"  {'target (issue 13)':<34}"
        + "".join(f"{'<= ' + str(targets[str(m['files_per_request'])]):>12}" for m in modes)
    )
    idle = http["idle_cpu_ms_per_s"]
    print(
        "\n  idle system, CPU-ms per second: "
        + ", ".join(f"{r} {idle[r]:.1f}" for r in ROLES if r in idle)
    )


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes",
        type=sizes_arg,
        default=sizes_arg("1000,10000,50000"),
        help="jobs per ingest, comma-separated; each its own images (default 1000,10000,50000)",
    )
    ap.add_argument(
        "--http-images",
        type=int,
        default=2000,
        help="images per HTTP upload mode (1 and 16 files per request; default 2000)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, in-process and per raylens worker (also the worker's CPUs; "
        "default 1: the model is near-free)",
    )
    ap.add_argument(
        "--http", action=argparse.BooleanOptionalAction, default=True, help="run the HTTP part"
    )
    ap.add_argument("--json", action="store_true", help="also print one JSON object, last line")
    args = ap.parse_args(argv)
    if args.http_images < 1:
        ap.error("--http-images must be at least 1")

    with tempfile.TemporaryDirectory(prefix="raylens-overhead-") as tmp:
        work = Path(tmp)
        tiny = write_tiny_model(work / "tiny-clip")
        out: dict[str, Any] = {
            "model": tiny.name,
            "image_size": tiny.image_size,
            "dim": tiny.dim,
            "input_jpeg_px": IMAGE_SIDE,
            "threads": args.threads,
            "roles": ROLES,
        }
        out["ingest"] = run_ingest(work, tiny, args.sizes, args.threads)
        if args.http:
            out["http"] = run_http(work, tiny, args.http_images, args.threads)
    print_report(out)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
