"""`raylens up` and `raylens down`: the local Ray head, the actors and the HTTP ingress."""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from raylens.cluster.settings import Settings
from raylens.errors import RaylensError, SettingsError, StoreUnavailable

MARKER = "ray-started-by-raylens"


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _local_cluster_running(settings: Settings) -> bool:
    """Is a head node already listening on our own local port (an earlier `up --detach`)?"""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", settings.ray_port)) == 0


def _start_local_ray(settings: Settings) -> None:
    """`ray start --head` so other processes (`raylens ingest`, `ray job submit`) can join."""
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        f"--port={settings.ray_port}",
        f"--dashboard-host={settings.dashboard_host}",
        f"--dashboard-port={settings.dashboard_port}",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
    ]
    # The marker goes first: a `raylens up` killed while `ray start` runs leaves a head that
    # `raylens down` must still stop (it stops only a head with the marker).
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker = settings.data_dir / MARKER
    marker.write_text(str(time.time()))
    # A new session: Ctrl+C in the terminal reaches `raylens up` (which drains and stops Ray
    # in order), not the Ray daemons directly.
    proc = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        marker.unlink(missing_ok=True)
        raise RaylensError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")


def _stop_local_ray(settings: Settings) -> None:
    """Stop the head `raylens up` started on RAYLENS_RAY_PORT, and only it: `ray stop` would
    also stop every other Ray of this user on the machine."""
    from raylens.cli.ray_session import RaySession

    marker = settings.data_dir / MARKER
    if marker.exists():
        session = RaySession(settings.ray_port)
        if session.find():
            session.terminate()
        elif _local_cluster_running(settings):
            print(
                f"could not find the processes of the Ray head on port {settings.ray_port} to "
                "stop them; `ray stop` stops it (and every other Ray of yours on this machine)",
                file=sys.stderr,
            )
        marker.unlink(missing_ok=True)


def check_weights_here(settings: Settings) -> None:
    """Pre-flight of RAYLENS_CLIP_PRETRAINED on this machine, before anything starts: an
    OpenCLIP tag that is not in the local Hugging Face cache while the hub cannot be reached
    (HF_HUB_OFFLINE, or no TCP connect to it or its proxy) raises ModelLoadError naming the
    setting, which the workers would otherwise raise only after Ray and the actors had started.
    Online, or with a checkpoint file or none, it returns without importing open_clip."""
    pretrained = settings.clip_pretrained
    if settings.random_weights or Path(pretrained).expanduser().is_file():
        return
    from huggingface_hub import constants

    from raylens.models import weights

    if weights.looks_like_path(pretrained):  # a checkpoint that is not there: refused now
        weights.weights_args(None, settings.clip_model, pretrained)  # raises before open_clip
    why = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        host, port, via = weights.download_route(constants.ENDPOINT)
        if weights.reachable(host, port):
            return  # the workers can download it
        why = f"{host}:{port}{via} cannot be reached"
    print(
        f"{why}: looking for the {pretrained!r} weights of {settings.clip_model} "
        "(RAYLENS_CLIP_PRETRAINED) in the local cache",
        file=sys.stderr,
    )
    import open_clip

    weights.weights_args(open_clip, settings.clip_model, pretrained)


def check_index_here(settings: Settings) -> None:
    """Pre-flight of the embedded engine's folder, before anything starts: vectors an earlier
    release kept in qdrant-client's local mode are refused with the migrate command, which the
    index actor would otherwise raise only once Ray had started."""
    if settings.qdrant_url:
        return
    from raylens.cluster.index_edge import old_local_mode_message

    message = old_local_mode_message(settings.qdrant_path)
    if message:
        raise SettingsError(message)


def _prepare_local(settings: Settings) -> None:
    """The workers run here: weights they can neither find nor fetch fail before Ray starts;
    then the local head, unless an earlier `up --detach` left one running."""
    check_weights_here(settings)
    if _local_cluster_running(settings):
        return
    print(
        f"starting a local Ray cluster (dashboard http://{settings.dashboard_host}:"
        f"{settings.dashboard_port})",
        file=sys.stderr,
    )
    _start_local_ray(settings)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from raylens.actors import launch

    address = launch.resolve_address(settings, args.address)
    local = address == settings.local_ray_address
    check_index_here(settings)
    if local:
        _prepare_local(settings)
    launch.connect(settings, address)
    if settings.random_weights:
        print(
            "WARNING: RAYLENS_CLIP_PRETRAINED=none: random weights, vectors are meaningless "
            "(benchmarks and smoke runs only)",
            file=sys.stderr,
        )
    print(
        f"starting raylens: {settings.num_workers} worker(s), model {settings.clip_model} "
        f"({settings.clip_pretrained})",
        file=sys.stderr,
    )
    try:
        info = launch.start(settings)
    except RaylensError:
        if local:
            _stop_local_ray(settings)
        raise
    for r in info["workers"]:
        print(
            f"  {r['worker']}: {r['model_id']} on {r['device']} ({r['dtype']}), dim {r['dim']}, "
            f"loaded in {r['load_seconds']:.1f}s",
            file=sys.stderr,
        )
    url = None
    if not args.no_http:
        url = start_http(settings)
    print(
        f"raylens is up; data in {settings.data_dir}; dashboard "
        f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        + (f"; HTTP API {url} (docs {url}/docs)" if url else ""),
        file=sys.stderr,
    )
    if args.detach:
        return 0
    stopping = {"now": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("running in the foreground; Ctrl+C stops it", file=sys.stderr)
    while not stopping["now"]:
        time.sleep(0.5)
    print("\nstopping raylens (finishing batches in hand)...", file=sys.stderr)
    if url:
        from raylens.serve_app.deploy import undeploy

        undeploy()
    stopped = launch.stop(settings)
    ray.shutdown()
    if local:
        _stop_local_ray(settings)
    print(
        f"stopped: {stopped['workers']} worker(s); queued jobs stay in the store", file=sys.stderr
    )
    return 0


def start_http(settings: Settings) -> str:
    """The Serve ingress (imported here: the CLI's other commands do not need Serve)."""
    from raylens.serve_app.deploy import deploy

    try:
        return deploy(settings)
    except Exception as exc:  # e.g. the port is taken
        raise RaylensError(
            f"could not start the HTTP ingress on {settings.http_host}:{settings.http_port} "
            f"({type(exc).__name__}: {exc}); set RAYLENS_HTTP_PORT or use --no-http"
        ) from exc


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from raylens.actors import launch
    from raylens.serve_app.deploy import undeploy

    try:
        launch.connect(settings, args.address)
    except StoreUnavailable as exc:
        # No cluster answers: nothing to stop. A marker left by a head that died is stale;
        # `ray stop` would stop every other Ray on this machine, so only the marker goes.
        print(f"nothing to stop: {exc.message.split(';')[0]}", file=sys.stderr)
        (settings.data_dir / MARKER).unlink(missing_ok=True)
        return 0
    try:
        undeploy()
        stopped = launch.stop(settings)
        print(f"stopped {stopped['workers']} worker(s), queue and index", file=sys.stderr)
    except RaylensError as exc:
        print(f"nothing to stop: {exc.message}", file=sys.stderr)
    import ray

    ray.shutdown()
    if launch.resolve_address(settings, args.address) == settings.local_ray_address:
        _stop_local_ray(settings)
    return 0
