"""The "index" checks: Qdrant local mode read from its files, a Qdrant server, vector sizes."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raylens.cli.doctor.common import read_file
from raylens.cli.doctor.report import ERROR, OK, WARN, Check
from raylens.cluster.settings import Settings


def lock_holders(lock_file: Path, proc_locks: str | None = None) -> list[int] | None:
    """PIDs holding a lock on lock_file, read from /proc/locks without taking the lock.
    None when this cannot be told (no /proc/locks: not Linux)."""
    if proc_locks is None:
        proc_locks = read_file(Path("/proc/locks"))
        if proc_locks is None:
            return None
    try:
        inode = lock_file.stat().st_ino
    except OSError:
        return []
    pids = []
    for line in proc_locks.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6:
            continue  # a waiter, not a holder
        dev_inode = fields[5].rsplit(":", 1)
        if len(dev_inode) == 2 and dev_inode[1].isdigit() and int(dev_inode[1]) == inode:
            with contextlib.suppress(ValueError):
                pids.append(int(fields[4]))
    return pids


def _cmdline(pid: int) -> str:
    text = read_file(Path(f"/proc/{pid}/cmdline")) or ""
    return " ".join(text.split("\0")).strip()[:120] or "?"


def qdrant_local_facts(path: Path) -> dict[str, Any]:
    """Qdrant local mode, from its files: meta.json (collections), each collection's sqlite
    (point counts) and who holds the folder's lock. Never opens the folder as a client."""
    facts: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
    if not facts["exists"]:
        return facts
    holders = lock_holders(path / ".lock")
    facts["lock_holders"] = (
        None if holders is None else [{"pid": p, "cmdline": _cmdline(p)} for p in holders]
    )
    meta_text = read_file(path / "meta.json")
    if meta_text is None:
        facts["collections"] = {}
        return facts
    try:
        meta = json.loads(meta_text)
    except ValueError as exc:
        facts["meta_error"] = f"meta.json is not valid JSON: {exc}"
        return facts
    collections: dict[str, dict[str, Any]] = {}
    for name, config in (meta.get("collections") or {}).items():
        collections[name] = {"vectors": _vector_params(config.get("vectors"))}
        storage = path / "collection" / name / "storage.sqlite"
        try:
            db = sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=2.0)
            try:
                collections[name]["points"] = db.execute("SELECT count(*) FROM points").fetchone()[
                    0
                ]
            finally:
                db.close()
        except sqlite3.Error as exc:
            collections[name]["error"] = str(exc)
    facts["collections"] = collections
    return facts


def _vector_params(vectors: Any) -> dict[str, Any]:
    """{"size", "distance"} of an unnamed vector config (dict or model), or per named vector."""
    if vectors is None:
        return {}
    if hasattr(vectors, "size"):
        return {"size": vectors.size, "distance": str(getattr(vectors.distance, "value", ""))}
    if isinstance(vectors, dict) and "size" in vectors:
        return {"size": vectors["size"], "distance": str(vectors.get("distance", ""))}
    if isinstance(vectors, dict):
        return {name: _vector_params(v) for name, v in vectors.items()}
    return {}


