"""Request and response bodies of the HTTP API (they are its OpenAPI schema)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from raylens.cluster.hits import FILTER_FIELD, FILTER_FIELD_MAX
from raylens.cluster.jobs import Job, JobState, Lane, Pipeline, Transition
from raylens.errors import ErrorCode


class ErrorDetail(BaseModel):
    code: ErrorCode = Field(description="One code of the closed set shared with job errors.")
    message: str = Field(description="What went wrong and, where possible, how to fix it.")


class ErrorOut(BaseModel):
    """Every error answer: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


class SubmittedJob(BaseModel):
    id: str = Field(description="Job id; poll GET /v1/jobs/{id}.")
    name: str | None = Field(description="The uploaded file name, if the part had one.")
    sha256: str = Field(description="sha256 of the uploaded bytes.")
    state: JobState = Field(description="State when the answer was sent.")
    created: bool = Field(
        description="false when an existing job was returned (same content and pipeline, or a "
        "repeated Idempotency-Key)."
    )


class SubmitOut(BaseModel):
    jobs: list[SubmittedJob] = Field(description="One entry per uploaded file, in order.")
    idempotency_key: str | None = Field(default=None, description="The key sent, if any.")


class JobOut(BaseModel):
    id: str = Field(description="Job id.")
    state: JobState = Field(description="queued, running, done or failed.")
    lane: Lane = Field(description="Queue lane: interactive > normal > bulk.")
    pipeline: Pipeline = Field(
        description="What is computed: `embed` (OpenCLIP vector), `faces`, or `both`."
    )
    name: str | None = Field(description="Original file name, if known.")
    source_kind: str = Field(description="upload, path or uri.")
    sha256: str = Field(description="sha256 of the input bytes.")
    size_bytes: int = Field(description="Size of the input in bytes.")
    attempts: int = Field(
        description="Attempts the job has used: each lease counts one, except a lease that "
        "ended in an outage of the index or the job store (its attempt is given back). At "
        "RAYLENS_MAX_ATTEMPTS a retryable failure dead-letters the job."
    )
    created_at: float = Field(description="Unix time, seconds.")
    updated_at: float = Field(description="Unix time of the last transition, seconds.")
    timestamps: dict[str, float] = Field(description="Last time the job entered each state.")
    history: list[Transition] = Field(description="Every transition, oldest first.")
    error: ErrorDetail | None = Field(
        description="Set on failed jobs (and kept while a retried job is re-queued)."
    )
    result: dict[str, Any] | None = Field(
        description="Summary once done: model_id, dim, point_id, image width and height."
    )

    @classmethod
    def of(cls, job: Job, redact: Callable[[str], str] | None = None) -> JobOut:
        """The job as answered; redact (serve_app.redaction.Redactor) cleans its error message
        of credentials, tokens, stack traces and data dir paths."""
        error = None
        if job.error_code is not None:
            message = job.error_message or ""
            error = ErrorDetail(code=job.error_code, message=redact(message) if redact else message)
        return cls(
            id=job.id,
            state=job.state,
            lane=job.lane,
            pipeline=job.pipeline,
            name=job.name,
            source_kind=job.source_kind.value,
            sha256=job.sha256,
            size_bytes=job.size_bytes,
            attempts=job.attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            timestamps=job.timestamps(),
            history=job.history,
            error=error,
            result=job.result,
        )


