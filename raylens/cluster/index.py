"""The vector index: Qdrant (local mode in the data dir, or a server), with idempotent point ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from raylens.cluster.settings import Settings
from raylens.errors import IndexUnavailable, RaylensError, SettingsError

# Fixed namespace so a point id depends only on (content, model): retries and duplicate
# submissions overwrite the same point instead of adding one (invariant 3).
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
        self.dim = dim
        try:
            if settings.qdrant_url:
                self.client = QdrantClient(
                    url=settings.qdrant_url,
                    api_key=settings.qdrant_api_key,
                    timeout=int(settings.qdrant_timeout_s),
                )
                self.where = settings.qdrant_url
            else:
                settings.qdrant_path.mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=str(settings.qdrant_path))
                self.where = str(settings.qdrant_path)
        except Exception as exc:  # e.g. the local folder is locked by another process
            where = settings.qdrant_url or settings.qdrant_path
            raise IndexUnavailable(f"cannot open Qdrant at {where}: {exc}") from exc
        self.ready = False
        if dim is not None:
            self._ensure_collection(dim)

    def _ensure_collection(self, dim: int) -> None:
        """Create the collection on first use (its size is the model's dimension)."""
        from qdrant_client import models

        if self.ready and dim == self.dim:
            return
        self.dim = dim
        try:
            if self.client.collection_exists(self.collection):
                info = self.client.get_collection(self.collection)
                size = info.config.params.vectors.size  # type: ignore[union-attr]
                if size != self.dim:
                    raise SettingsError(
                        f"Qdrant collection {self.collection!r} holds {size}-d vectors but the "
                        f"model makes {self.dim}-d ones; "
                        "set RAYLENS_QDRANT_COLLECTION to a new name"
                    )
            else:
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(
                        size=self.dim, distance=models.Distance.COSINE
                    ),
                )
            self.ready = True
        except RaylensError:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"Qdrant at {self.where}: {exc}") from exc

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> int:
        """Write a batch of points in one call; the same ids overwrite. Returns the batch size."""
        from qdrant_client import models

        if len(ids) == 0:
            return 0
        vectors = np.asarray(vectors, dtype=np.float32)
        self._ensure_collection(int(vectors.shape[1]))
        try:
            self.client.upsert(
                self.collection,
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
        self, vector: np.ndarray, top_k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Nearest points by cosine similarity, best first: [{id, score, payload}]."""
        from qdrant_client import models

        if not self._exists():
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
                self.collection,
                query=np.asarray(vector, dtype=np.float32).reshape(-1).tolist(),
                limit=top_k,
                query_filter=query_filter,
                with_payload=True,
            )
        except Exception as exc:
            raise IndexUnavailable(f"search in Qdrant at {self.where} failed: {exc}") from exc
        return [{"id": str(p.id), "score": p.score, "payload": p.payload or {}} for p in res.points]

    def _exists(self) -> bool:
        try:
            return self.ready or self.client.collection_exists(self.collection)
        except Exception as exc:
            raise IndexUnavailable(f"Qdrant at {self.where}: {exc}") from exc

    def count(self) -> int:
        if not self._exists():
            return 0
        return self.client.count(self.collection, exact=True).count

    def point_ids(self, limit: int = 1_000_000) -> list[str]:
        """Every point id (tests and audits)."""
        ids: list[str] = []
        offset = None
        while self._exists():
            points, offset = self.client.scroll(
                self.collection, limit=1000, offset=offset, with_payload=False
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
            "at": time.time(),
        }

    def close(self) -> None:
        self.client.close()
