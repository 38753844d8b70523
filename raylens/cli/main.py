"""`raylens` command line: up, down, ingest, status, search, faces, jobs, doctor, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from raylens.cluster.jobs import Lane, Pipeline
from raylens.cluster.settings import Settings, load_settings
from raylens.errors import ErrorCode, RaylensError, SettingsError, SourceMissing

MARKER = "ray-started-by-raylens"


def client_auth() -> None:
    """Ray >= 2.60 turns on token auth for `ray start --head`; a driver sends the token only
    when RAY_AUTH_MODE=token. Opt in when the token file exists and the user chose nothing.
    Ray reads the variable when it is imported, so this runs before anything imports ray."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if token.is_file() or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_MODE"] = "token"


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
    # A new session: Ctrl+C in the terminal reaches `raylens up` (which drains and stops Ray
    # in order), not the Ray daemons directly.
    proc = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        raise RaylensError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / MARKER).write_text(str(time.time()))


def _stop_local_ray(settings: Settings) -> None:
    marker = settings.data_dir / MARKER
    if marker.exists():
        subprocess.run([_ray_bin(), "stop"], capture_output=True)
        marker.unlink(missing_ok=True)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from raylens.actors import launch

    address = launch.resolve_address(settings, args.address)
    local = address == settings.local_ray_address
    if local and not _local_cluster_running(settings):
        print(
            f"starting a local Ray cluster (dashboard http://{settings.dashboard_host}:"
            f"{settings.dashboard_port})",
            file=sys.stderr,
        )
        _start_local_ray(settings)
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

    def on_signal(signum: int, frame: Any) -> None:
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


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from raylens.actors import ingest, launch

    launch.connect(settings, args.address)
    queue = launch.queue_handle(settings)
    summary = ingest.ingest(
        settings,
        Path(args.path),
        queue,
        Lane(args.priority),
        progress=not args.no_progress,
        pipeline=Pipeline(args.pipeline),
    )
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failed_by_code.items()))
        print(
            f"{summary.files} files: {summary.submitted} submitted, {summary.skipped} skipped "
            f"(already done), {summary.duplicates} duplicates; {summary.done} done, "
            f"{summary.failed} failed{f' ({codes})' if codes else ''} in {summary.seconds:.1f}s "
            f"({summary.images_per_s} images/s)"
            + (
                f"; submission -> stored p50 {summary.latency_p50_s:.2f}s, "
                f"p99 {summary.latency_p99_s:.2f}s"
                if summary.latency_p50_s is not None and summary.latency_p99_s is not None
                else ""
            )
        )
    return 0 if summary.complete else 3


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from raylens.actors import launch

    launch.connect(settings, args.address)
    st = launch.status(settings)
    if args.json:
        print(json.dumps(st, default=str))
        return 0
    q = st["queue"]
    print(
        "queue depth: "
        + ", ".join(f"{k} {v}" for k, v in q["depth"].items())
        + f"; leased {q['leased']} (max depth {q['max_depth']})"
    )
    print("jobs: " + ", ".join(f"{k} {v}" for k, v in q["jobs"].items()))
    idx = st.get("index", {})
    print(
        f"index: {idx.get('points', '?')} points in {idx.get('collection', '?')}, "
        f"{idx.get('faces', '?')} faces in {idx.get('faces_collection', '?')} "
        f"({idx.get('where', idx.get('error', ''))})"
    )
    for r in st["workers"]:
        if "error" in r:
            print(f"worker: unavailable: {r['error']}")
            continue
        print(
            f"{r['worker']} pid {r['pid']}: {r['model_id']} on {r['device']} ({r['dtype']}), "
            f"dim {r['dim']}, loaded {r['load_count']}x in {r['load_seconds']:.1f}s; "
            f"{r['batches']} batches, {r['images']} jobs, {r.get('frames', 0)} video frames, "
            f"{r.get('faces', 0)} faces, {r['failed_inputs']} bad inputs"
        )
    return 0


