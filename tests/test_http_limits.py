"""Auth, queue-full, unavailable and streaming-cap answers of the HTTP app.

The app runs in-process (httpx's ASGI transport) but talks to a real queue actor on a real local
Ray cluster; the Serve-hosted app is covered by test_serve.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from raylens.actors import launch
from raylens.cluster.settings import Settings
from raylens.serve_app.app import create_app

from _images import image_bytes


def call(settings: Settings, method: str, path: str, **kw: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(run())


def one_image(seed: int = 1) -> dict[str, Any]:
    return {"files": [("files", (f"{seed}.jpg", image_bytes(seed), "image/jpeg"))]}


def test_the_upload_cap_stops_reading_a_streamed_body_as_soon_as_it_is_passed(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, max_upload_bytes=200_000)
    pulled = {"chunks": 0}

    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
        for _ in range(1000):  # 64 MB if read to the end
            pulled["chunks"] += 1
            yield b"\xff" * 65536

    resp = call(
        settings,
        "POST",
        "/v1/jobs",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
    assert "RAYLENS_MAX_UPLOAD_BYTES" in resp.json()["error"]["message"]
    assert pulled["chunks"] <= 5, f"read {pulled['chunks']} chunks past a 200 kB cap"


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("/v1/search", {"top_k": "ten"}, "top_k must be an integer, got 'ten'"),
        ("/v1/search", {"filters": "{nope"}, "filters must be a JSON object"),
        ("/v1/faces/search", {"top_k": "1.5"}, "top_k must be an integer, got '1.5'"),
        ("/v1/faces/search", {"face_index": "first"}, "face_index must be an integer"),
        ("/v1/faces/search", {"max_distance": "near"}, "max_distance must be a number"),
    ],
)
def test_image_queries_answer_422_naming_the_bad_form_field_on_either_route(
    tmp_path: Path, path: str, data: dict[str, str], message: str
) -> None:
    # One parser reads the multipart query of both routes; it fails before any cluster call.
    settings = Settings(data_dir=tmp_path)
    files = {"image": ("q.jpg", image_bytes(1), "image/jpeg")}
    resp = call(settings, "POST", path, files=files, data=data)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"
    assert message in resp.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/search", "/v1/faces/search"])
def test_an_image_query_without_exactly_one_image_part_answers_422(
    tmp_path: Path, path: str
) -> None:
    settings = Settings(data_dir=tmp_path)
    two = [("image", (f"{i}.jpg", image_bytes(i), "image/jpeg")) for i in (1, 2)]
    misnamed = call(
        settings, "POST", path, files={"other": ("q.jpg", image_bytes(1), "image/jpeg")}
    )
    assert misnamed.status_code == 422 and misnamed.json()["error"]["code"] == "invalid_request"
    assert "exactly one file part named 'image'" in misnamed.json()["error"]["message"]
    twice = call(settings, "POST", path, files=two)
    assert twice.status_code == 422 and twice.json()["error"]["code"] == "invalid_request"


@pytest.mark.integration
def test_with_api_keys_every_route_but_healthz_needs_a_valid_bearer_key(
    ray_cluster: None, settings_for: Any
) -> None:
    settings = settings_for(api_keys="first-key, second-key")
    launch.start_queue(settings)
    try:
        assert call(settings, "GET", "/v1/healthz").status_code == 200
        for method, path in [
            ("GET", "/v1/jobs"),
            ("GET", "/v1/jobs/abc"),
            ("POST", "/v1/jobs/abc/retry"),
            ("POST", "/v1/search"),
            ("GET", "/v1/readyz"),
            ("POST", "/v1/jobs"),
        ]:
            resp = call(settings, method, path)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
        wrong = call(settings, "GET", "/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = call(settings, "GET", "/v1/jobs", headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert basic.status_code == 401
        ok = call(
            settings,
            "POST",
            "/v1/jobs",
            headers={"Authorization": "Bearer second-key"},
            **one_image(),
        )
        assert ok.status_code == 202, ok.text
        listed = call(settings, "GET", "/v1/jobs", headers={"Authorization": "Bearer first-key"})
        assert listed.status_code == 200 and len(listed.json()["jobs"]) == 1
    finally:
        launch.stop(settings, timeout_s=5)


@pytest.mark.integration
def test_without_api_keys_no_header_is_needed(ray_cluster: None, settings_for: Any) -> None:
    settings = settings_for()
    launch.start_queue(settings)
    try:
        assert call(settings, "POST", "/v1/jobs", **one_image()).status_code == 202
        assert call(settings, "GET", "/v1/jobs").status_code == 200
    finally:
        launch.stop(settings, timeout_s=5)


@pytest.mark.integration
def test_a_full_queue_answers_429_with_retry_after_and_creates_nothing(
    ray_cluster: None, settings_for: Any
) -> None:
    settings = settings_for(queue_max_depth=2, retry_after_s=3)
    launch.start_queue(settings)  # no workers: queued jobs stay queued
    try:
        for seed in (1, 2):
            assert call(settings, "POST", "/v1/jobs", **one_image(seed)).status_code == 202
        full = call(settings, "POST", "/v1/jobs", **one_image(3))
        assert full.status_code == 429 and full.headers["retry-after"] == "3"
        assert full.json()["error"]["code"] == "queue_full"
        assert "RAYLENS_QUEUE_MAX_DEPTH=2" in full.json()["error"]["message"]
        again = call(settings, "POST", "/v1/jobs", **one_image(1))
        assert again.status_code == 429  # the cap is checked before dedup: nothing is written
        assert len(call(settings, "GET", "/v1/jobs").json()["jobs"]) == 2
    finally:
        launch.stop(settings, timeout_s=5)


@pytest.mark.integration
def test_no_queue_on_the_cluster_answers_503_with_retry_after_not_500(
    ray_cluster: None, settings_for: Any
) -> None:
    settings = settings_for()  # nothing started in this namespace
    for method, path, kw in [
        ("POST", "/v1/jobs", one_image()),
        ("GET", "/v1/jobs", {}),
        ("GET", "/v1/jobs/abc", {}),
        ("POST", "/v1/search", {"json": {"text": "a cat"}}),
    ]:
        resp = call(settings, method, path, **kw)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json()["error"]["code"] == "store_unavailable"
        assert resp.headers["retry-after"] == str(settings.retry_after_s)
    ready = call(settings, "GET", "/v1/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
