"""The commands that talk to a running raylens: ingest, status, search, faces, jobs retry,
images, gc, delete, reindex."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from raylens.cluster.jobs import Lane, Pipeline
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, SettingsError, SourceMissing


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from raylens.actors import ingest, launch

    launch.connect(settings, args.address)
    queue = launch.queue_handle(settings)
    summary = ingest.ingest(
        settings,
        args.path,  # a path or an s3:// URI (Path would fold its "//")
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
    model = st.get("model") or {}
    if model:
        when = (
            f"switched {time.strftime('%Y-%m-%d %H:%M', time.gmtime(model['switched_at']))} UTC"
            if model.get("switched_at")
            else "from the settings"
        )
        print(f"model: {model['model_id']} ({when}), collection {model['collection']}")
    print(
        "queue depth: "
        + ", ".join(f"{k} {v}" for k, v in q["depth"].items())
        + f"; leased {q['leased']} (max depth {q['max_depth']})"
    )
    print("jobs: " + ", ".join(f"{k} {v}" for k, v in q["jobs"].items()))
    pay = st.get("payloads", {})
    if "error" in pay:
        print(f"payloads: unavailable: {pay['error']}")
    else:
        print(f"payloads: {pay.get('count', '?')} uploaded file(s), {pay.get('bytes', '?')} bytes")
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


def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI

    if not 1 <= args.limit <= settings.runs_keep:
        raise SettingsError(f"--limit must be 1..{settings.runs_keep}, got {args.limit}")
    launch.connect(settings, args.address)
    api = ClusterAPI(settings)
    try:
        if args.run_id:
            found: Any = asyncio.run(api.run(args.run_id))
            shown: list[dict[str, Any]] = [found]
        else:
            found = shown = asyncio.run(api.runs(args.limit))
    finally:
        api.close()
    if args.json:
        print(json.dumps(found))
        return 0
    if not shown:
        print("no ingest runs yet (`raylens ingest PATH` makes one)")
    for r in shown:
        c = r["counts"]
        total = "?" if r["total"] is None else r["total"]
        eta = f", ETA {r['eta_s']:.0f}s" if r["eta_s"] else ""
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["failed_by_code"].items()))
        print(
            f"{r['id']}  {r['status']:<11} {r['source']}  done {c['done']}/{total}, "
            f"failed {c['failed']}{f' ({codes})' if codes else ''}, "
            f"{r['images_per_s']} img/s{eta}, attempts {r['attempts']}"
        )
    return 0


def cmd_images(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI
    from raylens.cluster.store import page_cursor, store_cursor

    if not 1 <= args.limit <= 1000:
        raise SettingsError(f"--limit must be 1..1000, got {args.limit}")
    try:
        cursor = store_cursor(args.cursor)
    except ValueError as exc:
        raise SettingsError(f"--cursor: {exc}") from None
    launch.connect(settings, args.address)
    api = ClusterAPI(settings)
    try:
        page = asyncio.run(api.list_images(args.limit, cursor))
    finally:
        api.close()
    page["next_cursor"] = page_cursor(page["next_cursor"])  # the form HTTP pages use too
    if args.json:
        print(json.dumps(page))
        return 0
    if not page["images"]:
        print("nothing indexed" + (" after that cursor" if args.cursor else ""))
    for e in page["images"]:
        extra = f", {e['frames']} frames" if e["frames"] is not None else ""
        faces = "-" if e["faces"] is None else e["faces"]
        print(
            f"{e['sha256']}  {e['media']}{extra}, faces {faces}, {e['model_id']}  "
            f"{e['name'] or e['source']}  (job {e['job_id']})"
        )
    if page["next_cursor"]:
        print(f"more: raylens images --cursor {page['next_cursor']}")
    return 0


def cmd_gc(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI

    launch.connect(settings, args.address)
    api = ClusterAPI(settings)
    try:
        out = asyncio.run(api.collect_garbage(dry_run=args.dry_run))
    finally:
        api.close()
    if args.json:
        print(json.dumps(out))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    n, b = (
        (out["orphans"], out["orphan_bytes"])
        if args.dry_run
        else (out["removed"], out["freed_bytes"])
    )
    print(
        f"scanned {out['scanned']} payload(s), {out['bytes']} bytes; {verb} {n} no job needs "
        f"({b} bytes); {out['young']} younger than {out['min_age_s']:g}s left alone"
    )
    return 0


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import getpass

    from raylens.actors import launch
    from raylens.actors.api import ClusterAPI
    from raylens.cluster.hits import check_sha256
    from raylens.errors import JobNotFound

    if not args.ids and not args.sha256:
        raise SettingsError("give job ids and/or --sha256 SHA256 (what to delete)")
    shas = [check_sha256(s) for s in args.sha256]  # bad input fails before anything is asked
    launch.connect(settings, args.address)
    try:
        by = f"cli {getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container)
        by = "cli"
    api = ClusterAPI(settings)

    async def run() -> tuple[list[dict], list[str]]:
        reports, missing = [], []
        for job_id in args.ids:  # one by one, so one unknown id does not stop the others
            try:
                reports.append(await api.delete_jobs([job_id], by))
            except JobNotFound:
                missing.append(job_id)
        if shas:
            out = await api.delete_content(shas, by)
            reports.append(out)
            if not out["found"]:
                missing.extend(shas)
        return reports, missing

    try:
        reports, missing = asyncio.run(run())
    finally:
        api.close()
    total = {
        "jobs": sum(r["jobs"]["removed"] for r in reports),
        "cancelled": sum(r["jobs"]["cancelled"] for r in reports),
        "images": sum(r["points"]["images"] for r in reports),
        "frames": sum(r["points"]["frames"] for r in reports),
        "faces": sum(r["points"]["faces"] for r in reports),
        "payloads": sum(r["payloads"]["removed"] for r in reports),
        "payload_bytes": sum(r["payloads"]["bytes"] for r in reports),
    }
    if args.json:
        print(json.dumps({"deleted": reports, "not_found": missing, "total": total}))
    else:
        shas_done = sorted({s for r in reports for s in r["sha256"]})
        print(
            f"deleted {len(shas_done)} content(s): {total['jobs']} job(s) "
            f"({total['cancelled']} cancelled), {total['images']} image point(s), "
            f"{total['frames']} video-frame point(s), {total['faces']} face point(s), "
            f"{total['payloads']} payload(s) ({total['payload_bytes']} bytes)"
        )
        for what in missing:
            print(f"not found: {what} (no such job, nor anything of that content)")
    return 3 if missing else 0


def cmd_index_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Copy vectors of qdrant-client's local mode (earlier releases) into Qdrant Edge."""
    from raylens.cluster.index_migrate import migrate_local_mode

    bars: dict[str, object] = {}

    def progress(name: str, copied: int, total: int) -> None:
        if args.json or args.no_progress:
            return
        from tqdm import tqdm

        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, unit="points")
        bar.update(copied - bar.n)  # type: ignore[attr-defined]

    try:
        out = migrate_local_mode(settings, progress)
    finally:
        for bar in bars.values():
            bar.close()  # type: ignore[attr-defined]
    print(json.dumps(out) if args.json else out["message"])
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    """Re-embed every done image with another model, then switch searches to it."""
    from raylens.actors import launch
    from raylens.actors.reindex import reindex
    from raylens.cli.lifecycle import check_weights_here

    if args.limit is not None and args.limit < 1:
        raise SettingsError("--limit must be at least 1")
    config = str(Path(args.model_config).expanduser().resolve()) if args.model_config else None
    # The weights are looked for here first: a tag that is not cached offline fails now.
    check_weights_here(
        settings.model_copy(update={"clip_model": args.model, "clip_pretrained": args.pretrained})
    )
    launch.connect(settings, args.address)
    bars: dict[str, Any] = {}

    def progress(stage: str, n: int, total: int | None) -> None:
        if args.json or args.no_progress:
            return
        from tqdm import tqdm

        if stage == "total":
            bars["bar"] = tqdm(total=total, desc="re-embedding", unit="img")
        elif stage in ("embedded", "skipped") and "bar" in bars:
            bars["bar"].update(n)
        elif stage == "switched" and "bar" in bars:
            bars["bar"].set_description("switched; rolling workers over")

    try:
        out = reindex(
            settings,
            args.model,
            args.pretrained,
            config,
            limit=args.limit,
            switch=not args.no_switch,
            progress=progress,
        )
    finally:
        if "bar" in bars:
            bars["bar"].close()
    if args.json:
        print(json.dumps(out))
    elif out.get("already_active"):
        print(f"{out['model_id']} is the active model already (collection {out['collection']})")
        if out.get("switch"):
            print(f"rolled {len(out['switch']['rolled'])} worker(s) still on an earlier model")
    else:
        _print_reindex(out)
    return 1 if (out.get("switch") or {}).get("error") else 0


