"""The "index" checks: the embedded engine (Qdrant Edge) read from its files, a Qdrant server,
vector sizes."""

from __future__ import annotations

import contextlib
import json
import math
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
    return " ".join(text.replace("\0", " ").split())[:120] or "?"


# Held by these, a shard folder is raylens's own: the index actor (Ray titles its process
# `ray::VectorIndex`, `ray::VectorIndex.upsert` while a call runs) and its HNSW build child.
OWN_HOLDERS = ("ray::VectorIndex", "raylens.cluster.index_build")


def _holders(lock_file: Path) -> list[dict[str, Any]] | None:
    pids = lock_holders(lock_file)
    return None if pids is None else [{"pid": p, "cmdline": _cmdline(p)} for p in pids]


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "WouldBlock" in text or "lock" in text.lower()


def _count_points(shard_path: Path) -> dict[str, Any]:
    """Open a shard no one holds, count its points, close it: well under a second for a small
    shard. The engine's lock is taken without waiting, so a folder opened meanwhile by another
    process fails here at once (in_use) instead of blocking."""
    from qdrant_edge import CountRequest, EdgeShard

    try:
        shard = EdgeShard.load(str(shard_path))
    except Exception as exc:
        if _is_lock_error(exc):
            return {"in_use": True}
        return {"error": f"the engine cannot open {shard_path}: {str(exc)[:300]}"}
    try:
        info = shard.info()
        return {
            "points": int(shard.count(CountRequest(exact=True))),
            "indexed": int(info.indexed_vectors_count),
            "segments": int(info.segments_count),
        }
    finally:
        shard.close()


