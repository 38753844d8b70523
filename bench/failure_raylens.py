"""Failure drills of the raylens rows (bench/failure_drills.py says what a drill is).

Both rows on one raylens (queue, index, one worker, supervisor, Serve ingress) started in this
process on the tiny model: raylens_bulk runs `raylens ingest` (the CLI, joined to this
cluster), raylens_http posts the images one per request. At half-way the worker process gets
SIGKILL while it holds a batch; raylens's supervisor replaces it and the queue re-queues its
leases when they expire. Counted from the job store (`leases` per job: redone) and the index
(one point per stored image: lost, dup).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _peer_common import free_port, post_upload
from failure_drills import (
    RESTART,
    Drill,
    HalfwayKiller,
    corrupt_verdict,
    count_kill,
    drill_inputs,
    killed_text,
)


def _raylens_settings(
    data_dir: Path, tiny: Any, threads: int, batch: int, prefetch: int | None = None
) -> Any:
    from raylens.cluster.settings import Settings

    for key in [k for k in os.environ if k.startswith("RAYLENS_")]:
        os.environ.pop(key)  # as bench_http.start_system: only what is set here
    return Settings(
        data_dir=data_dir,
        clip_model=tiny.name,
        clip_pretrained=str(tiny.checkpoint_path),
        clip_model_config=tiny.config_path,
        namespace=f"raylens-drill-{uuid.uuid4().hex[:8]}",
        http_port=free_port(),
        num_workers=1,
        worker_num_cpus=threads,
        torch_threads=threads,
        max_batch_size=batch,
        # Leases of one batch, as the batching peers' batches are pinned to it in the drills
        # (adaptive leases would grow to RAYLENS_LEASE_MAX_JOBS on the tiny model): "redone"
        # then compares one batch with one batch.
        lease_max_jobs=batch,
        **({} if prefetch is None else {"prefetch_batches": prefetch}),
        # 6 s instead of the 60 s default, so the drill is short: a killed worker's batch is
        # re-queued when its lease expires (the tests' drills use the same).
        lease_timeout_s=6,
        lease_check_interval_s=0.3,
        supervise_interval_s=1.0,
        worker_start_timeout_s=180,
    )


def _cli_env(settings: Any, address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYLENS_")}
    for name in ("data_dir", "clip_model", "clip_pretrained", "clip_model_config", "namespace"):
        env[f"RAYLENS_{name.upper()}"] = str(getattr(settings, name))
    env["RAYLENS_RAY_ADDRESS"] = address
    return env


class RaylensProbe:
    """What the drills read from a running raylens: done jobs, worker pids, and afterwards
    every job and point of a set of images (by sha256)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.held_seen: int | None = None  # jobs the workers held at the last busy() check

    def done(self) -> int:
        import ray

        from raylens.actors import launch

        stats = ray.get(launch.queue_handle(self.settings).stats.remote(), timeout=10)
        return int(stats["jobs"].get("done", 0))

    def worker_pids(self) -> list[int]:
        from raylens.actors import launch

        return [int(r["pid"]) for r in launch.worker_reports(self.settings) if "pid" in r]

    def busy(self) -> bool:
        """A worker holds leased jobs (a batch in hand)."""
        from raylens.actors import launch

        held = sum(r.get("held_leases", 0) for r in launch.worker_reports(self.settings, 2))
        self.held_seen = held
        return held > 0

    def wait_workers(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.worker_pids():
                return
            time.sleep(0.5)

    def outcome(self, shas: dict[str, str]) -> tuple[dict[str, list[Any]], list[str]]:
        """({sha: its jobs}, the sha256 of every stored point whose sha is in shas)."""
        import ray

        from raylens.actors import launch
        from raylens.cluster.store import open_job_store

        store = open_job_store(self.settings)
        try:
            jobs = {sha: store.jobs_for_content(sha) for sha in shas}
        finally:
            store.close()
        index = launch.index_handle(self.settings)
        coll = launch.active_model(self.settings).collection
        ids = ray.get(index.point_ids.remote(collection=coll))
        points = ray.get([index.get.remote(i, coll) for i in ids])
        stored = [p["payload"].get("sha256") for p in points if p is not None]
        return jobs, [s for s in stored if s in shas]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raylens_count(
    name: str, probe: RaylensProbe, paths: list[Path], bad: Path, finished: bool, killer: Any
) -> Drill:
    from raylens.cluster.jobs import JobState

    shas = {_sha(p): str(p) for p in paths}
    bad_sha = _sha(bad)
    jobs, stored = probe.outcome(shas)
    bad_jobs = jobs.get(bad_sha, [])
    reported = any(j.state is JobState.FAILED and j.error_code for j in bad_jobs)
    good = [s for s in shas if s != bad_sha]
    began = Counter({s: sum(j.leases for j in jobs.get(s, [])) for s in good})
    counts = count_kill(good, began, [s for s in stored if s != bad_sha])
    batch = probe.settings.max_batch_size
    prefetch = probe.settings.prefetch_batches
    most = prefetch + 2 if prefetch else 1  # decoded ahead, in the model, being written
    killed = max(1, len(killer.killed))
    attempts = Counter(j.attempts for s in good for j in jobs.get(s, []))
    code = next((j.error_code.value for j in bad_jobs if j.error_code), None)
    return Drill(
        name,
        corrupt=corrupt_verdict(finished, reported),
        images=len(good),
        stored_at_kill=killer.stored_at_kill,
        killed=killed_text(killer, "worker process(es)", RESTART[name]),
        notes=(
            f"corrupt image failed as {code}; job attempts {dict(sorted(attempts.items()))}; "
            f"the worker held {probe.held_seen} job(s) just before the kill (leases of "
            f"{batch}, RAYLENS_PREFETCH_BATCHES={prefetch}: at most {most} lease(s)); "
            f"target lost 0 and redone <= one batch ({batch}) per killed worker: "
            + ("met" if counts["lost"] == 0 and counts["redone"] <= batch * killed else "missed")
        ),
        **counts,
    )


def drill_raylens(
    rows: list[str],
    work: Path,
    tiny: Any,
    n: int,
    threads: int,
    batch: int,
    settle_s: float,
    prefetch: int | None = None,
) -> list[Drill]:
    """raylens_bulk (`raylens ingest` against the system) and raylens_http (uploads) on one
    raylens (queue, index, one worker, supervisor, ingress) started in this process."""
    import ray

    from raylens.actors import launch
    from raylens.serve_app.deploy import deploy, undeploy

    settings = _raylens_settings(work / "data", tiny, threads, batch, prefetch)
    ray.init(
        address="local",
        num_cpus=max(threads, os.cpu_count() or 1) + 1,
        include_dashboard=False,
        log_to_driver=False,
        namespace=settings.namespace,
        object_store_memory=1 << 29,
    )
    out = []
    try:
        launch.start(settings)
        url = deploy(settings) if "raylens_http" in rows else None
        probe = RaylensProbe(settings)
        if "raylens_bulk" in rows:
            out.append(_drill_bulk(probe, work, n, settle_s))
        if "raylens_http" in rows and url is not None:
            out.append(_drill_http(probe, url, work, n, settle_s))
    finally:
        try:
            undeploy()
            launch.stop(settings, timeout_s=10)
        finally:
            ray.shutdown()
    return out


def _drill_bulk(probe: RaylensProbe, work: Path, n: int, settle_s: float) -> Drill:
    import ray

    paths, bad = drill_inputs(work / "bulk-images", n, seed=11)
    address = ray.get_runtime_context().gcs_address
    probe.wait_workers()
    base = probe.done()
    t0 = time.monotonic()
    killer = HalfwayKiller(
        lambda: probe.done() - base,
        math.ceil(n / 2),
        probe.worker_pids,
        120,
        period_s=0.02,
        busy=probe.busy,
    )
    cli = [sys.executable, "-m", "raylens.cli.main", "ingest", str(paths[0].parent)]
    cli += ["--pipeline", "embed", "--json", "--no-progress"]
    killer.start()
    try:
        res = subprocess.run(
            cli,
            env=_cli_env(probe.settings, address),
            capture_output=True,
            text=True,
            timeout=120 + settle_s,
        )
        finished = res.returncode == 0
    except subprocess.TimeoutExpired:
        res, finished = None, False
    finally:
        killer.halt.set()
        killer.join()
    d = _raylens_count("raylens_bulk", probe, paths, bad, finished, killer)
    d.seconds = time.monotonic() - t0
    if res is not None and res.returncode != 0:
        d.notes += f"; ingest exited {res.returncode}: {res.stderr[-200:]}"
    return d


async def _upload(url: str, paths: list[Path], clients: int, wait_s: float) -> dict[str, Any]:
    """`clients` concurrent clients, one image per POST /v1/jobs; then every job followed until
    it is terminal or `wait_s` passed. {"ids": {path: job id}, "refused": {path: status}}."""
    import httpx

    ids: dict[str, str] = {}
    refused: dict[str, int] = {}
    todo = iter(paths)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def client() -> None:
            for p in todo:
                files = [("files", (p.name, p.read_bytes(), "image/jpeg"))]
                resp, _ = await post_upload(http, files, {"Idempotency-Key": uuid.uuid4().hex})
                if resp.status_code == 202:
                    ids[str(p)] = resp.json()["jobs"][0]["id"]
                else:
                    refused[str(p)] = resp.status_code

        await asyncio.gather(*(client() for _ in range(clients)))
        deadline = time.monotonic() + wait_s
        for job_id in ids.values():
            while time.monotonic() < deadline:
                job = (await http.get(f"/v1/jobs/{job_id}")).json()
                if job["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.2)
    return {"ids": ids, "refused": refused, "complete": time.monotonic() < deadline}


def _drill_http(probe: RaylensProbe, url: str, work: Path, n: int, settle_s: float) -> Drill:
    paths, bad = drill_inputs(work / "http-images", n, seed=12)
    probe.wait_workers()
    base = probe.done()
    t0 = time.monotonic()
    killer = HalfwayKiller(
        lambda: probe.done() - base,
        math.ceil(n / 2),
        probe.worker_pids,
        120,
        period_s=0.02,
        busy=probe.busy,
    )
    killer.start()
    try:
        up = asyncio.run(_upload(url, paths, 8, 60 + settle_s))
    finally:
        killer.halt.set()
        killer.join()
    d = _raylens_count("raylens_http", probe, paths, bad, up["complete"], killer)
    if str(bad) in up["refused"]:  # refused at intake: the client was told at once
        d.corrupt = corrupt_verdict(up["complete"], True)
        d.notes = f"corrupt image refused with HTTP {up['refused'][str(bad)]}; " + d.notes
    d.seconds = time.monotonic() - t0
    return d
