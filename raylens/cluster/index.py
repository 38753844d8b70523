"""The vector index: Qdrant (local mode in the data dir, or a server), with idempotent point ids."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from raylens.cluster.settings import Settings
from raylens.errors import IndexUnavailable, RaylensError, SettingsError

# Fixed namespace so a point id depends only on (content, model): retries and duplicate
# submissions overwrite the same point instead of adding one (invariant 3,
# docs/architecture.md).
POINT_NAMESPACE = uuid.UUID("6f1f4d0e-8a43-4f7b-9c1e-2b4c1d9a7e55")


def point_id(sha256: str, model_id: str, part: str = "image") -> str:
    """Deterministic Qdrant point id for one vector of one piece of content."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{sha256}:{model_id}:{part}"))


class VectorIndex:
    """A thin, batch-shaped wrapper over one Qdrant collection.

    In local mode exactly one process may open the folder, so the running system keeps a single
    named index actor around this class; with RAYLENS_QDRANT_URL every worker may hold its own.
    """

    def __init__(self, settings: Settings, dim: int | None = None) -> None:
        from qdrant_client import QdrantClient

        self.collection = settings.qdrant_collection
        self.faces_collection = settings.qdrant_faces_collection
        self.dim = dim
        try:
            if settings.qdrant_url:
                self.client = QdrantClient(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key,
                    # The client takes whole seconds; int() would make 0.5 s a 0 s timeout that
                    # fails every call. Round up: a timeout is never shorter than asked.
                    timeout=math.ceil(settings.qdrant_timeout_s),
                )
                self.where = settings.qdrant_url
            else:
                settings.qdrant_path.mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=str(settings.qdrant_path))
                self.where = str(settings.qdrant_path)
        except Exception as exc:  # e.g. the local folder is locked by another process
            where = settings.qdrant_url or settings.qdrant_path
            raise IndexUnavailable(f"cannot open Qdrant at {where}: {exc}") from exc
        self._ready: dict[str, int] = {}  # collection -> vector size, once checked or created
        if dim is not None:
            self._ensure_collection(dim)

    @property
    def ready(self) -> bool:
        return self.collection in self._ready

    def _distance(self, collection: str) -> Any:
        from qdrant_client import models

        # Face embeddings (dlib) are compared by Euclidean distance, image vectors by cosine.
        if collection == self.faces_collection:
            return models.Distance.EUCLID
        return models.Distance.COSINE

    def _ensure_collection(self, dim: int, collection: str | None = None) -> None:
        """Create the collection on first use (its size is the model's dimension)."""
        from qdrant_client import models

        collection = collection or self.collection
        if self._ready.get(collection) == dim:
            return
        if collection == self.collection:
            self.dim = dim
        try:
            if self.client.collection_exists(collection):
                info = self.client.get_collection(collection)
                size = info.config.params.vectors.size  # type: ignore[union-attr]
                if size != dim:
                    raise SettingsError(
                        f"Qdrant collection {collection!r} holds {size}-d vectors but the "
                        f"model makes {dim}-d ones; "
                        "set RAYLENS_QDRANT_COLLECTION (or _FACES_COLLECTION) to a new name"
                    )
            else:
                self.client.create_collection(
                    collection,
                    vectors_config=models.VectorParams(
                        size=dim, distance=self._distance(collection)
                    ),
                )
            self._ready[collection] = dim
        except RaylensError:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"Qdrant at {self.where}: {exc}") from exc

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
        collection: str | None = None,
    ) -> int:
        """Write a batch of points in one call; the same ids overwrite. Returns the batch size."""
        from qdrant_client import models

        if len(ids) == 0:
            return 0
        collection = collection or self.collection
        vectors = np.asarray(vectors, dtype=np.float32)
        self._ensure_collection(int(vectors.shape[1]), collection)
        try:
            self.client.upsert(
                collection,
                points=models.Batch(
                    ids=list(ids),
                    vectors=vectors.tolist(),
                    payloads=list(payloads),
                ),
                wait=True,
            )
        except Exception as exc:
            raise IndexUnavailable(f"upsert to Qdrant at {self.where} failed: {exc}") from exc
        return len(ids)

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        collection: str | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest points, best first: [{id, score, payload}]. score is the cosine similarity
        for images and the Euclidean distance (smaller is closer) for faces."""
        from qdrant_client import models

        collection = collection or self.collection
        if not self._exists(collection):
            return []
        query_filter = None
        if filters:
            query_filter = models.Filter(
                must=[
                    models.FieldCondition(key=k, match=models.MatchValue(value=v))
                    for k, v in filters.items()
                ]
            )
        try:
            res = self.client.query_points(
                collection,
                query=np.asarray(vector, dtype=np.float32).reshape(-1).tolist(),
                limit=top_k,
                query_filter=query_filter,
                with_payload=True,
            )
        except Exception as exc:
            raise IndexUnavailable(f"search in Qdrant at {self.where} failed: {exc}") from exc
        return [{"id": str(p.id), "score": p.score, "payload": p.payload or {}} for p in res.points]

    def _exists(self, collection: str | None = None) -> bool:
        collection = collection or self.collection
        try:
            return collection in self._ready or self.client.collection_exists(collection)
        except Exception as exc:
            raise IndexUnavailable(f"Qdrant at {self.where}: {exc}") from exc

    def count(self, collection: str | None = None) -> int:
        collection = collection or self.collection
        if not self._exists(collection):
            return 0
        return self.client.count(collection, exact=True).count

    def get(self, point_id: str, collection: str | None = None) -> dict[str, Any] | None:
        """One point with its vector and payload, or None (also for an id that is no UUID:
        raylens stores none, and a Qdrant server would answer it with a parse error)."""
        collection = collection or self.collection
        try:
            uuid.UUID(point_id)
        except (TypeError, ValueError, AttributeError):
            return None
        if not self._exists(collection):
            return None
        try:
            found = self.client.retrieve(
                collection, ids=[point_id], with_vectors=True, with_payload=True
            )
        except Exception as exc:
            raise IndexUnavailable(f"read from Qdrant at {self.where} failed: {exc}") from exc
        if not found:
            return None
        p = found[0]
        return {
            "id": str(p.id),
            "vector": np.asarray(p.vector, dtype=np.float32),
            "payload": p.payload or {},
        }

    def point_ids(self, limit: int = 1_000_000, collection: str | None = None) -> list[str]:
        """Every point id (tests and audits)."""
        collection = collection or self.collection
        ids: list[str] = []
        offset = None
        while self._exists(collection):
            points, offset = self.client.scroll(
                collection, limit=1000, offset=offset, with_payload=False
            )
            ids.extend(str(p.id) for p in points)
            if offset is None or len(ids) >= limit:
                break
        return ids

    def info(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "dim": self.dim,
            "where": self.where,
            "points": self.count(),
            "faces_collection": self.faces_collection,
            "faces": self.count(self.faces_collection),
            "at": time.time(),
        }

    def close(self) -> None:
        self.client.close()
