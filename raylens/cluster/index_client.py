"""The VectorIndex backend on qdrant-client: a Qdrant server (RAYLENS_QDRANT_URL).

The same class runs on any QdrantClient; the contract tests give it the client's own local
mode, which answers the same requests in-process, because no Qdrant server can run there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class ClientBackend:
    def __init__(self, client: Any, where: str) -> None:
        self.client = client
        self.where = where

    def collection_size(self, name: str) -> int | None:
        if not self.client.collection_exists(name):
            return None
        info = self.client.get_collection(name)
        return int(info.config.params.vectors.size)

    def create(self, name: str, dim: int, distance: str) -> None:
        from qdrant_client import models

        metric = models.Distance.EUCLID if distance == "euclid" else models.Distance.COSINE
        self.client.create_collection(
            name, vectors_config=models.VectorParams(size=dim, distance=metric)
        )
        for field in ("sha256", "job_id"):  # what deletes and per-image lookups filter on
            self.client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        from qdrant_client import models

        self.client.upsert(
            name,
            points=models.Batch(ids=list(ids), vectors=vectors.tolist(), payloads=list(payloads)),
            wait=True,
        )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids and self.client.collection_exists(name):
            self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)))

    def count_where(self, name: str, filters: dict[str, Any]) -> int:
        if not self.client.collection_exists(name):
            return 0
        return int(self.client.count(name, count_filter=_filter(filters), exact=True).count)

    def delete_where(self, name: str, filters: dict[str, Any]) -> None:
        from qdrant_client import models

        if self.client.collection_exists(name):
            self.client.delete(
                name, points_selector=models.FilterSelector(filter=_filter(filters)), wait=True
            )

    def search(
        self, name: str, vector: np.ndarray, top_k: int, filters: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        if not self.client.collection_exists(name):
            return []
        query_filter = _filter(filters) if filters else None
        res = self.client.query_points(
            name,
            query=vector.tolist(),
            limit=top_k,
            query_filter=query_filter,
            with_payload=True,
        )
        return [{"id": str(p.id), "score": p.score, "payload": p.payload or {}} for p in res.points]

    def count(self, name: str) -> int:
        if not self.client.collection_exists(name):
            return 0
        return int(self.client.count(name, exact=True).count)

    def retrieve(self, name: str, point_id: str) -> dict[str, Any] | None:
        if not self.client.collection_exists(name):
            return None
        found = self.client.retrieve(name, ids=[point_id], with_vectors=True, with_payload=True)
        if not found:
            return None
        p = found[0]
        return {
            "id": str(p.id),
            "vector": np.asarray(p.vector, dtype=np.float32),
            "payload": p.payload or {},
        }

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        """Which of these point ids the collection holds (one call, no vectors)."""
        if not ids or not self.client.collection_exists(name):
            return []
        found = self.client.retrieve(name, ids=list(ids), with_vectors=False, with_payload=False)
        return [str(p.id) for p in found]

    def point_alias(self, alias: str, name: str) -> bool:
        """Point `alias` at collection `name`, in one request (Qdrant applies the delete and
        the create of one request atomically, so a reader of the alias never finds none)."""
        from qdrant_client import models

        ops: list[Any] = []
        if any(a.alias_name == alias for a in self.client.get_aliases().aliases):
            ops.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)
        return True

    def alias_target(self, alias: str) -> str | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return str(a.collection_name)
        return None

    def sample_payload(self, name: str) -> dict[str, Any] | None:
        """The payload of one point of the collection (None when it holds none)."""
        if not self.client.collection_exists(name):
            return None
        points, _ = self.client.scroll(name, limit=1, with_payload=True, with_vectors=False)
        return dict(points[0].payload or {}) if points else None

    def point_ids(self, name: str, limit: int) -> list[str]:
        ids: list[str] = []
        offset = None
        while self.client.collection_exists(name) and len(ids) < limit:
            points, offset = self.client.scroll(name, limit=1000, offset=offset, with_payload=False)
            ids.extend(str(p.id) for p in points)
            if offset is None:
                break
        return ids[:limit]

    def maintain(self) -> None:
        """A server indexes by itself."""

    def building(self) -> bool:
        return False

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.client.close()


def _filter(filters: dict[str, Any]) -> Any:
    """Every condition must hold; a list value matches any of its values."""
    from qdrant_client import models

    return models.Filter(
        must=[
            models.FieldCondition(
                key=k,
                match=models.MatchAny(any=list(v))
                if isinstance(v, list)
                else models.MatchValue(value=v),
            )
            for k, v in filters.items()
        ]
    )
