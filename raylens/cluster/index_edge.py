"""The embedded vector engine: Qdrant Edge, Qdrant's engine in-process, in the data dir.

Layout: `<data dir>/qdrant/edge/<collection>/` holds `CURRENT` (the name of the live
generation) and that generation's shard folder, `gen-000001/` and so on. One process owns a
shard folder (the engine locks it), so the running system keeps one index actor around it.

HNSW builds never run in the owner's process: `EdgeShard.optimize()` holds the GIL for its
whole run. Once `index_build_points` points were written since the last build, the owner
flushes the live shard, copies its folder to the next generation and starts
`raylens.cluster.index_build` on the copy (a low-priority process). Writes go on to the live
shard and are also kept, as the very operations, in memory. When the build exits the owner
loads the copy, replays those operations onto it, at most `index_catchup_points` per call, and
then swaps: `CURRENT` names the copy (written atomically), the old generation is closed and
removed. A crash at any point leaves `CURRENT` naming a complete, durable generation; leftover
folders are removed at the next open. So no call waits for a build, only for the folder copy
(about 0.5 s per 30,000 512-d points here) and one replay step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raylens.cluster.index_build import RESULT_FILE
from raylens.errors import IndexUnavailable, SettingsError

CURRENT = "CURRENT"
GEN = re.compile(r"^gen-(\d{6})$")
# A generation swapped out, or a dropped build's copy, is renamed to <gen>.removing and removed
# on a background thread (the swap's rmtree took 0.07-0.17 s inside the index call at
# 10,000-90,000 512-d points, growing with the collection); one left by a crash is removed at
# the next open.
REMOVING = ".removing"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Payload fields with a keyword index: what deletes and per-image lookups filter on.
INDEXED_FIELDS = ("sha256", "job_id")
DISTANCES = ("cosine", "euclid")
SEGMENTS = 6  # segments a collection may have before builds merge them (see _config)


def edge_root(qdrant_path: Path) -> Path:
    return qdrant_path / "edge"


def old_local_mode_collections(qdrant_path: Path) -> list[str]:
    """Collections that qdrant-client's local mode (the embedded default before Qdrant Edge)
    left in this folder, read from its meta.json without opening it."""
    meta = qdrant_path / "meta.json"
    if not meta.is_file():
        return []
    try:
        names = list((json.loads(meta.read_text()).get("collections") or {}).keys())
    except (OSError, ValueError):
        return ["(unreadable meta.json)"]
    return [n for n in names if (qdrant_path / "collection" / n).is_dir()]


def old_local_mode_message(qdrant_path: Path) -> str | None:
    """What to tell a user whose data dir still holds local-mode vectors; None if it holds none."""
    old = old_local_mode_collections(qdrant_path)
    if not old:
        return None
    return (
        f"{qdrant_path} holds vectors written by qdrant-client's local mode "
        f"(collections: {', '.join(old)}), the embedded engine of earlier raylens "
        "releases; this release embeds Qdrant Edge. Copy them over once, with raylens "
        "stopped: `raylens index migrate` (nothing has been changed)"
    )


@dataclass
class BuildTuning:
    points: int = 10_000  # build after this many writes (0 = never)
    threads: int = 1
    catchup_points: int = 4096
    max_backlog: int = 200_000


@dataclass
class _Build:
    gen: str
    path: Path
    proc: subprocess.Popen[bytes]
    started: float
    # the flush and folder copy that started it, inside one index call (it grows with the
    # collection: 0.12-0.84 s at 10,000-90,000 512-d points here)
    copy_seconds: float = 0.0
    log: deque[tuple[Any, int]] = field(default_factory=deque)
    log_points: int = 0
    shard: Any = None  # the built copy, once loaded


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EdgeCollection:
    """One collection: the live generation, and at most one build of the next."""

    def __init__(self, folder: Path, tuning: BuildTuning, builds: bool) -> None:
        self.folder = folder
        self.tuning = tuning
        self.builds = builds and tuning.points > 0
        self.shard: Any = None
        self.gen: str | None = None
        self.size: int | None = None
        self.distance: str | None = None
        self._build: _Build | None = None
        self._since_build = 0
        self._next_try = 0.0
        self.stats: dict[str, Any] = {"builds": 0, "builds_dropped": 0, "last_build": None}
        self._open()

    # --- generations ----------------------------------------------------------------------
    def _config(self, dim: int | None = None, distance: str | None = None) -> Any:
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeOptimizersConfig,
            EdgeVectorParams,
            HnswIndexConfig,
            Memory,
            ScalarQuantizationConfig,
            ScalarType,
        )

        hnsw = HnswIndexConfig(
            m=16, ef_construct=100, full_scan_threshold=10_000,
            max_indexing_threads=self.tuning.threads,
        )  # fmt: skip
        if dim is None:
            dim, distance = self.size, self.distance
        assert dim is not None, "the vector size is read before the shard is opened"
        metric = Distance.Euclid if distance == "euclid" else Distance.Cosine
        return EdgeConfig(
            vectors=EdgeVectorParams(size=dim, distance=metric),
            hnsw_config=hnsw,
            # Each build indexes what was written since the last one into a segment of its own,
            # and merges segments only past SEGMENTS. With the default target (one segment per
            # CPU) every build would also merge and rebuild the whole graph: O(collection) per
            # build, and builds fell behind a 500/s ingest here. With 32, searches paid for many
            # segments (100,000 points: p50 11 ms); 6 measured p50 5.5-5.7 ms, p99 8-15 ms.
            optimizers=EdgeOptimizersConfig(default_segment_number=SEGMENTS),
            # int8 copies of the vectors, built with the graph: the build runs on them (measured
            # 139 -> 1,824 points/s for 512-d here, one thread) and searches rank with them, then
            # rescore the candidates with the original vectors (QueryRequest params), so scores
            # and distances are exact.
            quantization_config=ScalarQuantizationConfig(
                type=ScalarType.Int8, memory=Memory.Pinned
            ),
        )

    def _open(self) -> None:
        from qdrant_edge import EdgeShard

        current = self.folder / CURRENT
        if not current.is_file():
            return
        gen = current.read_text().strip()
        if not GEN.match(gen) or not (self.folder / gen).is_dir():
            raise IndexUnavailable(
                f"{current} names {gen!r}, which is not a generation folder here; restore the "
                "folder from a backup or move it away (its vectors are lost; re-ingest)"
            )
        for stale in self.folder.iterdir():  # builds and old generations a crash left behind
            if (
                stale.is_dir()
                and stale.name != gen
                and (GEN.match(stale.name) or stale.name.endswith(REMOVING))
            ):
                shutil.rmtree(stale, ignore_errors=True)
        path = self.folder / gen
        self._read_vector_config(path)
        try:
            self.shard = EdgeShard.load(str(path), self._config())
        except Exception as exc:
            raise _open_error(path, exc) from exc
        self.gen = gen
        info = self.shard.info()
        self._since_build = max(0, info.points_count - info.indexed_vectors_count)

    def _read_vector_config(self, path: Path) -> None:
        try:
            config = json.loads((path / "edge_config.json").read_text())
            vector = (config.get("vectors") or {})[""]
            self.size = int(vector["size"])
            self.distance = str(vector.get("distance", "Cosine")).lower()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexUnavailable(
                f"cannot read the vector size of the embedded engine's shard at {path}: {exc}"
            ) from exc

    def create(self, dim: int, distance: str) -> None:
        from qdrant_edge import EdgeShard, PayloadSchemaType, UpdateOperation

        assert distance in DISTANCES
        self.folder.mkdir(parents=True, exist_ok=True)
        gen = "gen-000001"
        path = self.folder / gen
        shutil.rmtree(path, ignore_errors=True)
        try:
            shard = EdgeShard.create(str(path), self._config(dim, distance))
            for name in INDEXED_FIELDS:
                shard.update(UpdateOperation.create_field_index(name, PayloadSchemaType.Keyword))
            shard.flush()
        except Exception as exc:
            raise _open_error(path, exc) from exc
        _write_atomic(self.folder / CURRENT, gen)
        self.shard, self.gen, self.size, self.distance = shard, gen, dim, distance

    @property
    def live_path(self) -> Path:
        assert self.gen is not None
        return self.folder / self.gen

    # --- writes and reads -----------------------------------------------------------------
    def update(self, op: Any, points: int) -> None:
        """Apply one write to the live shard, and keep it for the build under way."""
        self.shard.update(op)
        self._since_build += points
        b = self._build
        if b is not None:
            b.log.append((op, points))
            b.log_points += points
            if b.log_points > self.tuning.max_backlog:
                self._drop_build(
                    f"{b.log_points} points written during the build, over "
                    f"RAYLENS_INDEX_BUILD_MAX_BACKLOG={self.tuning.max_backlog}"
                )
        self.maintain()

    def maintain(self) -> None:
        """Advance the build by one step: start it, pick up its result, replay a slice, swap."""
        if not self.builds or self.shard is None:
            return
        b = self._build
        if b is None:
            if self._since_build >= self.tuning.points and time.monotonic() >= self._next_try:
                self._start_build()
            return
        if b.shard is None:
            rc = b.proc.poll()
            if rc is None:
                return
            if rc != 0:
                self._drop_build(f"the build process exited with {rc} (see {b.path}.log)")
                return
            from qdrant_edge import EdgeShard

            try:
                b.shard = EdgeShard.load(str(b.path), self._config())
            except Exception as exc:
                self._drop_build(f"the built copy did not open: {exc}")
                return
        replayed = 0
        while b.log and replayed < self.tuning.catchup_points:
            op, points = b.log.popleft()
            b.shard.update(op)
            replayed += points
        if not b.log:
            self._swap(b)

    def _start_build(self) -> None:
        assert self.gen is not None
        number = int(GEN.match(self.gen).group(1)) + 1  # type: ignore[union-attr]
        gen = f"gen-{number:06d}"
        path = self.folder / gen
        shutil.rmtree(path, ignore_errors=True)
        copy_started = time.monotonic()
        self.shard.flush()
        shutil.copytree(self.live_path, path)
        copy_seconds = time.monotonic() - copy_started
        with contextlib.suppress(FileNotFoundError):
            (path / RESULT_FILE).unlink()
        log = open(f"{path}.log", "wb")  # noqa: SIM115 - handed to the child process
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "raylens.cluster.index_build", str(path), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._build = _Build(
            gen=gen,
            path=path,
            proc=proc,
            started=time.monotonic(),
            copy_seconds=round(copy_seconds, 3),
        )
        self._since_build = 0

    def _drop_build(self, why: str) -> None:
        b = self._build
        if b is None:
            return
        self._build = None
        _stop(b)
        _remove_later(b.path)  # a whole copy of the collection: not inside this call either
        self._since_build += b.log_points
        self._next_try = time.monotonic() + 60.0
        self.stats["builds_dropped"] += 1
        self.stats["last_drop"] = why

    def _swap(self, b: _Build) -> None:
        result: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((b.path / RESULT_FILE).read_text())
        _write_atomic(self.folder / CURRENT, b.gen)
        old_shard, old_path = self.shard, self.live_path
        self.shard, self.gen, self._build = b.shard, b.gen, None
        with contextlib.suppress(Exception):
            old_shard.close()
        _remove_later(old_path)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{old_path}.log").unlink()
        self.stats["builds"] += 1
        self.stats["last_build"] = {
            **result,
            "wall_seconds": round(time.monotonic() - b.started, 3),
            "copy_seconds": b.copy_seconds,
            "replayed_points": b.log_points,
            "at": time.time(),
        }

    def building(self) -> bool:
        return self._build is not None

    def close(self) -> None:
        b = self._build
        if b is not None:
            self._build = None
            _stop(b)
        if self.shard is not None:
            self.shard.close()
            self.shard = None


def _remove_later(path: Path) -> None:
    """Remove a generation folder off the calling thread: renamed at once (so the name is free
    and no open ever takes it for a generation), deleted on a daemon thread."""
    doomed = path.with_name(path.name + REMOVING)
    try:
        shutil.rmtree(doomed, ignore_errors=True)  # an earlier removal that did not finish
        os.replace(path, doomed)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    threading.Thread(
        target=shutil.rmtree,
        args=(doomed,),
        kwargs={"ignore_errors": True},
        daemon=True,
        name="raylens-index-remove",
    ).start()


def _stop(b: _Build) -> None:
    """End a build: its process if still running, its copy if it was opened."""
    if b.proc.poll() is None:
        b.proc.kill()
        b.proc.wait()
    if b.shard is not None:
        with contextlib.suppress(Exception):
            b.shard.close()


def _open_error(path: Path, exc: Exception) -> IndexUnavailable:
    text = str(exc)
    if "WouldBlock" in text or "lock" in text.lower():
        return IndexUnavailable(
            f"the embedded vector engine at {path} is open in another process (one process "
            "owns it: the raylens index actor, or another program): stop it (`raylens down`), "
            "or use a Qdrant server (RAYLENS_QDRANT_URL)"
        )
    return IndexUnavailable(f"cannot open the embedded vector engine at {path}: {text}")


def _to_edge_filter(filters: dict[str, Any]) -> Any:
    """Every condition must hold; a list value matches any of its values."""
    if not filters:
        return None
    from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue

    return Filter(
        must=[
            FieldCondition(key=k, match=MatchAny(list(v)) if isinstance(v, list) else MatchValue(v))
            for k, v in filters.items()
        ]
    )


def _split_bools(filters: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, bool]]:
    """qdrant-edge-py 0.9.0 turns MatchValue(True) into MatchValue(1), which matches no stored
    true: such conditions are checked here instead, on hits the engine ranked."""
    plain = {k: v for k, v in (filters or {}).items() if not isinstance(v, bool)}
    bools = {k: v for k, v in (filters or {}).items() if isinstance(v, bool)}
    return plain, bools


class EdgeBackend:
    """The VectorIndex backend on Qdrant Edge: one EdgeCollection per collection name."""

    def __init__(
        self,
        qdrant_path: Path,
        tuning: BuildTuning,
        builds: bool = False,
        allow_old_local_mode: bool = False,
    ) -> None:
        message = None if allow_old_local_mode else old_local_mode_message(qdrant_path)
        if message:
            raise SettingsError(message)
        self.root = edge_root(qdrant_path)
        self.root.mkdir(parents=True, exist_ok=True)
        self.where = str(self.root)
        self.tuning = tuning
        self.builds = builds
        self._collections: dict[str, EdgeCollection] = {}

    def _collection(self, name: str) -> EdgeCollection:
        c = self._collections.get(name)
        if c is None:
            if not COLLECTION_NAME.match(name):
                raise SettingsError(
                    f"collection name {name!r} must be 1-128 letters, digits, '_', '.' or '-' "
                    "(it names a folder of the embedded engine)"
                )
            c = EdgeCollection(self.root / name, self.tuning, self.builds)
            self._collections[name] = c
        return c

    def collection_size(self, name: str) -> int | None:
        c = self._collection(name)
        return c.size if c.shard is not None else None

    def create(self, name: str, dim: int, distance: str) -> None:
        self._collection(name).create(dim, distance)

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        from qdrant_edge import Point, UpdateOperation

        c = self._collection(name)
        rows = vectors.tolist()
        op = UpdateOperation.upsert_points([Point(i, v, p) for i, v, p in zip(ids, rows, payloads)])
        c.update(op, len(rows))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        c = self._collection(name)
        if c.shard is not None and ids:
            c.update(UpdateOperation.delete_points(list(ids)), 0)

    def count_where(self, name: str, filters: dict[str, Any]) -> int:
        from qdrant_edge import CountRequest

        c = self._collection(name)
        if c.shard is None:
            return 0
        return int(c.shard.count(CountRequest(exact=True, filter=_to_edge_filter(filters))))

    def delete_where(self, name: str, filters: dict[str, Any]) -> None:
        from qdrant_edge import UpdateOperation

        c = self._collection(name)
        if c.shard is not None and filters:
            # Through update(): a build under way replays it on its copy too.
            c.update(UpdateOperation.delete_points_by_filter(_to_edge_filter(filters)), 0)

    def search(
        self, name: str, vector: np.ndarray, top_k: int, filters: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        from qdrant_edge import QuantizationSearchParams, Query, QueryRequest, SearchParams

        c = self._collection(name)
        if c.shard is None:
            return []
        c.maintain()
        plain, bools = _split_bools(filters)
        limit = top_k if not bools else top_k * 4
        while True:
            found = c.shard.query(
                QueryRequest(
                    limit=limit,
                    query=Query.Nearest(vector.tolist()),
                    filter=_to_edge_filter(plain),
                    with_payload=True,
                    params=SearchParams(quantization=QuantizationSearchParams(rescore=True)),
                )
            )
            hits = [
                {"id": str(p.id), "score": p.score, "payload": p.payload or {}}
                for p in found
                if all((p.payload or {}).get(k) is v for k, v in bools.items())
            ]
            # Best first, so the first top_k kept are the true top_k once enough are kept or
            # the engine has no more to rank.
            if len(hits) >= top_k or len(found) < limit:
                return hits[:top_k]
            limit *= 4

    def count(self, name: str) -> int:
        from qdrant_edge import CountRequest

        c = self._collection(name)
        return 0 if c.shard is None else int(c.shard.count(CountRequest(exact=True)))

    def retrieve(self, name: str, point_id: str) -> dict[str, Any] | None:
        c = self._collection(name)
        if c.shard is None:
            return None
        found = c.shard.retrieve([point_id], with_payload=True, with_vector=True)
        if not found:
            return None
        p = found[0]
        vector = p.vector.get("", p.vector) if isinstance(p.vector, dict) else p.vector
        return {
            "id": str(p.id),
            "vector": np.asarray(vector, dtype=np.float32),
            "payload": p.payload or {},
        }

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        """Which of these point ids the collection holds (one call, no vectors)."""
        c = self._collection(name)
        if c.shard is None or not ids:
            return []
        found = c.shard.retrieve(list(ids), with_payload=False, with_vector=False)
        return [str(p.id) for p in found]

    def point_alias(self, alias: str, name: str) -> bool:
        """The embedded engine has no aliases: the active-model record in the job store is the
        one pointer (raylens is its only reader)."""
        return False

    def alias_target(self, alias: str) -> str | None:
        return None

    def sample_payload(self, name: str) -> dict[str, Any] | None:
        """The payload of one point of the collection (None when it holds none)."""
        from qdrant_edge import ScrollRequest

        c = self._collection(name)
        if c.shard is None:
            return None
        points, _ = c.shard.scroll(ScrollRequest(limit=1, with_payload=True, with_vector=False))
        return dict(points[0].payload or {}) if points else None

    def point_ids(self, name: str, limit: int) -> list[str]:
        from qdrant_edge import ScrollRequest

        c = self._collection(name)
        ids: list[str] = []
        offset = None
        while c.shard is not None and len(ids) < limit:
            points, offset = c.shard.scroll(
                ScrollRequest(offset=offset, limit=1000, with_payload=False, with_vector=False)
            )
            ids.extend(str(p.id) for p in points)
            if offset is None:
                break
        return ids[:limit]

    def maintain(self) -> None:
        for c in self._collections.values():
            c.maintain()

    def building(self) -> bool:
        return any(c.building() for c in self._collections.values())

    def stats(self) -> dict[str, Any]:
        out = {}
        for name, c in self._collections.items():
            if c.shard is None:
                continue
            info = c.shard.info()
            out[name] = {
                "generation": c.gen,
                "points": info.points_count,
                "indexed": info.indexed_vectors_count,
                "segments": info.segments_count,
                "building": c.building(),
                **c.stats,
            }
        return out

    def close(self) -> None:
        for c in self._collections.values():
            c.close()
        self._collections.clear()
