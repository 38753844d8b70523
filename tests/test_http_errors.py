"""Unit (Ray-free): error answers of the HTTP app tell clients what went wrong, never the inside.

An unexpected error answers a generic message with a request id, logged server side with the
full exception; known raylens errors (and job records' errors, and readiness texts) keep their
message with credentials, tokens, stack traces and data dir paths taken out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from raylens.cluster.jobs import Job, JobState, SourceKind
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, IndexUnavailable, RaylensError, StoreUnavailable
from raylens.serve_app.app import create_app

SECRET = "hunter2-pass"
QDRANT_KEY = "qdrant-key-0123456789"
API_KEY = "client-api-key-abcdef"


class StubAPI:
    """The ClusterAPI calls these tests reach; each answers what the test put in it."""

    def __init__(self) -> None:
        self.raises: BaseException | None = None
        self.job: Job | None = None
        self.report: dict[str, Any] = {"ready": True, "queue": "ok", "workers": []}

    async def ready(self) -> dict[str, Any]:
        if self.raises is not None:
            raise self.raises
        return self.report

    async def get_job(self, job_id: str) -> Job:
        if self.raises is not None:
            raise self.raises
        assert self.job is not None
        return self.job

    async def list_jobs(self, state: Any, limit: int, cursor: Any) -> tuple[list[Job], None]:
        assert self.job is not None
        return [self.job], None


def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=f"redis://admin:{SECRET}@cache.internal:6379/0",
        qdrant_url="https://qdrant.internal:6333",
        qdrant_api_key=QDRANT_KEY,
        api_keys=API_KEY,
    )


def client(tmp_path: Path, api: StubAPI) -> TestClient:
    app = create_app(settings(tmp_path), api)  # type: ignore[arg-type]
    return TestClient(
        app,
        base_url="http://127.0.0.1:8000",
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )


def leaks(text: str, tmp_path: Path) -> list[str]:
    inside = [SECRET, "admin:", QDRANT_KEY, API_KEY, "tok-77", str(tmp_path), 'File "']
    return [s for s in inside if s in text]


def failed_job(message: str) -> Job:
    return Job(
        id="j1",
        state=JobState.FAILED,
        source_kind=SourceKind.UPLOAD,
        source="ab" * 32,
        sha256="ab" * 32,
        content_key="k",
        created_at=0.0,
        updated_at=0.0,
        error_code=ErrorCode.INDEX_UNAVAILABLE,
        error_message=message,
    )


# --- unexpected errors: a generic answer and a request id ------------------------------------


def test_an_unexpected_error_answers_generically_and_logs_the_exception_under_its_id(
    tmp_path: Path, caplog
) -> None:
    api = StubAPI()
    api.raises = RuntimeError(
        f"cannot reach redis://admin:{SECRET}@10.1.2.3:6379/0 (store {tmp_path}/data/jobs.db)"
    )
    with caplog.at_level(logging.ERROR, "raylens.http"), client(tmp_path, api) as c:
        resp = c.get("/v1/readyz")
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["code"] == "internal"
    assert leaks(resp.text, tmp_path) == [] and "RuntimeError" not in resp.text
    assert "10.1.2.3" not in resp.text
    rid = resp.headers["X-Request-ID"]
    assert rid and rid in error["message"]
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged, "the request id is not in the server log"
    assert SECRET in logged[0].getMessage() and logged[0].exc_info is not None


def test_a_plain_client_request_id_is_kept_and_an_odd_one_replaced(tmp_path: Path) -> None:
    api = StubAPI()
    api.raises = KeyError("x")
    with client(tmp_path, api) as c:
        kept = c.get("/v1/readyz", headers={"X-Request-ID": "trace-0001-abc"})
        odd = c.get("/v1/readyz", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert kept.headers["X-Request-ID"] == "trace-0001-abc"
    assert "trace-0001-abc" in kept.json()["error"]["message"]
    assert odd.headers["X-Request-ID"] != "<script>alert(1)</script>"
    assert "<script>" not in odd.text


def test_an_actors_unexpected_error_wrapped_as_internal_answers_generically(
    tmp_path: Path,
) -> None:
    api = StubAPI()
    api.raises = RaylensError(
        f"internal error in a raylens actor: KeyError: 'redis://admin:{SECRET}@cache:6379'"
    )
    with client(tmp_path, api) as c:
        resp = c.get("/v1/jobs/j1")
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal"
    assert leaks(resp.text, tmp_path) == [] and "KeyError" not in resp.text


# --- known errors: their message, redacted --------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "says"),
    [
        (
            StoreUnavailable(
                f"Redis at redis://admin:{SECRET}@cache.internal:6379/0 unavailable (get): "
                "Timeout connecting to server"
            ),
            503,
            "Redis at redis://***@cache.internal:6379/0 unavailable (get): Timeout",
        ),
        (
            IndexUnavailable(
                "search in Qdrant at https://qdrant.internal:6333/collections?api_key=tok-77 "
                f"failed: 401 Unauthorized (api-key: {QDRANT_KEY})"
            ),
            503,
            "search in Qdrant at https://qdrant.internal:6333/collections failed: 401",
        ),
        (
            StoreUnavailable("job store {data}/jobs.db unavailable (get): disk I/O error"),
            503,
            "job store <data_dir>/jobs.db unavailable (get): disk I/O error",
        ),
    ],
)
def test_known_errors_keep_their_message_with_credentials_and_paths_redacted(
    tmp_path: Path, exc: RaylensError, status: int, says: str
) -> None:
    exc.message = exc.message.replace("{data}", str(tmp_path / "data"))
    api = StubAPI()
    api.raises = exc
    with client(tmp_path, api) as c:
        resp = c.get("/v1/jobs/j1")
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == exc.code.value
    assert says in resp.json()["error"]["message"]
    assert leaks(resp.text, tmp_path) == []


def test_job_error_messages_are_redacted_in_the_job_and_the_job_list(tmp_path: Path) -> None:
    api = StubAPI()
    api.job = failed_job(
        f"upsert to Qdrant at https://admin:{SECRET}@qdrant.internal:6333?token=tok-77 failed: "
        f"Unexpected Response: 403 (api_key={QDRANT_KEY}); payload under {tmp_path}/data/payloads"
    )
    with client(tmp_path, api) as c:
        one = c.get("/v1/jobs/j1")
        page = c.get("/v1/jobs")
    assert one.status_code == 200 and page.status_code == 200
    message = one.json()["error"]["message"]
    assert message.startswith("upsert to Qdrant at https://***@qdrant.internal:6333 failed: ")
    assert "<data_dir>/payloads" in message
    assert page.json()["jobs"][0]["error"]["message"] == message
    assert leaks(one.text, tmp_path) == [] and leaks(page.text, tmp_path) == []


def test_readiness_texts_are_redacted(tmp_path: Path) -> None:
    api = StubAPI()
    api.report = {
        "ready": False,
        "queue": f"unavailable: Redis at redis://admin:{SECRET}@cache:6379/0 refused ping",
        "workers": [
            {
                "error": "RayTaskError: ray::Worker.report() (pid=12, ip=10.0.0.9)\n"
                '  File "/srv/raylens/actors/worker.py", line 3, in report\n'
                "    raise OSError(...)"
            }
        ],
    }
    with client(tmp_path, api) as c:
        resp = c.get("/v1/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["queue"].startswith("unavailable: Redis at redis://***@cache:6379/0 refused")
    assert body["workers"][0]["error"].startswith("RayTaskError: ray::Worker.report()")
    assert leaks(resp.text, tmp_path) == []


def test_validation_and_routing_errors_keep_their_plain_messages(tmp_path: Path) -> None:
    with client(tmp_path, StubAPI()) as c:
        missing = c.get("/v1/nowhere")
        bad = c.get("/v1/jobs?limit=0")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert bad.status_code == 422 and "limit" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("at redis://u:p@h:6379/0.", "at redis://***@h:6379/0."),
        ("(rediss://:pw@h:6380)", "(rediss://***@h:6380)"),
        ("GET https://h/x?sig=abc#frag, then", "GET https://h/x, then"),
        ("password=hunter2 and apikey: 'abc'", "password=*** and apikey: '***'"),
        ("Authorization: Bearer abc.def-123", "Authorization: ***"),
        ("sent Bearer abc.def-123 twice", "sent Bearer *** twice"),
        ("top_k must be an integer, got 'ten'", "top_k must be an integer, got 'ten'"),
        (
            "limit RAYLENS_MAX_DECODED_BYTES_PER_INPUT=2147483648",
            "limit RAYLENS_MAX_DECODED_BYTES_PER_INPUT=2147483648",
        ),
        (
            'boom\nTraceback (most recent call last):\n  File "/x.py", line 1',
            "boom (traceback in the server log)",
        ),
    ],
)
def test_the_redactor_takes_out_credentials_and_keeps_plain_text(
    tmp_path: Path, text: str, redacted: str
) -> None:
    from raylens.serve_app.redaction import Redactor

    assert Redactor(Settings(data_dir=tmp_path))(text) == redacted


def test_openapi_asks_for_a_bearer_key_only_when_api_keys_are_set(tmp_path: Path) -> None:
    open_spec = create_app(Settings(data_dir=tmp_path / "a"), StubAPI()).openapi()  # type: ignore[arg-type]
    keyed = create_app(
        Settings(data_dir=tmp_path / "b", api_keys=API_KEY),
        StubAPI(),  # type: ignore[arg-type]
    ).openapi()

    ops = [op for path in open_spec["paths"].values() for op in path.values()]
    assert all("security" not in op for op in ops)
    assert "securitySchemes" not in open_spec.get("components", {})
    assert keyed["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert keyed["paths"]["/v1/images/{sha256}"]["delete"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in keyed["paths"]["/v1/healthz"]["get"]


def test_openapi_query_bodies_carry_the_bounds_the_handlers_check(tmp_path: Path) -> None:
    spec = create_app(
        Settings(data_dir=tmp_path, search_max_top_k=77),
        StubAPI(),  # type: ignore[arg-type]
    ).openapi()

    for route in ("/v1/search", "/v1/faces/search"):
        content = spec["paths"][route]["post"]["requestBody"]["content"]
        for kind in ("application/json", "multipart/form-data"):
            top_k = content[kind]["schema"]["properties"]["top_k"]
            assert (top_k["minimum"], top_k["maximum"]) == (1, 77), (route, kind)
    faces = spec["paths"]["/v1/faces/search"]["post"]["requestBody"]["content"]
    form = faces["multipart/form-data"]["schema"]["properties"]
    assert form["face_index"]["minimum"] == 0 and form["max_distance"]["exclusiveMinimum"] == 0
