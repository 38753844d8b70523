"""The vector index: idempotent point ids, one interface over two Qdrant backends.

- embedded (the default): Qdrant Edge, Qdrant's engine in-process, in the data dir
  (raylens/cluster/index_edge.py); one process owns its folder, the index actor;
- server: qdrant-client against RAYLENS_QDRANT_URL (raylens/cluster/index_client.py).

Both get the same point ids, payloads, filters and distances (cosine for image vectors,
Euclidean for dlib face embeddings); tests/test_index_contract.py runs one suite on both.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from raylens.cluster.settings import Settings
from raylens.errors import IndexUnavailable, ModelMismatch, RaylensError, SettingsError

# Fixed namespace so a point id depends only on (content, model): retries and duplicate
# submissions overwrite the same point instead of adding one (invariant 3,
# docs/architecture.md).
POINT_NAMESPACE = uuid.UUID("6f1f4d0e-8a43-4f7b-9c1e-2b4c1d9a7e55")


def point_id(sha256: str, model_id: str, part: str = "image") -> str:
    """Deterministic Qdrant point id for one vector of one piece of content."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{sha256}:{model_id}:{part}"))


class VectorIndex:
    """A thin, batch-shaped index over the image and face collections.

    Embedded, exactly one process may open the folder, so the running system keeps a single
    named index actor around this class (`builds=True` there: it runs the HNSW builds); with
    RAYLENS_QDRANT_URL every worker may hold its own.
    """

    def __init__(
        self,
        settings: Settings,
        dim: int | None = None,
        builds: bool = False,
        backend: Any = None,
    ) -> None:
        self.collection = settings.qdrant_collection
        self.faces_collection = settings.qdrant_faces_collection
        self.dim = dim
        self.embedded = backend is None and not settings.qdrant_url
        if backend is not None:
            self.backend = backend
        else:
            self.backend = self._open_backend(settings, builds)
        self.where = self.backend.where
        self._ready: dict[str, int] = {}  # collection -> vector size, once checked or created
        self._models: dict[str, str] = {}  # collection -> model id of its vectors, once seen
        if dim is not None:
            self._ensure_collection(dim)

    @staticmethod
    def _open_backend(settings: Settings, builds: bool) -> Any:
        where = settings.qdrant_url or settings.qdrant_path
        try:
            if settings.qdrant_url:
                from qdrant_client import QdrantClient

                from raylens.cluster.index_client import ClientBackend

                client = QdrantClient(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key,
                    # The client takes whole seconds; int() would make 0.5 s a 0 s timeout that
                    # fails every call. Round up: a timeout is never shorter than asked.
                    timeout=math.ceil(settings.qdrant_timeout_s),
                )
                return ClientBackend(client, settings.qdrant_url)
            from raylens.cluster.index_edge import BuildTuning, EdgeBackend

            tuning = BuildTuning(
                points=settings.index_build_points,
                threads=settings.index_build_threads,
                catchup_points=settings.index_catchup_points,
                max_backlog=settings.index_build_max_backlog,
            )
            return EdgeBackend(settings.qdrant_path, tuning, builds=builds)
        except RaylensError:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"cannot open Qdrant at {where}: {exc}") from exc

    @property
    def ready(self) -> bool:
        return self.collection in self._ready

    def _distance(self, collection: str) -> str:
        # Face embeddings (dlib) are compared by Euclidean distance, image vectors by cosine.
        return "euclid" if collection == self.faces_collection else "cosine"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RaylensError:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"{what} Qdrant at {self.where} failed: {exc}") from exc

    def _ensure_collection(self, dim: int, collection: str | None = None) -> None:
        """Create the collection on first use (its size is the model's dimension)."""
        collection = collection or self.collection
        if self._ready.get(collection) == dim:
            return
        if collection == self.collection:
            self.dim = dim
        size = self._call("reading", self.backend.collection_size, collection)
        if size is None:
            self._call("creating a collection in", self.backend.create, collection, dim,
                       self._distance(collection))  # fmt: skip
        elif size != dim:
            raise SettingsError(
                f"Qdrant collection {collection!r} holds {size}-d vectors but the "
                f"model makes {dim}-d ones; "
                "set RAYLENS_QDRANT_COLLECTION (or _FACES_COLLECTION) to a new name"
            )
        self._ready[collection] = dim

    def check_model(self, model_id: str | None, collection: str | None = None) -> None:
        """Refuse (SettingsError) to mix vectors of two models in one collection: a write or a
        query of `model_id` against a collection whose vectors another model made (judged by
        a point it holds; remembered once seen). An empty collection takes any model."""
        collection = collection or self.collection
        if not model_id:
            return
        known = self._models.get(collection)
        if known is None:
            sample = self._call("reading", self.backend.sample_payload, collection)
            known = (sample or {}).get("model_id")
            if not known:
                return  # empty (or points without a model id): nothing to mix with yet
            self._models[collection] = known
        if known != model_id:
            raise ModelMismatch(
                f"Qdrant collection {collection!r} holds vectors of model {known!r}, not "
                f"{model_id!r}: vectors of two models are never mixed or compared. Point "
                "RAYLENS_QDRANT_COLLECTION (or _FACES_COLLECTION) at a collection of its own for "
                "this model, or go back to the model that made them"
            )

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
        collection: str | None = None,
    ) -> int:
        """Write a batch of points in one call; the same ids overwrite. Returns the batch size."""
        if len(ids) == 0:
            return 0
        collection = collection or self.collection
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(payloads) != len(ids):
            raise ValueError(
                f"upsert of {len(ids)} ids needs as many vectors and payloads "
                f"(got {vectors.shape} and {len(payloads)})"
            )
        self._ensure_collection(int(vectors.shape[1]), collection)
        if payloads:
            self.check_model(payloads[0].get("model_id"), collection)
        self._call("upsert to", self.backend.upsert, collection, ids, vectors, payloads)
        if payloads and payloads[0].get("model_id"):
            self._models.setdefault(collection or self.collection, payloads[0]["model_id"])
        return len(ids)

    def delete(self, ids: Sequence[str], collection: str | None = None) -> int:
        """Remove points by id (absent ids are no error). Returns how many ids were given."""
        collection = collection or self.collection
        self._call("delete in", self.backend.delete, collection, list(ids))
        return len(ids)

    def delete_content(
        self, sha256s: Sequence[str], collections: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Remove every point derived from these contents, whatever model made it: image
        points, video-frame points (in each image collection of `collections`, default this
        index's own; after a model switch there are several) and face points (the faces
        collection), found by their payload's sha256. Safe to repeat. Returns what it removed:
        {"images", "frames", "faces"} (points counted just before the delete)."""
        shas = sorted(set(sha256s))
        out = {"images": 0, "frames": 0, "faces": 0}
        if not shas:
            return out
        where = {"sha256": shas}
        images = list(dict.fromkeys(collections or [self.collection]))
        for collection, kind in [
            *((c, "images") for c in images),
            (self.faces_collection, "faces"),
        ]:
            n = self._call("counting in", self.backend.count_where, collection, where)
            if kind == "images" and n:
                frames = self._call(
                    "counting in", self.backend.count_where, collection, {**where, "media": "video"}
                )
                out["frames"] += frames
                n -= frames
            out[kind] += n
            self._call("delete in", self.backend.delete_where, collection, where)
        return out

    def point_alias(self, alias: str, collection: str) -> bool:
        """On a Qdrant server, point the alias at the collection in one step (readers outside
        raylens follow it); False on the embedded engine, which has none."""
        return bool(self._call("aliasing in", self.backend.point_alias, alias, collection))

    def alias_target(self, alias: str) -> str | None:
        target: str | None = self._call("reading", self.backend.alias_target, alias)
        return target

    def existing(self, ids: Sequence[str], collection: str | None = None) -> list[str]:
        """Which of these point ids the collection holds (a resumed re-embed skips them)."""
        ids = [i for i in ids if _is_uuid(i)]
        return self._call("reading", self.backend.existing, collection or self.collection, ids)

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        collection: str | None = None,
        model_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest points, best first: [{id, score, payload}]. score is the cosine similarity
        for images and the Euclidean distance (smaller is closer) for faces. With model_id
        (the model that made the query vector), a collection of another model's vectors is
        refused (check_model)."""
        collection = collection or self.collection
        self.check_model(model_id, collection)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        size = self._ready.get(collection)
        if size is None:
            size = self._call("reading", self.backend.collection_size, collection)
            if size is None:
                return []
            self._ready[collection] = size
        if query.shape[0] != size:
            raise SettingsError(
                f"a {query.shape[0]}-d query cannot search collection {collection!r} of "
                f"{size}-d vectors (another model made them)"
            )
        return self._call("search in", self.backend.search, collection, query, top_k, filters)

    def count(self, collection: str | None = None) -> int:
        return self._call("counting in", self.backend.count, collection or self.collection)

    def get(self, point_id: str, collection: str | None = None) -> dict[str, Any] | None:
        """One point with its vector and payload, or None (also for an id that is no UUID:
        raylens stores none, and a Qdrant server would answer it with a parse error)."""
        if not _is_uuid(point_id):
            return None
        return self._call(
            "read from", self.backend.retrieve, collection or self.collection, point_id
        )

    def point_ids(self, limit: int = 1_000_000, collection: str | None = None) -> list[str]:
        """Every point id (tests and audits)."""
        return self._call(
            "listing points in", self.backend.point_ids, collection or self.collection, limit
        )

    def maintain(self) -> dict[str, Any]:
        """Advance a background HNSW build by one step (embedded engine); its state."""
        self._call("maintaining", self.backend.maintain)
        return self.build_state()

    def build_state(self) -> dict[str, Any]:
        return dict(self._call("reading", self.backend.stats))

    def info(self, collection: str | None = None) -> dict[str, Any]:
        """Counts and build state; `collection`: the image collection to count (the active
        model's, default this index's own)."""
        collection = collection or self.collection
        return {
            "collection": collection,
            "dim": self._ready.get(collection, self.dim),
            "where": self.where,
            "engine": "qdrant-edge (embedded)" if self.embedded else "qdrant server",
            "points": self.count(collection),
            "faces_collection": self.faces_collection,
            "faces": self.count(self.faces_collection),
            "builds": self.build_state(),
            "at": time.time(),
        }

    def close(self) -> None:
        self.backend.close()


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True
