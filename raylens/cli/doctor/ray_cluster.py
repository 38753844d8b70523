"""The "ray" checks: join the configured cluster in a time-boxed child and judge what it saw."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from raylens.cli.doctor.common import REPO_ROOT, gib, read_file, tcp_reachable
from raylens.cli.doctor.report import ERROR, OK, SKIP, WARN, Check
from raylens.cluster.settings import Settings

# The Ray check: a TCP connect gets --timeout; the child that then joins the cluster gets
# 3 x --timeout (join, queue stats, worker reports) plus this much for importing Ray.
RAY_PROBE_OVERHEAD_S = 10.0
RAY_PROBE_MARK = "RAYLENS_DOCTOR_RAY "


def ray_address(
    settings: Settings, address: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """(the address given to ray.init, what to call it). Same order as launch.resolve_address:
    --address, RAYLENS_RAY_ADDRESS, RAY_ADDRESS, else the local cluster `raylens up` starts."""
    if address or settings.ray_address:
        chosen = address or settings.ray_address
        return chosen, str(chosen)
    if environ.get("RAY_ADDRESS"):
        return None, f"{environ['RAY_ADDRESS']} (RAY_ADDRESS)"
    return settings.local_ray_address, settings.local_ray_address


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """host and port to probe for address, or None when only Ray can resolve it."""
    if address == "auto":
        current = read_file(Path("/tmp/ray/ray_current_cluster"))
        if not current or not current.strip():
            return ("", 0)  # no local cluster was ever started, or it was stopped
        address = current.strip().splitlines()[0]
    address = re.sub(r"^[a-z]+://", "", address).rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _ray_probe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Runs in the child: join the cluster, read its resources, nodes and raylens actors."""
    import logging

    import ray

    from raylens.actors.handles import lookup

    address, namespace, timeout = spec["address"], spec["namespace"], float(spec["timeout"])
    if address is None and not os.environ.get("RAY_ADDRESS"):
        raise RuntimeError("no address: refusing to start a cluster")
    ray.init(
        address=address,
        namespace=namespace,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        out: dict[str, Any] = {
            "ray_version": ray.__version__,
            "gcs_address": ray.get_runtime_context().gcs_address,
            "cluster_resources": ray.cluster_resources(),
            "available_resources": ray.available_resources(),
            "nodes": [
                {
                    "node_id": n.get("NodeID", "")[:12],
                    "address": n.get("NodeManagerAddress"),
                    "hostname": n.get("NodeManagerHostname"),
                    "alive": n.get("Alive"),
                    "resources": n.get("Resources", {}),
                }
                for n in ray.nodes()
            ],
        }
        names = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == namespace
        )
        out["actors"] = names
        if spec["queue"] in names:
            with contextlib.suppress(Exception):
                queue = lookup(spec["queue"], namespace)
                out["queue"] = ray.get(queue.stats.remote(), timeout=timeout)
        out["workers"] = _worker_reports(
            [n for n in names if n.startswith(spec["worker_prefix"])], namespace, timeout
        )
        return out
    finally:
        ray.shutdown()


