"""The HTTP ingress on a real Serve app, on a real local Ray cluster, with the tiny model."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from raylens.actors import ingest, launch
from raylens.client import Client
from raylens.cluster import intake
from raylens.cluster.jobs import Lane, Pipeline
from raylens.cluster.settings import Settings

from _images import bad_inputs, image_bytes, write_images
from _ports import free_port
from _system_fixtures import serving, tiny_settings, wait_terminal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str]]:
    settings = tiny_settings(
        tmp_path_factory.mktemp("serve") / "data",
        tiny_model,
        http_port=free_port(),
        max_upload_bytes=3_000_000,
        max_input_bytes=1_500_000,
        max_image_pixels=20_000_000,
    )
    with serving(settings) as url:
        yield settings, url


def upload(url: str, files: list[tuple[str, bytes]], **kw: Any) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{url}/v1/jobs", files=parts, timeout=60, **kw)


def wait_done(url: str, ids: list[str], timeout_s: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [httpx.get(f"{url}/v1/jobs/{i}", timeout=30).json() for i in ids]
        if all(j["state"] in ("done", "failed") for j in jobs):
            return jobs
        assert time.monotonic() < deadline, f"not terminal: {[j['state'] for j in jobs]}"
        time.sleep(0.2)


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


def test_upload_answers_202_then_the_job_finishes_and_search_by_image_text_and_vector_finds_it(
    served: tuple[Settings, str],
) -> None:
    _, url = served
    files = [(f"pic{i}.jpg", image_bytes(1000 + i, (120, 90))) for i in range(3)]
    resp = upload(url, files, data={"priority": "interactive"})
    assert resp.status_code == 202, resp.text
    jobs = resp.json()["jobs"]
    assert [j["name"] for j in jobs] == ["pic0.jpg", "pic1.jpg", "pic2.jpg"]
    assert all(j["created"] for j in jobs)
    done = wait_done(url, [j["id"] for j in jobs])
    for job in done:
        assert job["state"] == "done", job
        assert job["lane"] == "interactive" and job["attempts"] == 1
        assert set(job["timestamps"]) == {"queued", "running", "done"}
        assert job["result"]["dim"] == 32 and job["error"] is None

    hit = httpx.post(
        f"{url}/v1/search",
        files={"image": ("q.jpg", files[1][1], "image/jpeg")},
        data={"top_k": "2"},
        timeout=60,
    ).json()["hits"][0]
    assert hit["job_id"] == jobs[1]["id"] and hit["name"] == "pic1.jpg"
    assert hit["score"] == pytest.approx(1.0, abs=1e-3)

    by_text = httpx.post(f"{url}/v1/search", json={"text": "a photo", "top_k": 3}, timeout=60)
    assert by_text.status_code == 200 and len(by_text.json()["hits"]) == 3

    filtered = httpx.post(
        f"{url}/v1/search",
        json={"text": "a photo", "top_k": 5, "filters": {"job_id": jobs[2]["id"]}},
        timeout=60,
    ).json()["hits"]
    assert [h["job_id"] for h in filtered] == [jobs[2]["id"]]

    assert_error(
        httpx.post(f"{url}/v1/search", json={"vector": [0.1] * 31}, timeout=60),
        422,
        "invalid_request",
    )
    by_vector = httpx.post(f"{url}/v1/search", json={"vector": [0.1] * 32}, timeout=60)
    assert by_vector.status_code == 200 and by_vector.json()["hits"]


def test_the_same_idempotency_key_sent_8_times_at_once_makes_one_job_and_other_content_is_422(
    served: tuple[Settings, str],
) -> None:
    _, url = served
    data = image_bytes(2000, (80, 80))
    key = f"key-{time.time()}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: upload(url, [("a.jpg", data)], headers={"Idempotency-Key": key}),
                range(8),
            )
        )
    assert {r.status_code for r in answers} == {202}
    ids = {r.json()["jobs"][0]["id"] for r in answers}
    assert len(ids) == 1
    assert sum(r.json()["jobs"][0]["created"] for r in answers) == 1
    job_id = ids.pop()
    wait_done(url, [job_id])
    again = upload(url, [("a.jpg", data)], headers={"Idempotency-Key": key})
    assert again.json()["jobs"][0]["id"] == job_id and not again.json()["jobs"][0]["created"]
    no_key = upload(url, [("renamed.jpg", data)])
    assert no_key.json()["jobs"][0]["id"] == job_id  # same content and pipeline, same job
    other = upload(url, [("b.jpg", image_bytes(2001))], headers={"Idempotency-Key": key})
    assert_error(other, 422, "idempotency_conflict")


def test_over_the_upload_cap_is_413_whether_the_length_is_declared_or_streamed(
    served: tuple[Settings, str],
) -> None:
    settings, url = served
    big = [(f"f{i}.jpg", image_bytes(3000 + i, (64, 64)) + b"\0" * 1_000_000) for i in range(4)]
    assert_error(upload(url, big), 413, "too_large")

    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:  # chunked: no Content-Length, the cap is found by reading
        yield (
            b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        for _ in range(80):
            sent["bytes"] += 64 * 1024
            yield b"\xff" * (64 * 1024)
        yield b"\r\n--xx--\r\n"

    try:
        resp = httpx.post(
            f"{url}/v1/jobs",
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=xx"},
            timeout=60,
        )
        assert_error(resp, 413, "too_large")
    except httpx.TransportError:
        pass  # the server may close the connection mid-upload after answering 413
    one_file_over = [("one.jpg", image_bytes(3100, (64, 64)) + b"\0" * 1_600_000)]
    body_413 = assert_error(upload(url, one_file_over), 413, "too_large")
    assert "RAYLENS_MAX_INPUT_BYTES" in body_413["error"]["message"]


def test_content_that_is_not_an_image_is_415_whatever_its_name_and_nothing_is_created(
    served: tuple[Settings, str], tmp_path: Path
) -> None:
    _, url = served
    html = bad_inputs(tmp_path)["unsupported_format"].read_bytes()
    before = httpx.get(f"{url}/v1/jobs", params={"limit": 1000}, timeout=30).json()["jobs"]
    resp = upload(url, [("good.jpg", image_bytes(4000)), ("photo.jpg", html)])
    body = assert_error(resp, 415, "unsupported_format")
    assert "photo.jpg" in body["error"]["message"]
    assert_error(upload(url, [("empty.jpg", b"")]), 422, "empty_input")
    after = httpx.get(f"{url}/v1/jobs", params={"limit": 1000}, timeout=30).json()["jobs"]
    assert len(after) == len(before)
    not_multipart = httpx.post(f"{url}/v1/jobs", content=b"{}", timeout=30)
    assert_error(not_multipart, 415, "unsupported_format")


def test_bad_parameters_are_422_and_unknown_jobs_404_never_500(
    served: tuple[Settings, str],
) -> None:
    _, url = served
    ok = [("x.jpg", image_bytes(5000))]
    assert_error(upload(url, ok, data={"priority": "urgent"}), 422, "invalid_request")
    assert_error(upload(url, ok, data={"pipeline": "sharpen"}), 422, "invalid_request")
    assert_error(upload(url, []), 415, "unsupported_format")  # no body at all
    assert_error(
        httpx.post(f"{url}/v1/jobs", files=[("other", ("x.jpg", ok[0][1]))], timeout=30),
        422,
        "invalid_request",
    )
    search = f"{url}/v1/search"
    assert_error(
        httpx.post(search, json={"text": "a", "top_k": 0}, timeout=30), 422, "invalid_request"
    )
    assert_error(httpx.post(search, json={}, timeout=30), 422, "invalid_request")
    assert_error(
        httpx.post(search, json={"text": "a", "vector": [1.0]}, timeout=30), 422, "invalid_request"
    )
    assert_error(httpx.post(search, content=b"{nope", timeout=30), 422, "invalid_request")
    assert_error(
        httpx.post(search, json={"text": "a", "filters": {"bad key!": 1}}, timeout=30),
        422,
        "invalid_request",
    )
    assert_error(httpx.get(f"{url}/v1/jobs/nope", timeout=30), 404, "not_found")
    assert_error(
        httpx.get(f"{url}/v1/jobs", params={"limit": 0}, timeout=30), 422, "invalid_request"
    )
    assert_error(
        httpx.get(f"{url}/v1/jobs", params={"state": "lost"}, timeout=30), 422, "invalid_request"
    )
    assert_error(
        httpx.get(f"{url}/v1/jobs", params={"cursor": "!!"}, timeout=30), 422, "invalid_request"
    )
    assert_error(httpx.get(f"{url}/v1/nothing-here", timeout=30), 404, "not_found")


def test_jobs_page_with_a_cursor_and_a_failed_job_can_be_retried_but_a_done_one_cannot(
    served: tuple[Settings, str], tmp_path: Path
) -> None:
    _, url = served
    truncated = bad_inputs(tmp_path)["truncated_image"].read_bytes()
    bad = upload(url, [("cut.jpg", truncated)]).json()["jobs"][0]["id"]
    good = upload(url, [("fine.jpg", image_bytes(6000))]).json()["jobs"][0]["id"]
    failed, done = wait_done(url, [bad, good])
    assert failed["state"] == "failed" and failed["error"]["code"] == "truncated_image"
    retried = httpx.post(f"{url}/v1/jobs/{bad}/retry", timeout=30)
    assert retried.status_code == 202 and retried.json()["state"] in ("queued", "running")
    again = wait_done(url, [bad])[0]
    assert again["state"] == "failed" and len(again["history"]) > len(failed["history"])
    assert_error(httpx.post(f"{url}/v1/jobs/{good}/retry", timeout=30), 409, "invalid_transition")

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{url}/v1/jobs", params=params, timeout=30).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and {bad, good} <= set(seen)
    failed_only = httpx.get(f"{url}/v1/jobs", params={"state": "failed"}, timeout=30).json()
    assert bad in [j["id"] for j in failed_only["jobs"]]
    assert all(j["state"] == "failed" for j in failed_only["jobs"])


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture, other bytes: a JPEG comment segment right after SOI."""
    comment = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def test_healthz_answers_promptly_while_the_workers_work_through_a_backlog(
    served: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = served
    queue = launch.queue_handle(settings)
    bases = [image_bytes(7000 + i, (1600, 1200)) for i in range(4)]
    paths = []
    for i in range(400):
        p = tmp_path / f"big{i}.jpg"
        p.write_bytes(with_comment(bases[i % 4], f"copy {i}"))
        paths.append(p)
    # CLIP only: the backlog is what matters here, not the face detector's time on 400 photos.
    specs = [intake.spec_for_path(p, Lane.BULK, pipeline=Pipeline.EMBED) for p in paths]
    ids = [r.job_id for r in ingest.submit(queue, specs, settings)]
    latencies = []
    searched_during_backlog = False
    while True:
        t0 = time.perf_counter()
        resp = httpx.get(f"{url}/v1/healthz", timeout=30)
        latencies.append(time.perf_counter() - t0)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
        if not searched_during_backlog:  # a query is not queued behind the bulk backlog
            found = httpx.post(f"{url}/v1/search", json={"text": "x", "top_k": 1}, timeout=30)
            assert found.status_code == 200, found.text
            searched_during_backlog = ray.get(queue.stats.remote())["depth"]["bulk"] > 0
        stats = ray.get(queue.stats.remote())
        if stats["depth"]["bulk"] == 0:
            break
        time.sleep(0.05)
    assert len(latencies) >= 5, "the backlog was gone before healthz was measured under load"
    assert max(latencies) < 2.0, f"healthz took up to {max(latencies):.3f}s under load"
    assert searched_during_backlog, "no search finished while the bulk backlog was still queued"
    jobs = wait_terminal(queue, ids)
    assert all(j.state.value == "done" for j in jobs)


def test_readyz_lists_the_worker_reports_and_openapi_documents_every_route(
    served: tuple[Settings, str],
) -> None:
    _, url = served
    ready = httpx.get(f"{url}/v1/readyz", timeout=30).json()
    assert ready["ready"] is True and ready["queue"] == "ok"
    assert ready["workers"][0]["model_id"] and ready["workers"][0]["load_count"] == 1
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    routes = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes >= {
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/retry", "post"),
        ("/v1/search", "post"),
        ("/v1/healthz", "get"),
        ("/v1/readyz", "get"),
    }
    upload_op = spec["paths"]["/v1/jobs"]["post"]
    assert {"202", "413", "415", "422", "429", "503"} <= set(upload_op["responses"])
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
    assert set(spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200


def test_the_client_rides_out_a_503_burst_while_the_queue_is_down_and_loses_nothing(
    served: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = served
    write_images(tmp_path / "photos", 12, start=8000)
    ray.kill(launch.queue_handle(settings), no_restart=True)

    def restart_later() -> None:
        time.sleep(3)
        launch.start_queue(settings)  # rebuilt from the store

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    try:
        with Client(url, max_retries=40, backoff_s=0.2, max_backoff_s=1.0) as client:
            ids = client.submit(tmp_path / "photos", batch_size=4)
            jobs = client.wait(ids, timeout_s=180, progress=False)
            assert client.retried["503"] >= 1, client.retried
    finally:
        restarter.join()
    assert len(ids) == len(set(ids)) == 12
    assert [j["state"] for j in jobs] == ["done"] * 12
    listed = {j["id"] for j in Client(url).jobs(limit=1000)["jobs"]}
    assert set(ids) <= listed
