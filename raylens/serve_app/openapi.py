"""OpenAPI text the route signatures cannot give: description, tags, error answers, bodies."""

from __future__ import annotations

from typing import Any

from raylens.cluster.jobs import Lane, Pipeline
from raylens.media.formats import ACCEPTED
from raylens.serve_app.schemas import ErrorOut, FaceSearchRequest, SearchRequest

DESCRIPTION = """
Images in, searchable OpenCLIP vectors out. Upload images as jobs, follow them, search by text,
image or vector.

**Errors** are always JSON `{"error": {"code": ..., "message": ...}}` with a code from one closed
set (the same codes failed jobs carry): 401 `unauthorized`, 403 `unauthorized` (a cross-origin
browser request), 404 `not_found`, 409 `invalid_transition`, 413 `too_large` (upload cap,
checked while the body streams in), 415 `unsupported_format` (content is sniffed, file names
are ignored), 421 `invalid_request` (a Host this ingress does not answer), 422
`invalid_request`, `idempotency_conflict`, `empty_input`, ..., 429 `queue_full`, 503
`store_unavailable` and 503 `overloaded` (more than `RAYLENS_HTTP_MAX_ONGOING_REQUESTS` in
flight in a replica), all three with `Retry-After`. Behind that, Serve itself answers 503
(without Retry-After) when its own queue (`RAYLENS_HTTP_MAX_QUEUED_REQUESTS`) is full, and 408
after `RAYLENS_HTTP_REQUEST_TIMEOUT_S`. Messages never carry credentials, tokens, stack traces
or data dir paths (they are redacted; the server log keeps the full text). An unexpected error
answers 500 `internal` with a generic message naming a request id (also in the `X-Request-ID`
header; a plain one the client sent is reused), under which the server log has the exception.
A request the HTTP server cannot parse (a URL or headers over its limits) gets a plain-text 400.

**This document is exact**: every bound, pattern and type a handler checks is declared here, so
a request it admits is taken. What no schema can say is named where it applies: a file's
content decides its format (415 otherwise), a query vector has the active model's length, a
query image for a face search holds a face (and at least face_index + 1 of them), an
Idempotency-Key is reused only for the same files, and a `callback_url` must resolve to a
public host. An empty form field or parameter is not an absent one (422).

**Auth**: when `RAYLENS_API_KEYS` is set, every route except `/v1/healthz` needs
`Authorization: Bearer <key>`. Ray's own token auth protects the dashboard and `ray job submit`.

**Host and Origin** (with or without keys; not on `/v1/healthz`): a Host header other than the
bind address (`RAYLENS_HTTP_HOST`: 127.0.0.1 answers localhost, 127.0.0.1 and [::1]; 0.0.0.0
answers any host) or `RAYLENS_HTTP_ALLOWED_HOSTS` is answered 421; a browser's Origin header
other than the ingress's own or one in `RAYLENS_HTTP_ALLOWED_ORIGINS` is answered 403. Requests
without an Origin header (curl, scripts, the Python client) are unaffected.
"""

TAGS = [
    {"name": "jobs", "description": "Upload images and follow their jobs."},
    {"name": "search", "description": "Search stored vectors."},
    {"name": "events", "description": "Follow job state transitions as they happen (SSE)."},
    {"name": "health", "description": "Liveness and readiness."},
]

Responses = dict[int | str, dict[str, Any]]

# Answered by the HTTP server (uvicorn) before the app: a request it cannot parse, such as a
# request line or headers over its limits. Plain text, not the JSON error shape.
MALFORMED: Responses = {
    400: {
        "description": "Not a well-formed HTTP request (e.g. a URL or headers too long), "
        "answered by the HTTP server itself in plain text.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
# Answered by the Host/Origin guard on every route except /v1/healthz.
GUARD_ERRORS: Responses = {
    **MALFORMED,
    403: {
        "model": ErrorOut,
        "description": "Cross-origin browser request: an Origin header that is neither the "
        "ingress's own nor in RAYLENS_HTTP_ALLOWED_ORIGINS (`unauthorized`).",
    },
    421: {
        "model": ErrorOut,
        "description": "A Host header that is not the bind address and not in "
        "RAYLENS_HTTP_ALLOWED_HOSTS (`invalid_request`; DNS rebinding).",
    },
}
ERRORS: Responses = {
    **GUARD_ERRORS,
    401: {"model": ErrorOut, "description": "Missing or wrong API key (`unauthorized`)."},
    422: {"model": ErrorOut, "description": "Bad parameters (`invalid_request`)."},
    503: {
        "model": ErrorOut,
        "description": "Queue, store or workers unavailable (`store_unavailable`); see "
        "Retry-After.",
    },
}
UPLOAD_ERRORS: Responses = {
    **ERRORS,
    413: {
        "model": ErrorOut,
        "description": "Over RAYLENS_MAX_UPLOAD_BYTES or a file over "
        "RAYLENS_MAX_INPUT_BYTES (`too_large`).",
    },
    415: {
        "model": ErrorOut,
        "description": "A file is not a supported image (`unsupported_format`).",
    },
    422: {
        "model": ErrorOut,
        "description": "Bad parameters, an empty file (`empty_input`) or "
        "an Idempotency-Key used for other content (`idempotency_conflict`).",
    },
    429: {
        "model": ErrorOut,
        "description": "Queue full (`queue_full`); retry after Retry-After "
        "seconds with the same Idempotency-Key.",
    },
}
NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "No such job (`not_found`)."}}
NO_FACE: Responses = {
    404: {"model": ErrorOut, "description": "No stored face with that face_id (`not_found`)."},
    422: {
        "model": ErrorOut,
        "description": "Bad parameters, an empty image (`invalid_request`, `empty_input`), a "
        "query image without a face, or with fewer faces than face_index.",
    },
}
MODEL_MISMATCH: Responses = {
    409: {
        "model": ErrorOut,
        "description": "The collection holds vectors of another model than the query's "
        "(`settings_invalid`): vectors of two models are never compared.",
    }
}
NOT_DELETABLE: Responses = {
    404: {
        "model": ErrorOut,
        "description": "No such job, nor a deleted one; for a sha256, nothing raylens holds "
        "or held of that content (`not_found`).",
    }
}
NOT_FAILED: Responses = {
    409: {"model": ErrorOut, "description": "Not failed (`invalid_transition`)."}
}

