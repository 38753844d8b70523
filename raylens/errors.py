"""One exception hierarchy for raylens, mapped 1:1 to job error codes and HTTP statuses.

    RaylensError                      (code, http_status, message)
    ├── SettingsError                 settings_invalid      500  a RAYLENS_* variable is wrong
    ├── ModelLoadError                model_load_failed     503  the model could not be loaded
    ├── InputError                    (job fails at once, never retried)
    │   ├── EmptyInput                empty_input           422
    │   ├── TooLarge                  too_large             413
    │   ├── UnsupportedFormat         unsupported_format    415
    │   ├── TruncatedImage            truncated_image       422
    │   ├── CorruptImage              corrupt_image         422
    │   ├── DecompressionBomb         decompression_bomb    413
    │   ├── CorruptVideo              corrupt_video         422  undecodable or no video stream
    │   ├── SourceMissing             source_missing        422  a file or object gone
    │   ├── StorageAuth               storage_auth          422  object storage refused the
    │   │                                                          credentials (AWS_* variables)
    │   └── BucketMissing             bucket_missing        422  no such bucket
    ├── QueueFull                     queue_full            429
    ├── StoreUnavailable              store_unavailable     503
    ├── IndexUnavailable              index_unavailable     503  (on a job: re-queued, no attempt)
    ├── StorageUnavailable            storage_unavailable   503  object storage unreachable or
    │                                                              failing after its retries
    ├── JobNotFound                   not_found             404
    ├── InvalidTransition             invalid_transition    409
    ├── InvalidRequest                invalid_request       422  bad parameters of an API call
    │   └── IdempotencyConflict       idempotency_conflict  422  a used key, other content
    └── Unauthorized                  unauthorized          401  missing or wrong API key

A code only the HTTP ingress answers with (no exception class: the middleware builds the 503):
    overloaded         503 with Retry-After: a replica has RAYLENS_HTTP_MAX_ONGOING_REQUESTS
                       requests in flight

Codes that only appear on failed jobs (no exception class of their own):
    dead_letter        the job used up max_attempts (lease expiries or model errors)
    model_error        inference raised for this input (counted as an attempt)
    lease_expired      the worker holding the job died or hung (counted as an attempt)
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """The closed set of error codes a job or an API response can carry."""

    SETTINGS_INVALID = "settings_invalid"
    MODEL_LOAD_FAILED = "model_load_failed"
    EMPTY_INPUT = "empty_input"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    SOURCE_MISSING = "source_missing"
    QUEUE_FULL = "queue_full"
    STORE_UNAVAILABLE = "store_unavailable"
    OVERLOADED = "overloaded"
    NOT_FOUND = "not_found"
    INVALID_TRANSITION = "invalid_transition"
    DEAD_LETTER = "dead_letter"
    MODEL_ERROR = "model_error"
    INDEX_UNAVAILABLE = "index_unavailable"
    LEASE_EXPIRED = "lease_expired"
    CORRUPT_VIDEO = "corrupt_video"
    INVALID_REQUEST = "invalid_request"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    UNAUTHORIZED = "unauthorized"
    STORAGE_AUTH = "storage_auth"
    BUCKET_MISSING = "bucket_missing"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    EVENTS_EXPIRED = "events_expired"
    INTERNAL = "internal"


class RaylensError(Exception):
    """Base of every error raylens raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}

    def __reduce__(self):  # keep the subclass and message across Ray's pickling
        return (type(self), (self.message,))


class SettingsError(RaylensError):
    code = ErrorCode.SETTINGS_INVALID


class ModelMismatch(SettingsError):
    """A query or a write of one model against a collection of another model's vectors."""

    http_status = 409


class ModelLoadError(RaylensError):
    code = ErrorCode.MODEL_LOAD_FAILED
    http_status = 503


class InputError(RaylensError):
    """The input itself is bad: the job fails at once with this code and is never retried."""

    http_status = 422


class EmptyInput(InputError):
    code = ErrorCode.EMPTY_INPUT


class TooLarge(InputError):
    code = ErrorCode.TOO_LARGE
    http_status = 413


class UnsupportedFormat(InputError):
    code = ErrorCode.UNSUPPORTED_FORMAT
    http_status = 415


class TruncatedImage(InputError):
    code = ErrorCode.TRUNCATED_IMAGE


class CorruptImage(InputError):
    code = ErrorCode.CORRUPT_IMAGE


class DecompressionBomb(InputError):
    code = ErrorCode.DECOMPRESSION_BOMB
    http_status = 413


class CorruptVideo(InputError):
    code = ErrorCode.CORRUPT_VIDEO


class SourceMissing(InputError):
    code = ErrorCode.SOURCE_MISSING


class StorageAuth(InputError):
    """Object storage refused the request: wrong, expired or missing credentials, or no
    permission on the bucket or object."""

    code = ErrorCode.STORAGE_AUTH


class BucketMissing(InputError):
    code = ErrorCode.BUCKET_MISSING


class QueueFull(RaylensError):
    code = ErrorCode.QUEUE_FULL
    http_status = 429


class StoreUnavailable(RaylensError):
    code = ErrorCode.STORE_UNAVAILABLE
    http_status = 503


class IndexUnavailable(RaylensError):
    code = ErrorCode.INDEX_UNAVAILABLE
    http_status = 503


class StorageUnavailable(RaylensError):
    """Object storage did not answer, or failed, after the client's own retries: a job that
    meets it counts an attempt and is retried (its content is not known to be bad)."""

    code = ErrorCode.STORAGE_UNAVAILABLE
    http_status = 503


# Faults of the infrastructure, not of a job (invariant 10): a job that meets one is re-queued
# with no attempt counted, and the worker pauses until the dependency answers again.
INFRA_ERRORS: tuple[type[RaylensError], ...] = (StoreUnavailable, IndexUnavailable)


class JobNotFound(RaylensError):
    code = ErrorCode.NOT_FOUND
    http_status = 404


class EventsExpired(RaylensError):
    """A resume (Last-Event-ID) from before the events still kept: some were trimmed."""

    code = ErrorCode.EVENTS_EXPIRED
    http_status = 410


class InvalidTransition(RaylensError):
    code = ErrorCode.INVALID_TRANSITION
    http_status = 409


class InvalidRequest(RaylensError):
    code = ErrorCode.INVALID_REQUEST
    http_status = 422


class IdempotencyConflict(InvalidRequest):
    code = ErrorCode.IDEMPOTENCY_CONFLICT


class Unauthorized(RaylensError):
    code = ErrorCode.UNAUTHORIZED
    http_status = 401
