"""`raylens` command line: the parser of every verb and the dispatch to its command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from raylens.cli.bench import cmd_bench
from raylens.cli.commands import (
    cmd_delete,
    cmd_faces,
    cmd_gc,
    cmd_images,
    cmd_index_migrate,
    cmd_ingest,
    cmd_jobs_retry,
    cmd_reindex,
    cmd_runs,
    cmd_search,
    cmd_status,
)
from raylens.cli.lifecycle import cmd_down, cmd_up
from raylens.cluster.jobs import Lane, Pipeline
from raylens.cluster.settings import load_settings
from raylens.errors import ErrorCode, RaylensError, SettingsError


def client_auth() -> None:
    """Ray >= 2.60 turns on token auth for `ray start --head`; a driver sends the token only
    when RAY_AUTH_MODE=token. Opt in when the token file exists and the user chose nothing.
    Ray reads the variable when it is imported, so this runs before anything imports ray."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if token.is_file() or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_MODE"] = "token"


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
        "ingest",
        help="embed every image and video under PATH (a folder, or s3://bucket/prefix) and wait "
        "until all are done",
        description="Embed every image and video under PATH and wait until every job is done "
        "or failed; content already done is skipped. PATH is a local file or folder (workers "
        "read it by path: on a cluster it must exist on every node), or s3://bucket/prefix: "
        "objects under the prefix are listed page by page, hashed here, and read by the workers "
        "straight from the bucket. Object storage is reached with the standard AWS_* variables "
        "of each process (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
        "AWS_REGION, AWS_ENDPOINT_URL; AWS_ALLOW_HTTP=true for an http:// endpoint) or an "
        "instance role. Exits 0 when every job ended (failures are counted by code), 1 with "
        "one line when no cluster answers or the source cannot be listed (source_missing, "
        "bucket_missing, storage_auth, storage_unavailable), 3 when RAYLENS_INGEST_TIMEOUT_S "
        "ended it early.",
    )
    ing.add_argument(
        "path",
        metavar="PATH",
        help="an image or video file, a folder (searched recursively), or s3://bucket/prefix "
        "(a folder of keys: every object under it)",
    )
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

    st = sub.add_parser(
        "status",
        help="the active model, queue depth, job counts, index points, payload bytes, each "
        "worker's model report",
    )
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

    im = sub.add_parser(
        "images",
        help="page through what is indexed, newest first (sha256, source, model, faces, frames)",
    )
    im.add_argument("--limit", type=int, default=100, help="entries per page (1-1000)")
    im.add_argument("--cursor", help="next_cursor of the previous page")
    im.add_argument("--json", action="store_true")
    im.add_argument("--address")
    im.set_defaults(func=cmd_images)

    ru = sub.add_parser(
        "runs",
        help="ingest runs, newest first: source, status, done/total, failed by code, images/s, ETA",
        description="Every `raylens ingest` (local, `ray job submit`, or s3://) is a run. An "
        "ingest of the same source and pipeline that did not finish continues its run when "
        "started again. A run whose ingest stopped writing shows as interrupted.",
    )
    ru.add_argument("run_id", nargs="?", help="one run (default: the newest --limit)")
    ru.add_argument("--limit", type=int, default=20, help="runs to show (newest first)")
    ru.add_argument("--json", action="store_true")
    ru.add_argument("--address")
    ru.set_defaults(func=cmd_runs)

    de = sub.add_parser(
        "delete",
        help="delete images and everything derived from them: their jobs (cancelled if queued "
        "or running), image, video-frame and face points, uploaded payloads; safe to repeat",
        description="Delete images, by job id or by sha256, and everything raylens derived "
        "from them: every job of the content (a queued one never runs, a running one's result "
        "is thrown away), its image, video-frame and face points (every model's), its "
        "uploaded payload. Each job leaves a tombstone (id, sha256, state, source kind, time, "
        "who asked). Files ingested by path are never touched. Exits 0 when everything named "
        "was found (now or deleted before), 3 when some of it was not.",
    )
    de.add_argument("ids", nargs="*", metavar="JOB_ID", help="job ids")
    de.add_argument(
        "--sha256", nargs="+", default=[], metavar="SHA256", help="contents, by sha256 hex"
    )
    de.add_argument("--json", action="store_true", help="print what was removed as JSON")
    de.add_argument("--address")
    de.set_defaults(func=cmd_delete)

    gc = sub.add_parser(
        "gc",
        help="remove uploaded payloads no job needs (crash orphans; with RAYLENS_KEEP_UPLOADS="
        "false, bytes of finished jobs) and say what it freed",
        description="Scan the payload store and remove uploaded bytes no job needs: orphans "
        "of a crash between the payload write and the job write, and, with "
        "RAYLENS_KEEP_UPLOADS=false, the bytes of finished jobs. Payloads written less than "
        "RAYLENS_GC_MIN_AGE_S ago are never removed.",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed")
    gc.add_argument("--json", action="store_true")
    gc.add_argument("--address")
    gc.set_defaults(func=cmd_gc)

    rx = sub.add_parser(
        "reindex",
        help="re-embed every done image with another model into its own collection, then "
        "switch searches and new images to it (no downtime; resumable)",
        description="Re-embed every done image (ingested paths and kept uploads) with another "
        "OpenCLIP model into a new collection named after its model id, while the old one "
        "keeps answering searches. An interrupted run resumes: content already in the new "
        "collection is skipped. When every image is there (those whose bytes are gone are "
        "listed), it switches in one step: new images and searches use the new model, and the "
        "workers roll over to it one at a time. Face vectors (dlib) are kept as they are.",
    )
    rx.add_argument("--model", required=True, help="OpenCLIP architecture, e.g. ViT-B-16")
    rx.add_argument(
        "--pretrained",
        required=True,
        help="OpenCLIP pretrained tag or a local checkpoint path ('none' = random weights)",
    )
    rx.add_argument(
        "--model-config", help="JSON file with an extra OpenCLIP architecture config to register"
    )
    rx.add_argument(
        "--limit", type=int, help="re-embed at most this many images now (run again to go on)"
    )
    rx.add_argument(
        "--no-switch", action="store_true", help="re-embed only; keep searches on the old model"
    )
    rx.add_argument("--json", action="store_true", help="print the result as JSON")
    rx.add_argument("--no-progress", action="store_true", help="no progress bar")
    rx.add_argument("--address")
    rx.set_defaults(func=cmd_reindex)

    fa = sub.add_parser("faces", help="the faces found in one image (box, score, landmarks)")
    fa.add_argument("path", help="an image file")
    fa.add_argument("--json", action="store_true")
    fa.add_argument("--address")
    fa.set_defaults(func=cmd_faces)

    ix = sub.add_parser("index", help="the embedded vector engine's files")
    ix_sub = ix.add_subparsers(dest="index_command", required=True)
    mi = ix_sub.add_parser(
        "migrate",
        help="copy the vectors an earlier raylens kept in qdrant-client's local mode into the "
        "embedded Qdrant Edge engine (run once, with raylens stopped; keeps the old files as a "
        "backup folder)",
    )
    mi.add_argument("--json", action="store_true", help="print the result as JSON")
    mi.add_argument("--no-progress", action="store_true", help="no progress bar")
    mi.set_defaults(func=cmd_index_migrate)

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