# What an uploaded part may hold, as media types (media.formats sniffs the content itself).
IMAGE_TYPES = [f"image/{f}" for f in ACCEPTED]
VIDEO_TYPES = ["video/mp4", "video/quicktime", "video/webm", "video/x-matroska"]


def file_part(name: str, media_types: list[str]) -> dict[str, Any]:
    """The encoding of a file part: its media types, and a Content-Disposition that names a
    file (a part without a filename is a text field, not a file)."""
    return {
        "contentType": ", ".join(media_types),
        "headers": {
            "Content-Disposition": {
                "required": True,
                "description": "A file part names a filename (any name: the content decides "
                "the format).",
                "schema": {
                    "type": "string",
                    "example": f'form-data; name="{name}"; filename="photo.jpg"',
                },
            }
        },
    }


# The upload and query routes read their bodies as streams (to cap them while they arrive), so
# FastAPI cannot infer these request bodies from a signature; they are written out here.
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "encoding": {"files": file_part("files", IMAGE_TYPES + VIDEO_TYPES)},
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary", "minLength": 1},
                        "description": "One or more images (jpeg, png, gif, webp, bmp, "
                        "tiff) or videos (mp4, mov, webm, mkv). The content decides the format "
                        "(the part's content type and file name are ignored): other bytes "
                        "answer 415, an empty file 422.",
                    },
                    "priority": {
                        "type": "string",
                        "enum": [lane.value for lane in Lane],
                        "default": "normal",
                        "description": "Queue lane.",
                    },
                    "pipeline": {
                        "type": "string",
                        "enum": [p.value for p in Pipeline],
                        "default": "both",
                        "description": "embed (OpenCLIP vector), faces, or both.",
                    },
                },
            },
        }
    },
}


CALLBACK_URL = {
    "type": "string",
    "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s]+([/?#]\S*)?$",
    "maxLength": 2048,
    "description": "http(s) URL POSTed (signed: Raylens-Signature) when each job this request "
    "creates ends. Loopback, link-local and private hosts, and hosts that do not resolve, are "
    "refused (422) unless RAYLENS_WEBHOOK_ALLOW_PRIVATE. Deliveries: "
    "GET /v1/jobs/{id}/deliveries. Offered only when the server has RAYLENS_WEBHOOK_SECRET "
    "(without it a callback_url answers 422).",
}


def upload_body(webhooks: bool) -> dict[str, Any]:
    """The upload body; with webhooks on (RAYLENS_WEBHOOK_SECRET set) it offers callback_url."""
    if not webhooks:
        return UPLOAD_BODY
    form = UPLOAD_BODY["content"]["multipart/form-data"]
    schema = form["schema"]
    properties = {**schema["properties"], "callback_url": CALLBACK_URL}
    return {
        **UPLOAD_BODY,
        "content": {
            "multipart/form-data": {**form, "schema": {**schema, "properties": properties}}
        },
    }


def query_body(
    json_model: Any, fields: dict[str, Any], max_top_k: int, image_note: str = ""
) -> dict[str, Any]:
    """OpenAPI request body of a query route: a JSON model, or multipart with an image. top_k
    carries its bounds in both (1..RAYLENS_SEARCH_MAX_TOP_K of this ingress), so a request the
    schema admits is one the handler takes."""
    image = {
        "type": "string",
        "format": "binary",
        "minLength": 1,
        "description": "Query image (jpeg, png, gif, webp, bmp or tiff; the content decides, "
        "other bytes answer 415)." + image_note,
    }
    top_k = {
        "type": "integer",
        "minimum": 1,
        "maximum": max_top_k,
        "default": 10,
        "description": f"Number of hits at most (1..{max_top_k}, RAYLENS_SEARCH_MAX_TOP_K).",
    }
    json_schema = json_model.model_json_schema()
    json_schema["properties"]["top_k"] = {**json_schema["properties"]["top_k"], **top_k}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": json_schema},
            "multipart/form-data": {
                "encoding": {"image": file_part("image", IMAGE_TYPES)},
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": image, "top_k": top_k, **fields},
                },
            },
        },
    }


def search_body(max_top_k: int) -> dict[str, Any]:
    filters = SearchRequest.model_json_schema()["properties"]["filters"]
    filters = {**filters, "description": "JSON object of filters (as in the JSON body)."}
    return query_body(SearchRequest, {"filters": filters}, max_top_k)


def face_search_body(max_top_k: int, max_faces: int) -> dict[str, Any]:
    return query_body(
        FaceSearchRequest,
        {
            "face_index": {
                "type": "integer",
                "minimum": 0,
                "maximum": max_faces - 1,
                "description": "Which face of the image (largest first); default 0. At most "
                f"{max_faces} faces are kept (RAYLENS_FACE_MAX_FACES); 422 when the image has "
                "fewer faces.",
            },
            "max_distance": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Default: the match threshold (RAYLENS_FACE_MATCH_THRESHOLD).",
            },
        },
        max_top_k,
        " 422 when it holds no face.",
    )