def _edge_collection_facts(folder: Path, count_free: bool) -> dict[str, Any]:
    """One collection folder of the embedded engine: CURRENT, that generation's edge_config.json
    and who holds its lock (the engine flocks the shard's `wal` folder); the point count only
    when no one holds it and count_free. Other gen-* folders (a build under way, or one a crash
    left) are listed, never opened."""
    from raylens.cluster.index_edge import CURRENT, GEN

    facts: dict[str, Any] = {"folder": str(folder)}
    current = read_file(folder / CURRENT)
    gen = current.strip() if current is not None else None
    facts["generation"] = gen
    facts["other_generations"] = [
        {"name": d.name, "holders": _holders(d / "wal")}
        for d in sorted(folder.iterdir())
        if d.is_dir() and GEN.match(d.name) and d.name != gen
    ]
    if gen is None:
        return facts  # created at first use (an interrupted create is made again then)
    shard = folder / gen
    if not GEN.match(gen) or not shard.is_dir():
        facts["error"] = f"{folder / CURRENT} names {gen!r}, which is no generation folder there"
        return facts
    try:
        config = json.loads((shard / "edge_config.json").read_text())
        vector = (config.get("vectors") or {})[""]
        facts["vectors"] = {"size": int(vector["size"]), "distance": str(vector["distance"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        facts["error"] = f"cannot read the vector size from {shard / 'edge_config.json'}: {exc}"
        return facts
    facts["holders"] = _holders(shard / "wal")
    if facts["holders"]:
        facts["in_use"] = True
        return facts  # never opened while someone holds it: that would fail, or race its owner
    if not count_free:
        return facts
    counted = _count_points(shard)
    if counted.get("in_use"):  # opened since /proc/locks was read, or no /proc/locks here
        facts["holders"] = _holders(shard / "wal")
    facts.update(counted)
    return facts


def qdrant_local_facts(path: Path, count_free: bool = True) -> dict[str, Any]:
    """The embedded engine (Qdrant Edge) in the data dir, from its files: each collection's
    generation, vector size and distance, who holds it; its point count only when no process
    holds it (opened briefly, then closed) and count_free (pass False while the raylens index
    actor runs: it opens a collection at its first use, and must not find it held). Also the
    qdrant-client local-mode files of earlier releases (raylens refuses to start on them) and
    the backups `raylens index migrate` kept."""
    from raylens.cluster.index_edge import edge_root, old_local_mode_collections

    root = edge_root(path)
    facts: dict[str, Any] = {"path": str(path), "edge_path": str(root), "exists": path.is_dir()}
    if not facts["exists"]:
        return facts
    old = old_local_mode_collections(path)
    if old:
        facts["old_local_mode"] = {"collections": old, "lock_holders": _holders(path / ".lock")}
    facts["migration_backups"] = sorted(
        d.name for d in path.glob("local-mode-backup-*") if d.is_dir()
    )
    collections: dict[str, dict[str, Any]] = {}
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir():
                try:
                    collections[folder.name] = _edge_collection_facts(folder, count_free)
                except OSError as exc:
                    collections[folder.name] = {"folder": str(folder), "error": str(exc)}
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


def _who(holders: list[dict[str, Any]] | None) -> str:
    if not holders:
        return "another process (its pid cannot be told here: no /proc/locks)"
    return ", ".join(f"pid {h['pid']} ({h['cmdline']})" for h in holders)


def _ours(holders: list[dict[str, Any]] | None, index_actor_running: bool) -> bool:
    return index_actor_running or bool(
        holders and all(any(o in h["cmdline"] for o in OWN_HOLDERS) for h in holders)
    )


def _edge_collection_line(name: str, c: Mapping[str, Any], index_actor_running: bool) -> str:
    if c.get("error"):
        return f"{name}: unreadable ({c['error']})"
    if c.get("generation") is None:
        return f"{name}: no generation yet (created at first use)"
    v = c.get("vectors") or {}
    parts = [f"{v.get('size', '?')}-d {v.get('distance', '')}".strip(), str(c["generation"])]
    if c.get("in_use"):
        ours = _ours(c.get("holders"), index_actor_running)
        parts.append(
            f"in use by {_who(c.get('holders'))}"
            + (" (the raylens index actor; `raylens status` counts its points)" if ours else "")
        )
    elif "points" in c:
        n = c["points"]
        parts.insert(0, f"{n} point{'' if n == 1 else 's'} ({c.get('indexed', 0)} in HNSW)")
        parts.append("not in use")
    else:
        parts.append("not in use (not opened to count its points while the index actor runs)")
    for other in c.get("other_generations") or []:
        if other.get("holders"):
            parts.append(f"{other['name']}: a build under way ({_who(other['holders'])})")
        else:
            parts.append(f"{other['name']}: a build's copy, not in use (removed at the next open)")
    return f"{name}: " + ", ".join(parts)


def check_qdrant_local(facts: Mapping[str, Any], index_actor_running: bool) -> Check:
    """The embedded engine (Qdrant Edge): its collections, who holds them, old files."""
    path = facts["path"]
    keys = ("path", "edge_path", "collections", "old_local_mode", "migration_backups")
    data = {k: facts[k] for k in keys if k in facts}
    if not facts.get("exists"):
        return Check(
            "qdrant",
            OK,
            f"embedded (Qdrant Edge) at {path}: not created yet (`raylens up` creates it)",
            group="index",
            data=data,
        )
    collections: Mapping[str, Any] = facts.get("collections") or {}
    lines = [_edge_collection_line(n, c, index_actor_running) for n, c in collections.items()]
    detail = f"embedded (Qdrant Edge) at {facts['edge_path']}: " + (
        "; ".join(lines) or "no collections yet"
    )
    backups = facts.get("migration_backups") or []
    if backups:
        detail += (
            f"; {path} keeps {', '.join(backups)} (the files `raylens index migrate` moved "
            "aside: remove once satisfied)"
        )
    old = facts.get("old_local_mode")
    if old:
        held = f", locked by {_who(old['lock_holders'])}" if old.get("lock_holders") else ""
        return Check(
            "qdrant",
            ERROR,
            f"{path} still holds qdrant-client local-mode files (meta.json, collection/: "
            f"{', '.join(old['collections'])}{held}), the embedded engine of earlier raylens "
            f"releases: raylens refuses to start on them; {detail}",
            "`raylens index migrate` (with raylens stopped)",
            group="index",
            data=data,
        )
    broken = [n for n, c in collections.items() if c.get("error")]
    if broken:
        folders = ", ".join(str(collections[n].get("folder", n)) for n in broken)
        return Check(
            "qdrant",
            ERROR,
            f"{detail}: the engine cannot open {', '.join(broken)}",
            f"restore {folders} from a backup, or move it away (its vectors are lost; re-ingest)",
            group="index",
            data=data,
        )
    foreign = [
        n
        for n, c in collections.items()
        if c.get("in_use") and not _ours(c.get("holders"), index_actor_running)
    ]
    if foreign:
        return Check(
            "qdrant",
            WARN,
            f"{detail}; no raylens index actor is running: `raylens up` cannot open "
            f"{', '.join(foreign)} while that process lives",
            "stop that process (an old raylens, or a notebook or script holding a VectorIndex "
            "or EdgeShard on it), or use a Qdrant server (RAYLENS_QDRANT_URL)",
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
