"""Search rules without Ray: query checks (one query kind, top_k, filters) and the hit shapes."""

from __future__ import annotations

import re
from typing import Any

from raylens.errors import InvalidRequest

# Payload fields a search may filter on: plain names (what the workers write), scalar values.
# A payload field or a dotted path of identifiers, as the index takes it ("a." or "a..b" is no
# path); the HTTP schema declares the same (serve_app/schemas.FilterField).
FILTER_FIELD = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
FILTER_FIELD_MAX = 64
FILTER_KEY = re.compile(FILTER_FIELD)


def check_one_query(text: Any, image: Any, vector: Any) -> None:
    """A search has exactly one of text, image or vector (an empty one counts as not given)."""
    given = [name for name, v in (("text", text), ("image", image), ("vector", vector)) if v]
    if len(given) != 1:
        raise InvalidRequest(
            "give exactly one of text, image or vector"
            + (f" (got {', '.join(given)})" if given else "")
        )


def check_top_k(top_k: int, max_top_k: int) -> None:
    """top_k is 1..max_top_k (RAYLENS_SEARCH_MAX_TOP_K), for image and face searches alike."""
    if not 1 <= top_k <= max_top_k:
        raise InvalidRequest(
            f"top_k must be 1..{max_top_k} (RAYLENS_SEARCH_MAX_TOP_K), got {top_k}"
        )


def check_sha256(value: str) -> str:
    """A sha256 hex digest (64 hex digits, either case), lower-cased."""
    sha = str(value).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InvalidRequest(f"not a sha256 hex digest (64 hex digits): {str(value)[:80]!r}")
    return sha


def check_filters(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Filters are {payload field: exact value}; values must be scalars."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise InvalidRequest("filters must be an object of {payload field: value}")
    for key, value in filters.items():
        if not isinstance(key, str) or len(key) > FILTER_FIELD_MAX or not FILTER_KEY.fullmatch(key):
            raise InvalidRequest(f"filter field {key!r} is not a payload field name")
        if not isinstance(value, (str, int, bool)):
            raise InvalidRequest(
                f"filter {key!r}: value must be a string, integer or boolean, got "
                f"{type(value).__name__}"
            )
    return filters


def hit_out(hit: dict[str, Any]) -> dict[str, Any]:
    """An image hit as searches answer it: score, the payload's main fields, the payload."""
    payload = hit.get("payload") or {}
    return {
        "id": hit["id"],
        "score": float(hit["score"]),
        "job_id": payload.get("job_id"),
        "source": payload.get("source"),
        "name": payload.get("name"),
        "sha256": payload.get("sha256"),
        "video_id": payload.get("video_id"),
        "timestamp_s": payload.get("timestamp_s"),
        "payload": payload,
    }


def face_hit(hit: dict[str, Any]) -> dict[str, Any]:
    """A face hit: the index's score is a distance here (smaller is closer)."""
    payload = hit.get("payload") or {}
    return {
        "id": hit["id"],
        "distance": round(float(hit["score"]), 5),
        "job_id": payload.get("job_id"),
        "source": payload.get("source"),
        "name": payload.get("name"),
        "sha256": payload.get("sha256"),
        "face_index": payload.get("face_index"),
        "box": payload.get("box"),
        "parent_point_id": payload.get("parent_point_id"),
        "video_id": payload.get("video_id"),
        "timestamp_s": payload.get("timestamp_s"),
        "payload": payload,
    }


def face_matches(hits: list[dict[str, Any]], max_distance: float) -> list[dict[str, Any]]:
    """The face hits within max_distance, in the index's order (closest first)."""
    return [face_hit(h) for h in hits if float(h["score"]) <= max_distance]
