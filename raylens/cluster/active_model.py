"""The active model: which OpenCLIP weights embed new images and queries, and their collection.

Until `raylens reindex` switches it, the active model is the one the settings name
(RAYLENS_CLIP_MODEL, _CLIP_PRETRAINED, _CLIP_MODEL_CONFIG) and its vectors live in
RAYLENS_QDRANT_COLLECTION. A switch writes one record to the job store (the source of truth,
invariant 2), key "active_model": the new weights, their model id, the new collection (named
after the model id) and the collections of earlier models, which keep answering queries that
a worker of that earlier model embedded while the workers roll over. Every process that needs
it (queue, supervisor, ingress, CLI) reads the record, so a restart keeps the switch.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from raylens.cluster.settings import Settings
from raylens.models.model_id import model_id_for

META_KEY = "active_model"
MAX_COLLECTION_NAME = 128  # the embedded engine's limit on a collection (folder) name
KEEP_PREVIOUS = 4  # earlier models whose collections stay routable


@dataclass(frozen=True)
class ActiveModel:
    clip_model: str
    clip_pretrained: str
    clip_model_config: str | None
    model_id: str
    collection: str
    switched_at: float | None = None  # None: never switched, straight from the settings
    # Earlier models, newest first: [{"model_id", "collection", "until"}] (until = switch time).
    previous: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "previous": list(self.previous)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ActiveModel:
        data = json.loads(text)
        data["previous"] = tuple(data.get("previous") or ())
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "previous": list(self.previous)}

    def routes(self) -> dict[str, str]:
        """model id -> the image collection of that model's vectors (active one first)."""
        out = {self.model_id: self.collection}
        for p in self.previous:
            out.setdefault(p["model_id"], p["collection"])
        return out

    def collections(self) -> list[str]:
        """Every image collection raylens may hold points in (a delete visits each)."""
        return list(dict.fromkeys(self.routes().values()))

    def switched_to(self, new: ActiveModel, at: float | None = None) -> ActiveModel:
        """`new` as the active model, this one (and its own earlier ones) as previous."""
        at = time.time() if at is None else at
        earlier = [{"model_id": self.model_id, "collection": self.collection, "until": at}]
        earlier += [p for p in self.previous if p["model_id"] != new.model_id]
        earlier = [p for p in earlier if p["model_id"] != new.model_id][:KEEP_PREVIOUS]
        return replace(new, switched_at=at, previous=tuple(earlier))


def from_settings(settings: Settings) -> ActiveModel:
    """The active model of a store that has never been switched: the settings' own."""
    return ActiveModel(
        clip_model=settings.clip_model,
        clip_pretrained=settings.clip_pretrained,
        clip_model_config=str(settings.clip_model_config) if settings.clip_model_config else None,
        model_id=model_id_for(settings.clip_model, settings.clip_pretrained),
        collection=settings.qdrant_collection,
    )


def target(
    settings: Settings, model: str, pretrained: str, model_config: str | None = None
) -> ActiveModel:
    """The record of a model to re-embed into: its collection is named after its model id."""
    mid = model_id_for(model, pretrained)
    return ActiveModel(model, pretrained, model_config, mid, collection_for(settings, mid))


def collection_for(settings: Settings, model_id: str) -> str:
    """`{RAYLENS_QDRANT_COLLECTION}--{model id}` with characters a collection name may not hold
    replaced by '_' (shortened with a digest of the id when too long)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
    name = f"{settings.qdrant_collection}--{slug}"
    if len(name) > MAX_COLLECTION_NAME:
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        name = f"{name[: MAX_COLLECTION_NAME - 14]}--{digest}"
    return name


def alias_for(settings: Settings) -> str:
    """The Qdrant alias a switch points at the active image collection (on a server)."""
    return f"{settings.qdrant_collection}-active"


def apply(settings: Settings, active: ActiveModel) -> Settings:
    """The settings with the active model's weights and collection in place of their own."""
    from pathlib import Path

    return settings.model_copy(
        update={
            "clip_model": active.clip_model,
            "clip_pretrained": active.clip_pretrained,
            "clip_model_config": Path(active.clip_model_config)
            if active.clip_model_config
            else None,
            "qdrant_collection": active.collection,
        }
    )


def differs_from_settings(settings: Settings, active: ActiveModel) -> str | None:
    """A line for the log when a switch overrides what the settings name; None if they agree."""
    mine = model_id_for(settings.clip_model, settings.clip_pretrained)
    if active.switched_at is None or mine == active.model_id:
        return None
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(active.switched_at))
    return (
        f"the active model is {active.model_id} (collection {active.collection!r}), switched "
        f"by `raylens reindex` at {at} UTC; the settings' {mine} is not used. Run "
        "`raylens reindex` to change models"
    )