def _worker_reports(names: list[str], namespace: str, timeout: float) -> list[dict[str, Any]]:
    """Each worker's model report, asked of all at once; a silent worker is reported as such."""
    import ray

    from raylens.actors.handles import lookup

    refs = {}
    reports: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            refs[name] = lookup(name, namespace).report.remote()
        except Exception as exc:
            reports[name] = {"worker": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if refs:
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        for name, ref in refs.items():
            if ref not in ready:
                reports[name] = {"worker": name, "error": f"no answer within {timeout:g}s"}
                continue
            try:
                reports[name] = ray.get(ref)
            except Exception as exc:
                reports[name] = {"worker": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return [reports[n] for n in names]


def probe_ray(
    settings: Settings, address: str | None, timeout_s: float, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Facts about the configured Ray cluster: {state: not_running|timeout|failed|ok, ...}.

    A TCP connect first (nothing listening: answered in timeout_s, no Ray import); then a
    child process joins the cluster, so a hung connect is killed, never waited on."""
    chosen, shown = ray_address(settings, address, environ)
    given = chosen if chosen is not None else environ.get("RAY_ADDRESS", "")
    target = _gcs_host_port(given)
    facts: dict[str, Any] = {"address": shown, "given": given, "namespace": settings.namespace}
    if target == ("", 0) or (target and not tcp_reachable(*target, timeout_s)):
        return {**facts, "state": "not_running"}
    spec = {
        "address": chosen,
        "namespace": settings.namespace,
        "queue": settings.queue_actor_name,
        "worker_prefix": settings.worker_name(0)[:-1],
        "timeout": timeout_s,
    }
    env = dict(os.environ)
    # The child imports this same raylens, installed or not.
    root = str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    limit = 3 * timeout_s + RAY_PROBE_OVERHEAD_S  # join, queue stats, worker reports
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "raylens.cli.doctor", "--ray-probe", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=limit,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {**facts, "state": "timeout", "seconds": limit}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RAY_PROBE_MARK):
            return {**facts, **json.loads(line[len(RAY_PROBE_MARK) :])}
    tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return {**facts, "state": "failed", "error": "\n".join(tail[-3:])[-600:]}


def _ray_fix(error: str) -> str:
    low = error.lower()
    if "token" in low or "auth" in low or "unauthenticated" in low:
        return (
            "the cluster wants token authentication: set RAY_AUTH_MODE=token and make the "
            "token available (~/.ray/auth_token or RAY_AUTH_TOKEN)"
        )
    if "version" in low:
        return "use the same Ray and Python versions as the cluster"
    return "check RAYLENS_RAY_ADDRESS / RAY_ADDRESS, or start raylens with `raylens up --detach`"


def _resources_line(res: Mapping[str, Any], avail: Mapping[str, Any]) -> str:
    parts = []
    for key in ("CPU", "GPU"):
        if key in res:
            parts.append(f"{key} {avail.get(key, 0):g}/{res[key]:g} free")
    for key in ("memory", "object_store_memory"):
        if key in res:
            parts.append(f"{key.replace('_', ' ')} {gib(res[key])}")
    return ", ".join(parts)


def check_ray(facts: Mapping[str, Any], ray_version: str | None) -> list[Check]:
    """Verdicts on probe_ray's facts: the cluster, and raylens on it."""
    where = facts["address"]
    version = f"ray {ray_version or 'not installed'}"
    state = facts.get("state", "ok")
    if state == "not_running":
        return [
            Check(
                "ray cluster",
                WARN,
                f"{version}; no Ray cluster at {where} (not running)",
                "start raylens with `raylens up --detach`, or point RAYLENS_RAY_ADDRESS "
                "(or RAY_ADDRESS) at a running cluster",
                group="ray",
            ),
            Check("raylens actors", SKIP, "no Ray cluster to look in", group="ray"),
        ]
    if state in ("timeout", "failed"):
        error = facts.get("error") or f"did not answer within {facts.get('seconds', '?')}s"
        status = WARN if state == "timeout" else ERROR
        return [
            Check(
                "ray cluster",
                status,
                f"{version}; cannot join the Ray cluster at {where}: {error}",
                _ray_fix(error)
                if state == "failed"
                else "check that the cluster is healthy (`ray status`), or raise --timeout",
                group="ray",
            ),
            Check("raylens actors", SKIP, "could not join the Ray cluster", group="ray"),
        ]
    nodes = facts.get("nodes", [])
    alive = sum(1 for n in nodes if n.get("alive"))
    detail = (
        f"{version} here, {facts.get('ray_version')} on the cluster; joined {where} "
        f"(GCS {facts.get('gcs_address')}): {alive}/{len(nodes)} node(s) alive; "
        + _resources_line(facts.get("cluster_resources", {}), facts.get("available_resources", {}))
    )
    data = {
        k: facts[k] for k in ("cluster_resources", "available_resources", "nodes") if k in facts
    }
    return [Check("ray cluster", OK, detail, group="ray", data=data), _check_actors(facts)]


def _check_actors(facts: Mapping[str, Any]) -> Check:
    actors = facts.get("actors", [])
    if not any(a.endswith("-queue") for a in actors):
        return Check(
            "raylens actors",
            WARN,
            f"Ray is running but raylens is not (no queue actor in namespace "
            f"{facts.get('namespace', '?')!r}; RAYLENS_NAMESPACE)"
            + (f"; named actors: {', '.join(actors)}" if actors else ""),
            "start it on this cluster: `raylens up --detach --address "
            f"{facts.get('given') or facts['address']}`",
            group="ray",
        )
    parts = [f"actors: {', '.join(actors)}"]
    queue = facts.get("queue")
    if isinstance(queue, dict) and "depth" in queue:
        parts.append("queue depth " + ", ".join(f"{k} {v}" for k, v in queue["depth"].items()))
    bad = []
    for r in facts.get("workers", []):
        if "error" in r:
            bad.append(f"{r.get('worker')}: {r['error']}")
        else:
            parts.append(
                f"{r.get('worker')}: {r.get('model_id')} on {r.get('device')} ({r.get('dtype')}), "
                f"loaded in {r.get('load_seconds', 0):.1f}s"
            )
    data = {k: facts[k] for k in ("actors", "queue", "workers") if k in facts}
    if bad or not facts.get("workers"):
        return Check(
            "raylens actors",
            WARN,
            "; ".join(parts + (bad or ["no workers"])),
            "see the worker logs in the Ray dashboard; `raylens down` then `raylens up` "
            "restarts them",
            group="ray",
            data=data,
        )
    return Check("raylens actors", OK, "; ".join(parts), group="ray", data=data)


def check_worker_resources(settings: Settings, facts: Mapping[str, Any], local_gpus: int) -> Check:
    """Whether num_workers workers fit the cluster (or this machine, when none is running)."""
    if facts.get("cluster_resources"):
        res = facts["cluster_resources"]
        cpus, gpus, where = float(res.get("CPU", 0)), float(res.get("GPU", 0)), "the cluster"
    else:
        cpus, gpus, where = float(os.cpu_count() or 1), float(local_gpus), "this machine"
    per_gpu = settings.worker_num_gpus
    if per_gpu is None:
        per_gpu = 1.0 if gpus > 0 else 0.0
    need_cpu = settings.num_workers * settings.worker_num_cpus
    need_gpu = settings.num_workers * per_gpu
    detail = (
        f"{settings.num_workers} worker(s) need {need_cpu:g} CPU and {need_gpu:g} GPU; "
        f"{where} has {cpus:g} CPU and {gpus:g} GPU"
    )
    if need_cpu > cpus or need_gpu > gpus:
        return Check(
            "worker resources",
            WARN,
            detail + "; some workers will never be scheduled",
            "lower RAYLENS_NUM_WORKERS, RAYLENS_WORKER_NUM_CPUS or RAYLENS_WORKER_NUM_GPUS, or "
            "add nodes",
            group="ray",
        )
    return Check("worker resources", OK, detail, group="ray")


def probe_main(argv: Iterable[str]) -> int:
    args = list(argv)
    if len(args) != 2 or args[0] != "--ray-probe":
        print("usage: python -m raylens.cli.doctor --ray-probe SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(args[1])
    try:
        facts = {"state": "ok", **_ray_probe(spec)}
    except Exception as exc:
        facts = {"state": "failed", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(RAY_PROBE_MARK + json.dumps(facts, default=str), flush=True)
    return 0