class JobsPage(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class ImageOut(BaseModel):
    """One indexed image or video: what a delete of it would remove is its sha256's."""

    sha256: str = Field(description="sha256 of its bytes: DELETE /v1/images/{sha256} removes it.")
    job_id: str = Field(description="The done job that indexed it.")
    name: str | None = Field(description="Original file name, if known.")
    source_kind: str = Field(description="upload, path or uri.")
    source: str = Field(description="Payload key of an upload, or the file path.")
    pipeline: Pipeline = Field(description="What the job computed: embed, faces or both.")
    model_id: str | None = Field(description="The model that made its vectors.")
    media: str = Field(description="image or video.")
    point_id: str | None = Field(
        description="Its image point (null for a video, whose frames are points, or a "
        "faces-only job)."
    )
    faces: int | None = Field(description="Face points stored (null: faces not computed).")
    frames: int | None = Field(description="Video frames stored (null for an image).")
    size_bytes: int = Field(description="Size of its bytes.")
    created_at: float = Field(description="When its job was created, Unix time.")
    done_at: float | None = Field(description="When its vectors were stored, Unix time.")


class ImagesPage(BaseModel):
    images: list[ImageOut] = Field(description="Newest first; one entry per done job.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class DeletedJobs(BaseModel):
    removed: int = Field(description="Job records removed now (each leaves a tombstone).")
    ids: list[str] = Field(description="Their ids.")
    by_state: dict[str, int] = Field(
        description="How many of them were in each state when deleted (queued, running, done, "
        "failed)."
    )
    cancelled: int = Field(
        description="Of them, queued or running: a queued job never runs; a running one's "
        "result is thrown away when its worker answers, and its vectors removed again."
    )
    deleted_before: list[str] = Field(
        description="Job ids of this content deleted by an earlier call (a repeat)."
    )


class DeletedPoints(BaseModel):
    images: int = Field(description="Image points removed (every model's).")
    frames: int = Field(description="Video-frame points removed.")
    faces: int = Field(description="Face points removed (of the image and of video frames).")


class DeletedPayloads(BaseModel):
    removed: int = Field(description="Uploaded files removed (0 or 1 per content).")
    bytes: int = Field(description="Bytes they held.")


class DeleteOut(BaseModel):
    """What a delete removed. Safe to repeat: a repeat removes nothing more and says so. What
    remains: one tombstone per deleted job (job id, sha256, state when deleted, source kind,
    time, who asked); files ingested by path are never touched (raylens does not own them)."""

    sha256: list[str] = Field(description="The contents deleted.")
    found: bool = Field(
        description="false when raylens held nothing of them, now or before (no job, "
        "tombstone, point or payload)."
    )
    jobs: DeletedJobs
    points: DeletedPoints
    payloads: DeletedPayloads
    by: str = Field(description="Who asked, as recorded on the tombstones.")
    took_ms: float = Field(description="Time the delete took, milliseconds.")


def _integral(value: Any) -> Any:
    """JSON Schema counts 10.0 as an integer; strict pydantic would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


# Filters as the index takes them: a payload field, a dotted path of identifiers (the pattern
# cluster.hits.check_filters checks), and a string, a boolean or an integer that JSON carries
# exactly everywhere (|n| < 2**53).
FilterField = Annotated[str, StringConstraints(pattern=FILTER_FIELD, max_length=FILTER_FIELD_MAX)]
MAX_SAFE_INT = 2**53 - 1
SafeInt = Annotated[StrictInt, Field(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT), BeforeValidator(_integral)]
FilterValue = StrictBool | SafeInt | StrictStr
Filters = dict[FilterField, FilterValue]
# Vectors are float32: a larger value would turn infinite.
FLOAT32_MAX = 3.4028234663852886e38
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
# Strict (no "10" for 10, no false for 0.0) and finite: what the schema admits, nothing more.
STRICT_TYPES = ConfigDict(strict=True, allow_inf_nan=False)
STRICT = ConfigDict(extra="forbid", **STRICT_TYPES)


def _exact(schema: dict[str, Any]) -> None:
    """A field that is left out rather than null: no `default: null` in the schema."""
    schema.pop("default", None)


def _exact_filters(schema: dict[str, Any]) -> None:
    """Field names are checked, so the schema names them with propertyNames (pydantic's
    patternProperties would let other names through)."""
    _exact(schema)
    schema.pop("propertyNames", None)
    ((_, values),) = schema.pop("patternProperties").items()
    # One list of types rather than anyOf (minimum and maximum bind only the integers).
    scalar = {"type": [v["type"] for v in values["anyOf"]]}
    for v in values["anyOf"]:
        scalar.update({k: x for k, x in v.items() if k != "type"})
    names = {"pattern": FILTER_FIELD, "maxLength": FILTER_FIELD_MAX}
    schema.update(propertyNames=names, additionalProperties=scalar)


# Texts of query and header parameters; their bounds sit in the type, not on `T | None`, where
# pydantic could not apply them.
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Text64 = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("null is not a value here; leave the field out instead")
    return value


class SearchRequest(BaseModel):
    """A JSON query: exactly one of `text` or `vector` (upload an image with multipart instead)."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["vector"]}]},
    )

    text: Annotated[str, Field(min_length=1, max_length=10_000)] | SkipJsonSchema[None] = Field(
        default=None, description="Text query.", json_schema_extra=_exact
    )
    vector: Annotated[list[Float32], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        default=None,
        description="A query vector of the active model's dimension (GET /v1/model; a vector "
        "of another length answers 422).",
        json_schema_extra=_exact,
    )
    top_k: JsonInt = Field(
        default=10, ge=1, description="Number of hits (max: RAYLENS_SEARCH_MAX_TOP_K)."
    )
    filters: Filters | SkipJsonSchema[None] = Field(
        default=None,
        description='Exact-match filters on hit payload fields, e.g. {"source_kind": "upload"}.',
        json_schema_extra=_exact_filters,
    )

    _no_nulls = field_validator("text", "vector", "filters", mode="before")(_not_null)

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.vector is None):
            raise ValueError(
                "give exactly one of text or vector (or upload an image as multipart/form-data)"
            )
        return self