def qdrant_server_facts(url: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    import warnings

    from qdrant_client import QdrantClient

    facts: dict[str, Any] = {"url": url}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client's version-compatibility notice
            client = QdrantClient(url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)))
        try:
            with contextlib.suppress(Exception):
                facts["version"] = client.info().version
            collections = {}
            for c in client.get_collections().collections:
                info = client.get_collection(c.name)
                collections[c.name] = {
                    "points": info.points_count,
                    "vectors": _vector_params(info.config.params.vectors),
                    "status": str(getattr(info.status, "value", info.status)),
                }
            facts.update(reachable=True, collections=collections)
        finally:
            client.close()
    except Exception as exc:
        facts.update(reachable=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    return facts


def _collections_line(collections: Mapping[str, Any]) -> str:
    if not collections:
        return "no collections yet"
    parts = []
    for name, c in sorted(collections.items()):
        if "error" in c:
            parts.append(f"{name}: unreadable ({c['error']})")
            continue
        v = c.get("vectors") or {}
        shape = f"{v['size']}-d {v.get('distance', '')}".strip() if "size" in v else "named vectors"
        parts.append(f"{name}: {c.get('points', '?')} points, {shape}")
    return "; ".join(parts)


def check_qdrant_local(facts: Mapping[str, Any], index_actor_running: bool) -> Check:
    path = facts["path"]
    data = {k: facts[k] for k in ("path", "collections", "lock_holders") if k in facts}
    if not facts.get("exists"):
        return Check(
            "qdrant",
            OK,
            f"local mode at {path}: not created yet (`raylens up` creates it)",
            group="index",
            data=data,
        )
    if facts.get("meta_error"):
        return Check(
            "qdrant",
            ERROR,
            f"local mode at {path}: {facts['meta_error']}",
            "restore meta.json from a backup, or move the folder away (its vectors are lost; "
            "re-ingest)",
            group="index",
            data=data,
        )
    detail = f"local mode at {path}: {_collections_line(facts.get('collections', {}))}"
    holders = facts.get("lock_holders")
    if holders:
        who = ", ".join(f"pid {h['pid']} ({h['cmdline']})" for h in holders)
        ours = index_actor_running or all("VectorIndex" in h["cmdline"] for h in holders)
        if not ours:
            return Check(
                "qdrant",
                WARN,
                f"{detail}; locked by {who}, and no raylens index actor is running: "
                "`raylens up` cannot open it while that process lives",
                "stop that process (an old raylens or a notebook holding a QdrantClient), or use "
                "a Qdrant server (RAYLENS_QDRANT_URL)",
                group="index",
                data=data,
            )
        detail += f"; in use by {who} (the raylens index actor)"
    elif holders is not None:
        detail += "; not locked"
    big = [n for n, c in facts.get("collections", {}).items() if c.get("points", 0) > 20_000]
    if big:
        return Check(
            "qdrant",
            WARN,
            f"{detail}; local mode holds every point in memory and slows down past 20,000 "
            f"points ({', '.join(big)})",
            "run a Qdrant server and set RAYLENS_QDRANT_URL",
            group="index",
            data=data,
        )
    return Check("qdrant", OK, detail, group="index", data=data)


def check_qdrant_server(facts: Mapping[str, Any], where: str) -> Check:
    data = {k: facts[k] for k in ("version", "collections") if k in facts}
    if not facts.get("reachable"):
        error = str(facts.get("error", ""))
        auth = "401" in error or "403" in error or "forbidden" in error.lower()
        return Check(
            "qdrant",
            ERROR,
            f"server {where} unreachable: {error}",
            "set RAYLENS_QDRANT_API_KEY to the server's API key"
            if auth
            else "start the Qdrant server, or fix RAYLENS_QDRANT_URL (unset it for local mode)",
            group="index",
        )
    version = f" {facts['version']}" if facts.get("version") else ""
    return Check(
        "qdrant",
        OK,
        f"server{version} at {where}: {_collections_line(facts.get('collections', {}))}",
        group="index",
        data=data,
    )


def check_collection_sizes(
    settings: Settings, collections: Mapping[str, Any], model_dim: int | None
) -> Check | None:
    """The stored vector sizes against the model's (images) and dlib's 128 (faces)."""
    expected = {settings.qdrant_faces_collection: 128}
    if model_dim is not None:
        expected[settings.qdrant_collection] = model_dim
    wrong: list[str] = []
    right: list[str] = []
    for name, dim in expected.items():
        size = (collections.get(name) or {}).get("vectors", {}).get("size")
        if size is None:
            continue
        (right if size == dim else wrong).append(f"{name} holds {size}-d, needs {dim}-d")
    if wrong:
        return Check(
            "collection sizes",
            ERROR,
            "; ".join(wrong),
            "set RAYLENS_QDRANT_COLLECTION (or RAYLENS_QDRANT_FACES_COLLECTION) to a new name, "
            "or go back to the model that filled it",
            group="index",
        )
    if right:
        return Check("collection sizes", OK, "; ".join(right), group="index")
    return None
