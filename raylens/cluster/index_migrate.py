"""`raylens index migrate`: copy vectors from qdrant-client's local mode into Qdrant Edge.

Earlier raylens releases embedded qdrant-client's local mode (`<data dir>/qdrant/meta.json`
and `collection/<name>/storage.sqlite`). This release embeds Qdrant Edge in
`<data dir>/qdrant/edge/`, and refuses to start on a data dir that still holds the old files
(a clear message naming this command, never a crash). The migration:

1. opens the old folder with qdrant-client's local mode (it only reads, but takes the folder's
   lock, so raylens and any notebook holding the folder must be stopped),
2. copies every point of every collection (id, vector, payload) in pages, into a collection of
   the same name, size and distance on Qdrant Edge (point ids are kept, so the copy is
   idempotent: an interrupted migration is simply run again),
3. checks that each copy holds as many points as the original,
4. only then moves the old files aside into `<data dir>/qdrant/local-mode-backup-<time>/`
   (nothing is deleted: remove that folder once you are satisfied).
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raylens.cluster.index_edge import BuildTuning, EdgeBackend, old_local_mode_collections
from raylens.cluster.settings import Settings
from raylens.errors import IndexUnavailable, SettingsError

PAGE = 1000


def _open_old(path: Path) -> Any:
    from qdrant_client import QdrantClient

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return QdrantClient(path=str(path))
    except Exception as exc:
        if "already accessed" in str(exc) or "lock" in str(exc).lower():
            raise IndexUnavailable(
                f"{path} is open in another process (an older raylens, or a notebook holding "
                "a QdrantClient on it): stop it, then run `raylens index migrate` again"
            ) from exc
        raise IndexUnavailable(f"cannot open the old local-mode folder {path}: {exc}") from exc


def _vector_shape(client: Any, name: str) -> tuple[int, str]:
    vectors = client.get_collection(name).config.params.vectors
    if not hasattr(vectors, "size"):
        raise SettingsError(
            f"collection {name!r} has named vectors, which raylens never writes; "
            "it cannot be migrated by raylens"
        )
    distance = str(getattr(vectors.distance, "value", vectors.distance)).lower()
    if distance not in ("cosine", "euclid"):
        raise SettingsError(f"collection {name!r} uses {distance} distance; raylens writes none")
    return int(vectors.size), distance


def _copy_collection(
    client: Any, edge: EdgeBackend, name: str, progress: Callable[[str, int, int], None] | None
) -> int:
    """Every point of one old collection into the same-named Edge collection; its count."""
    dim, distance = _vector_shape(client, name)
    have = edge.collection_size(name)
    if have is None:
        edge.create(name, dim, distance)
    elif have != dim:
        raise SettingsError(
            f"the embedded engine already has a collection {name!r} of {have}-d "
            f"vectors, the old one holds {dim}-d ones; move {edge.where}/{name} away"
        )
    total = int(client.count(name, exact=True).count)
    copied, offset = 0, None
    while True:
        points, offset = client.scroll(
            name, limit=PAGE, offset=offset, with_payload=True, with_vectors=True
        )
        if points:
            edge.upsert(
                name,
                [str(p.id) for p in points],
                np.asarray([p.vector for p in points], dtype=np.float32),
                [p.payload or {} for p in points],
            )
            copied += len(points)
            if progress:
                progress(name, copied, total)
        if offset is None:
            break
    now = edge.count(name)
    if now < total:
        raise IndexUnavailable(
            f"collection {name!r}: copied {copied} of {total} points but the embedded "
            f"engine counts {now}; the old files are untouched, run the migration again"
        )
    return copied


def migrate_local_mode(
    settings: Settings, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Copy every old local-mode collection into Qdrant Edge; see the module docstring."""
    path = settings.qdrant_path
    names = old_local_mode_collections(path)
    if not names:
        return {
            "migrated": {},
            "backup": None,
            "message": f"nothing to migrate: {path} holds no qdrant-client local-mode data",
        }
    if settings.qdrant_url:
        raise SettingsError(
            "RAYLENS_QDRANT_URL is set: migrate copies into the embedded engine; unset it "
            "(or copy the collections to your server with Qdrant's own tools)"
        )
    started = time.monotonic()
    client = _open_old(path)
    edge = EdgeBackend(path, BuildTuning(points=0), builds=False, allow_old_local_mode=True)
    migrated: dict[str, int] = {}
    try:
        for name in names:
            migrated[name] = _copy_collection(client, edge, name, progress)
    finally:
        client.close()
        edge.close()
    backup = path / time.strftime("local-mode-backup-%Y%m%d-%H%M%S")
    backup.mkdir()
    for entry in ("meta.json", "collection", ".lock"):
        if (path / entry).exists():
            shutil.move(str(path / entry), str(backup / entry))
    return {
        "migrated": migrated,
        "backup": str(backup),
        "seconds": round(time.monotonic() - started, 2),
        "message": f"copied {sum(migrated.values())} points in {len(migrated)} collections "
        f"into the embedded engine at {edge.where}; the old files are in {backup} "
        "(remove it once you are satisfied)",
    }