class Hit(BaseModel):
    id: str = Field(description="Qdrant point id.")
    score: float = Field(description="Cosine similarity, higher is closer.")
    job_id: str | None = Field(description="The job that stored this vector.")
    source: str | None = Field(description="Payload key of an upload, or the file path.")
    name: str | None = Field(description="Original file name, if known.")
    sha256: str | None = Field(description="sha256 of the input bytes.")
    video_id: str | None = Field(default=None, description="Job id of the video, for a frame.")
    timestamp_s: float | None = Field(
        default=None, description="Time of the frame in its video, seconds."
    )
    payload: dict[str, Any] = Field(description="Everything stored with the vector.")


class SearchOut(BaseModel):
    hits: list[Hit] = Field(description="Best first.")
    took_ms: float = Field(description="Time to embed the query and search, in milliseconds.")


class HealthOut(BaseModel):
    status: str = Field(default="ok", description="Always `ok` when the ingress answers.")


class ReadyOut(BaseModel):
    ready: bool = Field(description="true when the queue answers and a worker has its model.")
    queue: str = Field(description="`ok`, or why the queue did not answer.")
    workers: list[dict[str, Any]] = Field(description="Each worker's loaded-model report.")


class FaceSearchRequest(BaseModel):
    """Search by a stored face (JSON); upload an image with multipart instead."""

    model_config = STRICT

    face_id: str = Field(max_length=64, description="Point id of a stored face.")
    top_k: JsonInt = Field(default=10, ge=1, description="Number of hits at most.")
    max_distance: Annotated[float, Field(gt=0)] | SkipJsonSchema[None] = Field(
        default=None, description="Default: RAYLENS_FACE_MATCH_THRESHOLD.", json_schema_extra=_exact
    )

    _no_nulls = field_validator("max_distance", mode="before")(_not_null)


class FaceHit(BaseModel):
    id: str = Field(description="Point id of the face.")
    distance: float = Field(description="Euclidean distance; under 0.6 usually the same person.")
    job_id: str | None = Field(description="The job of the parent image or video.")
    source: str | None = Field(description="Payload key of an upload, or the file path.")
    name: str | None = Field(description="Original file name of the parent, if known.")
    sha256: str | None = Field(description="sha256 of the parent image or video.")
    face_index: int | None = Field(description="Index of the face in its image, largest first.")
    box: list[float] | None = Field(description="x0, y0, x1, y1 in original image pixels.")
    parent_point_id: str | None = Field(description="Point id of the parent image vector.")
    video_id: str | None = Field(description="Job id of the video, for a frame.")
    timestamp_s: float | None = Field(description="Time of the frame in its video, seconds.")
    payload: dict[str, Any] = Field(description="Everything stored with the face.")


class FaceSearchOut(BaseModel):
    query: dict[str, Any] = Field(description="The face searched for (box, face_index or id).")
    max_distance: float = Field(description="Hits are within this distance.")
    hits: list[FaceHit] = Field(description="Closest first.")
    took_ms: float = Field(description="Time to find the query face and search, milliseconds.")


class EarlierModel(BaseModel):
    model_id: str = Field(description="Model id of an earlier active model.")
    collection: str = Field(description="Image collection holding its vectors (kept).")
    until: float = Field(description="Unix time it stopped being the active model.")


class ModelOut(BaseModel):
    model_id: str = Field(
        description="Model id of the active model: every new image and query is embedded "
        "with it, and every hit's payload names it."
    )
    clip_model: str = Field(description="Its OpenCLIP architecture.")
    clip_pretrained: str = Field(description="Its pretrained tag or checkpoint.")
    collection: str = Field(description="The image collection searches use.")
    switched_at: float | None = Field(
        description="Unix time `raylens reindex` switched to it; null: the settings' model, "
        "never switched."
    )
    previous: list[EarlierModel] = Field(
        description="Earlier active models, newest first (their collections stay; while "
        "workers roll over, a query embedded by one is searched in its collection)."
    )
