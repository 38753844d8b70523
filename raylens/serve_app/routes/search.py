"""Search routes: by text, vector or image (/v1/search), by face (/v1/faces/search), and the
active model they use (/v1/model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from raylens.actors.api import ClusterAPI
from raylens.cluster.settings import Settings
from raylens.serve_app.openapi import (
    ERRORS,
    MODEL_MISMATCH,
    NO_FACE,
    NOT_FOUND,
    UPLOAD_ERRORS,
    face_search_body,
    search_body,
)
from raylens.serve_app.schemas import (
    FaceSearchOut,
    FaceSearchRequest,
    ModelOut,
    SearchOut,
    SearchRequest,
)
from raylens.serve_app.uploads import is_multipart, read_image_query, read_json


def router(api: ClusterAPI, settings: Settings, auth: Sequence[Any]) -> APIRouter:
    """/v1/search and /v1/faces/search, behind `auth`; JSON or a multipart image each."""
    routes = APIRouter(tags=["search"], dependencies=auth)

    @routes.post(
        "/v1/search",
        response_model=SearchOut,
        responses={**UPLOAD_ERRORS, **MODEL_MISMATCH},
        openapi_extra={"requestBody": search_body(settings.search_max_top_k)},
        summary="Search by text, vector (JSON) or an uploaded image (multipart)",
    )
    async def search(request: Request) -> SearchOut:
        """The query is embedded on a worker beside its batch loop, so it never waits behind
        the job backlog. Hits are best first."""
        if is_multipart(request):
            q = await read_image_query(request, settings.max_input_bytes, ("top_k", "filters"))
            out = await api.search(image=q.image, top_k=q.top_k, filters=q.filters)
        else:
            body = await read_json(request, SearchRequest)
            out = await api.search(
                text=body.text, vector=body.vector, top_k=body.top_k, filters=body.filters
            )
        return SearchOut.model_validate(out)

    @routes.post(
        "/v1/faces/search",
        response_model=FaceSearchOut,
        responses={**UPLOAD_ERRORS, **NOT_FOUND, **MODEL_MISMATCH, **NO_FACE},
        openapi_extra={
            "requestBody": face_search_body(settings.search_max_top_k, settings.face_max_faces)
        },
        summary="Find faces like the largest (or face_index) face of an image, or a stored face",
    )
    async def search_faces(request: Request) -> FaceSearchOut:
        """Hits are stored faces within max_distance (RAYLENS_FACE_MATCH_THRESHOLD), closest
        first, with their parent image or video frame. 422 when the image has no face."""
        if is_multipart(request):
            fields = ("face_index", "top_k", "max_distance")
            q = await read_image_query(request, settings.max_input_bytes, fields)
            out = await api.search_faces(
                image=q.image, face_index=q.face_index, top_k=q.top_k, max_distance=q.max_distance
            )
        else:
            body = await read_json(request, FaceSearchRequest)
            out = await api.search_faces(
                face_id=body.face_id, top_k=body.top_k, max_distance=body.max_distance
            )
        return FaceSearchOut.model_validate(out)

    @routes.get(
        "/v1/model",
        response_model=ModelOut,
        responses=ERRORS,
        summary="The active model: what embeds new images and queries, and its collection",
    )
    async def active_model() -> ModelOut:
        """Changed only by `raylens reindex` (re-embed everything, then switch in one step)."""
        record = (await api.active_model(refresh=True)).to_dict()
        record.pop("clip_model_config", None)  # a path on the cluster, not the client's business
        return ModelOut.model_validate(record)

    return routes