def _print_reindex(out: dict[str, Any]) -> None:
    print(
        f"re-embedded {out['embedded']} image(s) with {out['model_id']} into "
        f"{out['collection']!r} in {out['took_s']:.1f}s ({out['images_per_s'] or 0} img/s); "
        f"{out['skipped']} already there, {out['not_embedded']} face-only job(s) need none; "
        f"the collection holds {out['points']} point(s)"
    )
    for u in out["unavailable"][:20]:
        print(f"not re-embedded: {u['source']} (job {u['job_id']}): [{u['code']}] {u['message']}")
    if len(out["unavailable"]) > 20:
        print(f"... and {len(out['unavailable']) - 20} more (--json lists all)")
    if out["switched"] and (out["switch"] or {}).get("error"):
        print(out["switch"]["error"])
    elif out["switched"]:
        rolled = (out["switch"] or {}).get("rolled")
        print(
            f"switched: searches and new images now use {out['model_id']}; "
            + (
                f"{len(rolled)} worker(s) rolled over in {out['switch']['took_s']:.1f}s"
                if rolled is not None
                else out["switch"].get("note", "")
            )
        )
    elif not out["complete"]:
        print("not switched: images remain; run the same command again to continue")
    else:
        print(f"not switched (--no-switch); searches still use {out['previous_model_id']}")
