"""Job events on a real Serve ingress (tiny model, real local Ray, SQLite store): GET
/v1/events as Server-Sent Events, resumed by Last-Event-ID, and Client.events / Client.wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from raylens.client import ApiError, Client, _sse_events
from raylens.cluster.settings import Settings
from raylens.cluster.store_sqlite import SqliteJobStore

from _images import image_bytes
from _ports import free_port
from _system_fixtures import serving, tiny_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str]]:
    settings = tiny_settings(
        tmp_path_factory.mktemp("events") / "data",
        tiny_model,
        http_port=free_port(),
        faces_enabled=False,
        events_stream_s=2.0,  # streams end often: every reader here resumes across them
        events_keepalive_s=0.5,
    )
    with serving(settings) as url:
        yield settings, url


def upload(url: str, seeds: range, key: str | None = None) -> list[str]:
    parts = [("files", (f"e{s}.jpg", image_bytes(s), "image/jpeg")) for s in seeds]
    headers = {"Idempotency-Key": key} if key else {}
    resp = httpx.post(
        f"{url}/v1/jobs", files=parts, data={"pipeline": "embed"}, headers=headers, timeout=60
    )
    assert resp.status_code == 202, resp.text
    return [j["id"] for j in resp.json()["jobs"]]


def read_events(
    url: str, n: int, params: list[tuple[str, str]], last: str | None
) -> tuple[list[dict[str, Any]], bool]:
    """Up to n events of one stream (then disconnect); and whether the server ended it."""
    headers = {"Last-Event-ID": last} if last is not None else {}
    got: list[dict[str, Any]] = []
    with httpx.stream(
        "GET", f"{url}/v1/events", params=params, headers=headers, timeout=30
    ) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for _kind, event in _sse_events(resp.iter_lines()):
            got.append(event)
            if len(got) == n:
                return got, False  # leaving the block drops the connection mid-stream
    return got, True


def test_a_reader_that_disconnects_mid_stream_resumes_without_missing_or_repeating(
    served: tuple[Settings, str],
) -> None:
    settings, url = served
    with Client(url) as client:
        ids = upload(url, range(7000, 7006))
        done = client.wait(ids, timeout_s=120, progress=False)
    assert [j["state"] for j in done] == ["done"] * 6
    params = [("job_id", i) for i in ids]
    # The whole history of these jobs, replayed from the start of the window.
    everything: list[dict[str, Any]] = []
    last = "0"
    while len(everything) < 18:
        page, _ = read_events(url, 18 - len(everything), params, last)
        everything += page
        last = everything[-1]["id"] if everything else last
    by_job = {i: [e["state"] for e in everything if e["job_id"] == i] for i in ids}
    assert all(states == ["queued", "running", "done"] for states in by_job.values()), by_job
    assert all(e["point_ids"] for e in everything if e["state"] == "done")
    # Now in pieces: 7 events, disconnect, resume after the 7th, and so on.
    pieces: list[dict[str, Any]] = []
    last = "0"
    while len(pieces) < 18:
        page, _ = read_events(url, 7, params, last)
        pieces += page
        last = pieces[-1]["id"]
    assert [e["id"] for e in pieces] == [e["id"] for e in everything]
    assert pieces == everything


def test_a_live_stream_sees_new_jobs_across_stream_ends_and_wait_follows_events(
    served: tuple[Settings, str],
) -> None:
    settings, url = served
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def follow() -> None:
        with Client(url) as client:
            for event in client.events(states=["done"]):
                seen.append(event)
                if stop.is_set():
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(2 * settings.events_stream_s + 0.5)  # the first streams end while idle
    ids = upload(url, range(7100, 7104), key="events-live")
    with Client(url) as client:
        # The keyed request's jobs, their current state first (snapshot), then what comes.
        first = next(client.events(idempotency_key="events-live"))
        assert first["job_id"] in ids and first.get("snapshot") is True
        client.wait(ids, timeout_s=120, progress=False)
    deadline = time.monotonic() + 30
    while not set(ids) <= {e["job_id"] for e in seen}:
        assert time.monotonic() < deadline, f"done events never arrived: {seen}"
        time.sleep(0.1)
    stop.set()
    mine = [e for e in seen if e["job_id"] in ids]
    assert len(mine) == 4 and all(e["state"] == "done" for e in mine)
    assert len({e["id"] for e in seen}) == len(seen)  # no event twice across reconnects


def test_bad_event_streams_get_clear_errors_not_streams(served: tuple[Settings, str]) -> None:
    settings, url = served
    resp = httpx.get(f"{url}/v1/events", params={"idempotency_key": "never-used"}, timeout=30)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = httpx.get(f"{url}/v1/events", headers={"Last-Event-ID": "abc"}, timeout=30)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"
    resp = httpx.get(f"{url}/v1/events", params={"state": "exploded"}, timeout=30)
    assert resp.status_code == 422


def test_a_resume_from_before_the_kept_window_is_410_events_expired(
    served: tuple[Settings, str],
) -> None:
    settings, url = served
    ids = upload(url, range(7200, 7202))
    with Client(url) as client:
        client.wait(ids, timeout_s=120, progress=False)
        # Trim everything written so far, as the queue does past RAYLENS_EVENTS_RETENTION_S.
        store = SqliteJobStore(settings.sqlite_path)
        try:
            assert store.trim_events(time.time() + 1) > 0
        finally:
            store.close()
        with pytest.raises(ApiError) as err:
            next(client.events(ids, last_event_id="1"))
        assert err.value.status == 410 and err.value.code == "events_expired"
        # From now on nothing is missing: a new job's events arrive.
        more = upload(url, range(7300, 7301))
        states = []
        for event in client.events(more):
            states.append(event["state"])
            if event["state"] == "done":
                break
        assert states[-1] == "done"
