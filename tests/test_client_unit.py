"""Unit tests of the pure-HTTP client against a small scripted HTTP server (no Ray)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from raylens.client import ApiError, Client, RetriesExhausted

from _ports import free_port

pytestmark = pytest.mark.timeout(60)


@dataclass
class Seen:
    """One request as the fake server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (field, filename, data)
    at: float = 0.0


class FakeApi:
    """Scripted raylens API: canned failures first, then plausible answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.failures: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.by_key: dict[str, tuple[list[str], list[str]]] = {}  # key -> (sha256s, ids)
        self.polls_until_done: dict[str, int] = {}  # job id -> GETs still answered "running"
        self.next_id = 0

    def fail_next(self, status: int, code: str, retry_after: str | None = None, n: int = 1):
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": {"code": code, "message": f"scripted {code}"}}
        self.failures.extend([(status, headers, body)] * n)

    def handle(self, req: Seen) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.seen.append(req)
            if self.failures:
                return self.failures.pop(0)
            return self._answer(req)

    def _answer(self, req: Seen) -> tuple[int, dict[str, str], Any]:
        parts = req.path.strip("/").split("/")
        if req.method == "POST" and req.path == "/v1/jobs":
            return self._submit(req)
        if req.method == "GET" and parts[:2] == ["v1", "jobs"] and len(parts) == 3:
            return self._job(parts[2])
        if req.method == "GET" and req.path == "/v1/jobs":
            return 200, {}, {"jobs": [], "next_cursor": None}
        if req.method == "POST" and parts[-1] == "retry":
            return 409, {}, {"error": {"code": "invalid_transition", "message": "not failed"}}
        if req.path == "/v1/search":
            hit = {"id": "p1", "score": 0.9, "job_id": "j", "source": "s", "name": "a.png"}
            return 200, {}, {"hits": [hit], "took_ms": 1.0}
        if req.path == "/v1/healthz":
            return 200, {}, {"status": "ok"}
        if req.path == "/v1/readyz":
            return 503, {"Retry-After": "1"}, {"ready": False, "workers": []}
        return 404, {}, {"error": {"code": "not_found", "message": f"no route {req.path}"}}

    def _submit(self, req: Seen) -> tuple[int, dict[str, str], Any]:
        shas = [hashlib.sha256(data).hexdigest() for _, _, data in req.files]
        key = req.headers.get("idempotency-key")
        if key and key in self.by_key:
            old_shas, ids = self.by_key[key]
            if old_shas != shas:
                err = {"code": "idempotency_conflict", "message": "key used for other files"}
                return 422, {}, {"error": err}
            created = False
        else:
            ids = []
            for _ in shas:
                self.next_id += 1
                ids.append(f"job-{self.next_id:04d}")
            created = True
            if key:
                self.by_key[key] = (shas, ids)
        jobs = [
            {"id": i, "name": f[1], "sha256": s, "state": "queued", "created": created}
            for i, f, s in zip(ids, req.files, shas)
        ]
        return 202, {}, {"jobs": jobs, "idempotency_key": key}

    def _job(self, job_id: str) -> tuple[int, dict[str, str], Any]:
        if job_id not in self.polls_until_done:
            return 404, {}, {"error": {"code": "not_found", "message": f"no job {job_id}"}}
        left = self.polls_until_done[job_id]
        self.polls_until_done[job_id] = max(0, left - 1)
        state = "running" if left > 0 else ("failed" if job_id.endswith("bad") else "done")
        return 200, {}, {"id": job_id, "state": state, "error": None, "result": None}

    def submits(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path == "/v1/jobs"]


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    form: dict[str, str] = {}
    files: list[tuple[str, str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename is None:
            form[name] = data.decode()
        else:
            files.append((name, filename, data))
    return form, files


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Seen(
                self.command,
                url.path,
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                at=time.monotonic(),
            )
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                req.form, req.files = _parse_multipart(ctype, body)
            elif body:
                req.json = json.loads(body)
            status, headers, payload = api.handle(req)
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _serve

    return Handler


def _start(api: FakeApi, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(api))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


@pytest.fixture
def api() -> Iterator[FakeApi]:
    return FakeApi()


@pytest.fixture
def server(api: FakeApi) -> Iterator[ThreadingHTTPServer]:
    srv = _start(api)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server: ThreadingHTTPServer) -> Iterator[Client]:
    host, port = server.server_address[:2]
    with Client(f"http://{host}:{port}", timeout_s=5, backoff_s=0.01, max_backoff_s=0.2) as c:
        yield c


def _png(i: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + i.to_bytes(4, "big") + b"\xff\x00\xfe"  # not UTF-8 on purpose


# -- import hygiene ------------------------------------------------------------------------


def test_import_does_not_pull_ray() -> None:
    code = (
        "import sys, raylens.client; "
        "bad = [m for m in ('ray', 'torch', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- retries and idempotency ---------------------------------------------------------------


@pytest.mark.parametrize("status,code", [(503, "store_unavailable"), (429, "queue_full")])
def test_retry_reuses_idempotency_key(api: FakeApi, client: Client, status: int, code: str) -> None:
    api.fail_next(status, code, n=2)
    ids = client.submit([_png(1), _png(2)])
    posts = api.submits()
    assert len(posts) == 3
    keys = {p.headers["idempotency-key"] for p in posts}
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    assert ids == ["job-0001", "job-0002"]
    assert [f[2] for f in posts[-1].files] == [_png(1), _png(2)]  # bytes intact, binary-safe


def test_retry_after_succeeded_request_returns_same_jobs(api: FakeApi, client: Client) -> None:
    """A retry whose first try was stored (answer lost) gets the same ids back, no new job."""
    first = client.submit(_png(7))
    key = api.submits()[0].headers["idempotency-key"]
    # replay the same key, as a retry would after a lost answer
    files = [("files", ("upload-00000", _png(7), "application/octet-stream"))]
    again = httpx.post(
        f"{client.url}/v1/jobs", files=files, headers={"Idempotency-Key": key}
    ).json()
    assert [j["id"] for j in again["jobs"]] == first
    assert again["jobs"][0]["created"] is False


def test_each_batch_gets_its_own_key(api: FakeApi, client: Client) -> None:
    client.submit([_png(i) for i in range(5)], batch_size=2)
    keys = [p.headers["idempotency-key"] for p in api.submits()]
    assert len(keys) == 3 and len(set(keys)) == 3


def test_retry_after_header_is_honoured(api: FakeApi, server: ThreadingHTTPServer) -> None:
    host, port = server.server_address[:2]
    api.fail_next(429, "queue_full", retry_after="0.4")
    with Client(f"http://{host}:{port}", backoff_s=0.001, max_backoff_s=5) as c:
        c.submit(_png(1))
    a, b = api.submits()
    assert b.at - a.at >= 0.35


def test_retry_after_is_capped_by_max_backoff(api: FakeApi, server: ThreadingHTTPServer) -> None:
    host, port = server.server_address[:2]
    api.fail_next(503, "store_unavailable", retry_after="30")
    with Client(f"http://{host}:{port}", backoff_s=0.001, max_backoff_s=0.1) as c:
        t0 = time.monotonic()
        c.health()
        assert time.monotonic() - t0 < 2


def test_gives_up_after_max_retries(api: FakeApi, server: ThreadingHTTPServer) -> None:
    host, port = server.server_address[:2]
    api.fail_next(503, "store_unavailable", n=10)
    with Client(f"http://{host}:{port}", max_retries=2, backoff_s=0.001) as c:
        with pytest.raises(RetriesExhausted) as info:
            c.submit(_png(1))
    err = info.value
    assert isinstance(err, ApiError)
    assert (err.status, err.code, err.attempts) == (503, "store_unavailable", 3)
    assert "gave up after 3 attempts" in str(err)
    assert len(api.submits()) == 3
    assert len({p.headers["idempotency-key"] for p in api.submits()}) == 1


def test_connection_refused_then_up(api: FakeApi) -> None:
    port = free_port()
    result: dict[str, Any] = {}

    def go() -> None:
        with Client(f"http://127.0.0.1:{port}", backoff_s=0.05, max_backoff_s=0.1) as c:
            try:
                result["ids"] = c.submit([_png(1), _png(2), _png(3)], batch_size=2)
            except Exception as exc:  # reported below
                result["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.3)  # the client is retrying against a closed port meanwhile
    srv = _start(api, port)
    try:
        t.join(10)
    finally:
        srv.shutdown()
        srv.server_close()
    assert "error" not in result, result.get("error")
    assert result["ids"] == ["job-0001", "job-0002", "job-0003"]
    assert len(api.submits()) == 2  # one per batch: failed tries never reached the server


def test_unreachable_gives_up_with_clear_error() -> None:
    port = free_port()
    with Client(f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.001) as c:
        with pytest.raises(RetriesExhausted) as info:
            c.health()
    assert info.value.status is None and info.value.code == "unreachable"
    assert "no answer" in str(info.value) and "/v1/healthz" in str(info.value)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,code",
    [(401, "unauthorized"), (413, "too_large"), (415, "unsupported_format"), (422, "x")],
)
def test_other_4xx_raise_at_once(api: FakeApi, client: Client, status: int, code: str) -> None:
    api.fail_next(status, code, n=3)
    with pytest.raises(ApiError) as info:
        client.submit(_png(1))
    assert not isinstance(info.value, RetriesExhausted)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message == f"scripted {code}"
    assert f"HTTP {status} {code}: scripted {code}" in str(info.value)
    assert len(api.submits()) == 1


def test_not_found_and_invalid_transition(client: Client) -> None:
    with pytest.raises(ApiError) as info:
        client.get("nope")
    assert (info.value.status, info.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as info:
        client.retry("job-1")
    assert (info.value.status, info.value.code) == (409, "invalid_transition")


def test_api_error_pickles() -> None:
    err = RetriesExhausted(ApiError(503, "queue_full", "busy", method="GET", url="u"), 4)
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.code, back.attempts, str(back)) == (503, "queue_full", 4, str(err))


def test_idempotency_conflict_surfaces(api: FakeApi, client: Client) -> None:
    api.by_key["k"] = (["other"], ["job-x"])
    files = [("files", ("a.png", _png(1), "image/png"))]
    r = httpx.post(f"{client.url}/v1/jobs", files=files, headers={"Idempotency-Key": "k"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_conflict"


def test_bearer_token_sent(api: FakeApi, server: ThreadingHTTPServer) -> None:
    host, port = server.server_address[:2]
    with Client(f"http://{host}:{port}", api_key="s3cret") as c:
        c.health()
    assert api.seen[-1].headers["authorization"] == "Bearer s3cret"


# -- submit --------------------------------------------------------------------------------


def test_folder_submit_batches_in_sorted_order(
    api: FakeApi, client: Client, tmp_path: Path
) -> None:
    names = ["b.png", "a.jpg", "sub/c.webp", "sub/deeper/d.TIFF", "e.JPEG", "z.gif"]
    for i, name in enumerate(names):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_png(i))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "clip.mp4").write_bytes(b"\x00")

    ids = client.submit(tmp_path, batch_size=4, priority="bulk", pipeline="embed")

    posts = api.submits()
    assert [len(p.files) for p in posts] == [4, 2]
    sent = [f[1] for p in posts for f in p.files]
    assert sent == ["a.jpg", "b.png", "e.JPEG", "c.webp", "d.TIFF", "z.gif"]
    assert all(f[0] == "files" for p in posts for f in p.files)
    assert ids == [f"job-{i:04d}" for i in range(1, 7)]
    assert all(p.form == {"priority": "bulk", "pipeline": "embed"} for p in posts)
    by_name = {f[1]: f[2] for p in posts for f in p.files}
    assert by_name["c.webp"] == _png(2)


def test_submit_mixed_list_keeps_order(api: FakeApi, client: Client, tmp_path: Path) -> None:
    (tmp_path / "one.png").write_bytes(_png(1))
    ids = client.submit([_png(0), tmp_path / "one.png", str(tmp_path / "one.png")])
    files = api.submits()[0].files
    assert [f[1] for f in files] == ["upload-00000", "one.png", "one.png"]
    assert len(ids) == 3


def test_submit_bad_sources(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.submit(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        client.submit(tmp_path / "empty")
    with pytest.raises(TypeError):
        client.submit(123)  # type: ignore[arg-type]
    assert client.submit([]) == []


# -- wait ----------------------------------------------------------------------------------


def test_wait_returns_when_terminal(api: FakeApi, client: Client) -> None:
    api.polls_until_done.update({"j-1": 0, "j-2": 2, "j-3bad": 1})
    jobs = client.wait(["j-2", "j-1", "j-3bad"], poll_s=0.01, progress=False, timeout_s=5)
    assert [(j["id"], j["state"]) for j in jobs] == [
        ("j-2", "done"),
        ("j-1", "done"),
        ("j-3bad", "failed"),
    ]
    gets = [s.path for s in api.seen if s.method == "GET"]
    assert gets.count("/v1/jobs/j-1") == 1  # terminal jobs are not polled again
    assert gets.count("/v1/jobs/j-2") == 3


def test_wait_times_out(api: FakeApi, client: Client) -> None:
    api.polls_until_done.update({"j-1": 0, "j-2": 10_000, "j-3": 10_000})
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 3 jobs still pending"):
        client.wait(["j-1", "j-2", "j-3"], timeout_s=0.3, poll_s=0.05, progress=True)
    assert time.monotonic() - t0 < 2


# -- search, listing, health ---------------------------------------------------------------


def test_search_requests(api: FakeApi, client: Client, tmp_path: Path) -> None:
    hits = client.search_text("a cat", top_k=3, filters={"pipeline": "embed"})
    assert hits[0]["name"] == "a.png"
    assert api.seen[-1].json == {"text": "a cat", "top_k": 3, "filters": {"pipeline": "embed"}}

    client.search_vector([1, 0.5], top_k=2)
    assert api.seen[-1].json == {"vector": [1.0, 0.5], "top_k": 2}

    (tmp_path / "q.png").write_bytes(_png(9))
    client.search_image(tmp_path / "q.png", top_k=4, filters={"lane": "bulk"})
    req = api.seen[-1]
    assert req.files == [("image", "q.png", _png(9))]
    assert req.form == {"top_k": "4", "filters": '{"lane": "bulk"}'}

    client.search_image(_png(3))
    assert api.seen[-1].files[0][2] == _png(3)


def test_jobs_listing_params(api: FakeApi, client: Client) -> None:
    assert client.jobs(state="failed", limit=5, cursor="c1") == {"jobs": [], "next_cursor": None}
    assert api.seen[-1].query == {"state": ["failed"], "limit": ["5"], "cursor": ["c1"]}


def test_health_and_ready(api: FakeApi, client: Client) -> None:
    assert client.health() == {"status": "ok"}
    t0 = time.monotonic()
    assert client.ready() == {"ready": False, "workers": []}  # 503 returned, not retried
    assert time.monotonic() - t0 < 0.5
    assert [s.path for s in api.seen].count("/v1/readyz") == 1
