"""Webhooks on a real system (tiny model, real Serve ingress, real local HTTP receivers): a
signed POST when a job ends, retried with backoff, every attempt visible, the job unaffected."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from raylens.client import ApiError, Client
from raylens.cluster import webhooks
from raylens.cluster.settings import Settings

from _images import image_bytes
from _ports import free_port
from _system_fixtures import serving, tiny_settings

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret-0123456789"


class Receiver(http.server.ThreadingHTTPServer):
    """/ok answers 200; /flaky 500 twice, then 200; /never never answers in time."""

    daemon_threads = True

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.flaky_left = 2
        super().__init__(("127.0.0.1", free_port()), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got.append((self.path, dict(self.headers), data))
        if self.path == "/never":
            time.sleep(3)  # past RAYLENS_WEBHOOK_TIMEOUT_S: the sender gives up first
            return
        status = 200
        if self.path == "/flaky" and self.server.flaky_left > 0:
            self.server.flaky_left -= 1
            status = 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def served(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str]]:
    settings = tiny_settings(
        tmp_path_factory.mktemp("hooks") / "data",
        tiny_model,
        http_port=free_port(),
        faces_enabled=False,
        webhook_secret=SECRET,
        webhook_allow_private=True,  # the receivers are on loopback
        webhook_timeout_s=1.0,
        webhook_backoff_first_s=0.3,
        webhook_retry_s=4.0,
        events_keepalive_s=0.5,
    )
    with serving(settings) as url:
        yield settings, url


def settled(client: Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        out = client.deliveries(job_id)
        if out["state"] in ("delivered", "failed"):
            return out
        assert time.monotonic() < deadline, f"delivery never settled: {out}"
        time.sleep(0.2)


def test_a_finished_job_is_posted_signed_and_a_flaky_receiver_gets_it_on_the_third_try(
    served: tuple[Settings, str], receiver: Receiver
) -> None:
    _, url = served
    with Client(url) as client:
        [ok] = client.submit(image_bytes(8001), callback_url=f"{receiver.url}/ok")
        [flaky] = client.submit(image_bytes(8002), callback_url=f"{receiver.url}/flaky")
        t0 = time.monotonic()
        client.wait([ok, flaky], timeout_s=120, progress=False)
        first, second = settled(client, ok), settled(client, flaky)
        elapsed = time.monotonic() - t0
    assert first["state"] == "delivered" and [a["status"] for a in first["attempts"]] == [200]
    assert second["state"] == "delivered"
    assert [a["status"] for a in second["attempts"]] == [500, 500, 200]
    posts = [(path, h, body) for path, h, body in receiver.got if path == "/ok"]
    assert len(posts) == 1
    _, headers, body = posts[0]
    assert webhooks.verify(SECRET, body, headers[webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify(
        "another-secret-0123456789", body, headers[webhooks.SIGNATURE_HEADER]
    )
    assert headers[webhooks.DELIVERY_HEADER]  # the event id: receivers dedupe by it
    assert b'"type":"job.done"' in body and ok.encode() in body
    flaky_ids = {h[webhooks.DELIVERY_HEADER] for p, h, _ in receiver.got if p == "/flaky"}
    assert len(flaky_ids) == 1  # every retry is the same delivery
    print(f"webhooks: ok and flaky (2 failures first) delivered {elapsed:.1f}s after submit")


def test_a_receiver_that_never_answers_leaves_the_job_done_and_the_failure_visible(
    served: tuple[Settings, str], receiver: Receiver
) -> None:
    settings, url = served
    with Client(url) as client:
        [job_id] = client.submit(image_bytes(8003), callback_url=f"{receiver.url}/never")
        [job] = client.wait([job_id], timeout_s=120, progress=False)
        out = settled(client, job_id, timeout_s=60)
        assert job["state"] == "done" and client.get(job_id)["state"] == "done"
    assert out["state"] == "failed" and len(out["attempts"]) >= 2
    assert all(a["status"] is None and "Timeout" in a["error"] for a in out["attempts"])


def test_bad_callback_urls_are_refused_at_submit(served: tuple[Settings, str]) -> None:
    _, url = served
    with Client(url, max_retries=0) as client:
        with pytest.raises(ApiError) as err:
            client.submit(image_bytes(8004), callback_url="ftp://example.com/x")
        assert err.value.status == 422 and "http or https" in str(err.value)
        [plain] = client.submit(image_bytes(8005))
        assert client.deliveries(plain)["state"] == "none"