def _read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SourceMissing(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI

    if (args.text is None) == (args.face is None):
        raise SettingsError("give a search text or --face PATH (one of them)")
    launch.connect(settings, args.address)
    if args.face is not None:
        out = asyncio.run(
            ClusterAPI(settings).search_faces(image=_read_image(args.face), top_k=args.top_k)
        )
        if args.json:
            print(json.dumps(out, default=str))
            return 0
        q = out["query"]
        print(f"query: face {q['face_index']} of {q['faces_in_image']} at {q['box']}")
        if not out["hits"]:
            print(f"no stored face within distance {out['max_distance']}")
        for i, h in enumerate(out["hits"], 1):
            where = f" at {h['timestamp_s']}s" if h.get("timestamp_s") is not None else ""
            print(
                f"{i:3d}. {h['distance']:.4f}  {h['name'] or h['source']}{where}  "
                f"face {h['face_index']} {h['box']}  (job {h['job_id']})"
            )
        return 0
    hits = launch.search_text(settings, args.text, args.top_k)
    if args.json:
        print(json.dumps({"query": args.text, "hits": hits}))
        return 0
    if not hits:
        print("no hits (is anything ingested?)")
    for i, h in enumerate(hits, 1):
        p = h["payload"]
        where = f" at {p['timestamp_s']}s" if p.get("timestamp_s") is not None else ""
        print(f"{i:3d}. {h['score']:.4f}  {p.get('source')}{where}  (job {p.get('job_id')})")
    return 0


def cmd_faces(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI

    launch.connect(settings, args.address)
    faces = asyncio.run(ClusterAPI(settings).faces(_read_image(args.path)))
    for face in faces:
        face.pop("vector", None)
    if args.json:
        print(json.dumps({"path": args.path, "faces": faces}))
        return 0
    print(f"{len(faces)} face(s) in {args.path}")
    for f in faces:
        print(f"  face {f['face_index']}: box {f['box']}, score {f['score']}")
    return 0


def cmd_jobs_retry(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from raylens.actors import launch

    if bool(args.ids) == bool(args.failed):
        raise SettingsError("give job ids, or --failed [--code CODE] (one of them)")
    if args.code and not args.failed:
        raise SettingsError("--code goes with --failed")
    launch.connect(settings, args.address)
    queue = launch.queue_handle(settings)
    if args.failed:
        code = ErrorCode(args.code) if args.code else None
        moved = ray.get(queue.retry_failed.remote(code, args.limit))
    else:
        moved = ray.get(queue.retry.remote(list(args.ids)))
    if args.json:
        print(json.dumps({"requeued": moved}))
    else:
        what = f" (failed with {args.code})" if args.code else ""
        print(f"re-queued {len(moved)} failed job(s){what}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylens",
        description="Images to searchable OpenCLIP vectors on a Ray cluster. Settings come from "
        "RAYLENS_* environment variables (see README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start (or join) Ray and run the queue and the workers")
    up.add_argument(
        "--detach",
        action="store_true",
        help="return once everything is up (stop it with `raylens down`)",
    )
    up.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    up.add_argument(
        "--no-http",
        action="store_true",
        help="do not start the Serve HTTP ingress (RAYLENS_HTTP_HOST:RAYLENS_HTTP_PORT)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `raylens up --detach` started")
    down.add_argument("--address", help="Ray cluster address (default: the local one)")
    down.set_defaults(func=cmd_down)

    ing = sub.add_parser(
        "ingest", help="embed every image and video under PATH and wait until all are done"
    )
    ing.add_argument("path", help="an image file or a folder (searched recursively)")
    ing.add_argument(
        "--priority",
        choices=[lane.value for lane in Lane],
        default="bulk",
        help="queue lane (default: bulk)",
    )
    ing.add_argument(
        "--pipeline",
        choices=[p.value for p in Pipeline],
        default="both",
        help="embed (OpenCLIP vector), faces, or both (default)",
    )
    ing.add_argument("--json", action="store_true", help="print the summary as JSON")
    ing.add_argument("--no-progress", action="store_true", help="no progress bar")
    ing.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    ing.set_defaults(func=cmd_ingest)

    st = sub.add_parser("status", help="queue depth, job counts and each worker's model report")
    st.add_argument("--json", action="store_true")
    st.add_argument("--address")
    st.set_defaults(func=cmd_status)

    se = sub.add_parser("search", help="search by text, or by a face (--face PATH)")
    se.add_argument("text", nargs="?", help="what to look for, in words")
    se.add_argument(
        "--face", metavar="PATH", help="find stored faces like the largest face in this image"
    )
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument("--json", action="store_true")
    se.add_argument("--address")
    se.set_defaults(func=cmd_search)

    jobs = sub.add_parser("jobs", help="act on jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    rt = jobs_sub.add_parser(
        "retry", help="re-queue failed jobs (dead letters included), by id or all of them"
    )
    rt.add_argument("ids", nargs="*", help="job ids")
    rt.add_argument("--failed", action="store_true", help="every failed job")
    rt.add_argument(
        "--code",
        choices=sorted(c.value for c in ErrorCode),
        metavar="CODE",
        help="with --failed: only jobs that failed with this error code, e.g. dead_letter, "
        "model_error, lease_expired, truncated_image",
    )
    rt.add_argument("--limit", type=int, default=100_000, help="re-queue at most this many")
    rt.add_argument("--json", action="store_true")
    rt.add_argument("--address")
    rt.set_defaults(func=cmd_jobs_retry)

    fa = sub.add_parser("faces", help="the faces found in one image (box, score, landmarks)")
    fa.add_argument("path", help="an image file")
    fa.add_argument("--json", action="store_true")
    fa.add_argument("--address")
    fa.set_defaults(func=cmd_faces)

    dr = sub.add_parser("doctor", help="check this machine and the configured services (for bugs)")
    dr.add_argument("--json", action="store_true", help="print one JSON object")
    dr.add_argument("--no-model", action="store_true", help="skip the timed model load (slow)")
    dr.add_argument("--timeout", type=float, default=3.0, help="seconds per connect (default 3)")
    dr.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")

    sub.add_parser(
        "bench",
        help="the benchmark of `make bench` (source checkout only); options after `bench` go "
        "to it, e.g. `raylens bench --json`, `raylens bench --help`",
        add_help=False,
    )
    return parser


def bench_script() -> Path | None:
    """bench/bench_http.py of the source checkout this raylens runs from, if there is one."""
    script = Path(__file__).resolve().parents[2] / "bench" / "bench_http.py"
    return script if script.is_file() else None


def cmd_bench(rest: list[str]) -> int:
    """Run the benchmark (not part of the installed package: its peers are test fixtures)."""
    script = bench_script()
    if script is None:
        print(
            "raylens: `raylens bench` runs bench/bench_http.py from a source checkout, and this "
            "raylens is installed without one; clone the repository and run `make bench` (or "
            "`uv run raylens bench --json`) there",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *rest])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every option after it belongs to the benchmark
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    client_auth()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "doctor":  # reports invalid settings instead of stopping at them
        from raylens.cli.doctor import cli_doctor

        return cli_doctor(args)
    try:
        settings = load_settings()
        if getattr(args, "top_k", 1) < 1:
            raise SettingsError("--top-k must be at least 1")
        return int(args.func(settings, args))
    except SettingsError as exc:
        print(f"raylens: {exc.message}", file=sys.stderr)
        return 2
    except RaylensError as exc:
        print(f"raylens: error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raylens: interrupted; submitted jobs stay queued and will finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
