"""Faces and video through the whole system: HTTP upload -> worker (OpenCLIP + dlib faces,
PyAV frames) -> Qdrant -> face and frame search. Real photos from scikit-image, a video
encoded here from them; the ingress app runs in-process against real actors."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata  # dev dependency: its bundled photos are test data

from raylens.actors import launch
from raylens.cluster import intake
from raylens.cluster.settings import Settings
from raylens.serve_app.app import create_app

from _ports import free_port
from _system_fixtures import tiny_settings

pytestmark = pytest.mark.integration

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    im = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    return np.asarray(im.resize(size, Image.Resampling.BICUBIC) if size else im)


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def video_of_photos(
    seconds_each: int = 1, fps: int = 10, size: tuple[int, int] = (512, 384)
) -> bytes:
    """An mp4 showing each photo for `seconds_each` seconds, encoded with PyAV."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream(
            "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps
        )
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for name in PHOTOS:
            frame_rgb = photo(name, size)
            for _ in range(seconds_each * fps):
                frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


class Api:
    """The real HTTP app in this process, on the real actors of the test cluster."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            base = "http://localhost"  # a Host the ingress answers (bound to 127.0.0.1)
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return await client.request(method, path, timeout=120, **kw)

        return asyncio.run(run())

    def upload(self, name: str, data: bytes, pipeline: str = "both") -> str:
        resp = self(
            "POST", "/v1/jobs", files=[("files", (name, data))], data={"pipeline": pipeline}
        )
        assert resp.status_code == 202, resp.text
        return resp.json()["jobs"][0]["id"]

    def wait(self, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self("GET", f"/v1/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)


@pytest.fixture(scope="module")
def api(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    settings = tiny_settings(
        tmp_path_factory.mktemp("faces") / "data",
        tiny_model,
        max_image_pixels=20_000_000,
        lease_timeout_s=60,
    )
    launch.start(settings)
    yield Api(settings)
    launch.stop(settings, timeout_s=5)


def test_an_uploaded_photo_lists_its_faces_and_face_search_finds_it_after_a_flip(api: Api) -> None:
    job = api.wait(api.upload("astronaut.jpg", jpeg(photo("astronaut"))))
    assert job["state"] == "done", job
    result = job["result"]
    assert result["faces_found"] >= 1 and result["point_id"]
    face = result["faces"][0]
    x0, y0, x1, y1 = face["box"]
    assert 150 < x0 < 200 and 240 < x1 < 290 and 50 < y0 < 100 and 140 < y1 < 190, face
    assert len(face["landmarks"]) == 5 and face["point_id"]

    flipped = jpeg(np.ascontiguousarray(photo("astronaut")[:, ::-1]))
    found = api(
        "POST", "/v1/faces/search", files={"image": ("q.jpg", flipped)}, data={"top_k": "3"}
    )
    assert found.status_code == 200, found.text
    body = found.json()
    top = body["hits"][0]
    assert top["job_id"] == job["id"] and top["face_index"] == 0 and top["distance"] < 0.6
    assert top["parent_point_id"] == result["point_id"] and top["name"] == "astronaut.jpg"
    assert body["query"]["faces_in_image"] >= 1 and body["max_distance"] == 0.6

    by_id = api("POST", "/v1/faces/search", json={"face_id": face["point_id"], "top_k": 1})
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["hits"][0]["id"] == face["point_id"]
    assert by_id.json()["hits"][0]["distance"] == pytest.approx(0.0, abs=1e-4)


def test_a_photo_without_people_has_zero_faces_and_cannot_be_a_face_query(api: Api) -> None:
    coffee = jpeg(photo("coffee"))
    job = api.wait(api.upload("coffee.jpg", coffee))
    assert job["state"] == "done" and job["result"]["faces_found"] == 0
    resp = api("POST", "/v1/faces/search", files={"image": ("coffee.jpg", coffee)})
    assert resp.status_code == 422 and "no face" in resp.json()["error"]["message"]
    missing = api("POST", "/v1/faces/search", json={"face_id": "0" * 32})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


class QdrantLike(BaseHTTPRequestHandler):
    """Answers the three requests a face lookup by id makes as a Qdrant 1.x server does: a
    collection that exists, no point for a UUID, and a 400 for an id that is no point id."""

    asked: list[str] = []

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.endswith("/exists"):
            self._answer(200, {"result": {"exists": True}, "status": "ok", "time": 0.0})
        else:
            self._answer(200, {"title": "qdrant - vector search engine", "version": "1.12.0"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.asked.extend(str(i) for i in body.get("ids", []))
        try:
            [uuid.UUID(str(i)) for i in body.get("ids", [])]
        except ValueError:
            error = "Format error in JSON body: value is not a valid point ID, valid values are "
            self._answer(400, {"status": {"error": error + "either an unsigned integer or a UUID"}})
            return
        self._answer(200, {"result": [], "status": "ok", "time": 0.0})

    def log_message(self, *args: Any) -> None:
        pass


def test_face_search_by_an_unknown_face_id_is_404_on_a_qdrant_server_whatever_the_id(
    tmp_path: Path, tiny_model: Any
) -> None:
    """A Qdrant server answers an id that is no UUID with a 400, which raylens read as an outage:
    503 index_unavailable, retried 8 times by the client. No stored face has such an id: 404."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), QdrantLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        api = Api(tiny_settings(tmp_path / "data", tiny_model, qdrant_url=url))
        for face_id in ("nope", "123", "0" * 32, str(uuid.uuid4())):
            resp = api("POST", "/v1/faces/search", json={"face_id": face_id})
            assert resp.status_code == 404, (face_id, resp.text)
            assert resp.json()["error"]["code"] == "not_found" and face_id in resp.text
        assert QdrantLike.asked == ["0" * 32, QdrantLike.asked[-1]]  # only UUIDs were looked up
    finally:
        server.shutdown()
        server.server_close()


def test_the_pipeline_chooses_embedding_faces_or_both(api: Api) -> None:
    pic = photo("astronaut", (400, 400))
    embed_only = api.wait(api.upload("e.jpg", jpeg(pic), "embed"))["result"]
    assert embed_only["point_id"] and "faces_found" not in embed_only
    faces_only = api.wait(api.upload("f.jpg", jpeg(pic), "faces"))["result"]
    assert "point_id" not in faces_only and faces_only["faces_found"] >= 1
    bad = api("POST", "/v1/jobs", files=[("files", ("x.jpg", jpeg(pic)))], data={"pipeline": "ocr"})
    assert bad.status_code == 422


def test_a_video_is_one_job_with_frame_vectors_and_timestamps_found_by_image_text_and_face(
    api: Api,
) -> None:
    clip = video_of_photos()
    job = api.wait(api.upload("clip.mp4", clip))
    assert job["state"] == "done", job
    result = job["result"]
    assert result["media"] == "video" and result["frames"] == 4
    assert result["video"]["frames_sampled"] == 4 and result["faces_found"] >= 1

    # The coffee photo is on screen from 1 s to 2 s: searching with it finds that frame.
    hits = api(
        "POST",
        "/v1/search",
        files={"image": ("q.jpg", jpeg(photo("coffee", (512, 384))))},
        data={"top_k": "10", "filters": f'{{"video_id": "{job["id"]}"}}'},
    ).json()["hits"]
    assert hits[0]["video_id"] == job["id"] and hits[0]["timestamp_s"] == pytest.approx(
        1.0, abs=0.11
    )
    assert sorted(h["timestamp_s"] for h in hits) == pytest.approx([0, 1, 2, 3], abs=0.11)

    text = api("POST", "/v1/search", json={"text": "a photo", "top_k": 50}).json()["hits"]
    frames = [h for h in text if h["video_id"] == job["id"]]
    assert len(frames) == 4 and all(h["payload"]["media"] == "video" for h in frames)

    faces = api(
        "POST", "/v1/faces/search", files={"image": ("a.jpg", jpeg(photo("astronaut")))}
    ).json()["hits"]
    on_video = [h for h in faces if h["video_id"] == job["id"]]
    assert on_video and on_video[0]["timestamp_s"] == pytest.approx(0.0, abs=0.11)


def test_a_corrupt_video_fails_with_its_own_code_and_ingest_picks_up_video_files(
    api: Api, tmp_path: Path
) -> None:
    clip = video_of_photos()
    broken = clip[:40] + bytes(len(clip) // 2)
    job = api.wait(api.upload("broken.mp4", broken))
    assert job["state"] == "failed" and job["error"]["code"] == "corrupt_video", job
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(clip)
    (tmp_path / "media" / "b.jpg").write_bytes(jpeg(photo("rocket")))
    (tmp_path / "media" / "notes.txt").write_text("not media")
    found = sorted(p.name for p in intake.discover(tmp_path / "media"))
    assert found == ["a.mp4", "b.jpg"]


# ---- delete (issue 15) -------------------------------------------------------------------------
def hit_shas(hits: list[dict[str, Any]]) -> set[str]:
    return {h["sha256"] for h in hits}


def test_deleting_a_photo_removes_its_image_and_face_points_payload_and_job(api: Api) -> None:
    data = jpeg(photo("astronaut", (448, 448)))  # bytes of its own: no other test's content
    job = api.wait(api.upload("to-delete.jpg", data))
    assert job["state"] == "done" and job["result"]["faces_found"] >= 1, job
    sha = job["sha256"]
    before = api("POST", "/v1/search", files={"image": ("q.jpg", data)}, data={"top_k": "5"})
    assert sha in hit_shas(before.json()["hits"])

    resp = api("DELETE", f"/v1/jobs/{job['id']}")

    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["sha256"] == [sha] and out["found"] is True
    assert out["jobs"]["removed"] == 1 and out["jobs"]["by_state"] == {"done": 1}
    assert out["points"] == {"images": 1, "frames": 0, "faces": job["result"]["faces_found"]}
    assert out["payloads"] == {"removed": 1, "bytes": len(data)}
    assert out["by"].startswith("http ")
    assert api("GET", f"/v1/jobs/{job['id']}").status_code == 404
    # Search by the image's own vector, by text and by its face: none of its points.
    by_image = api("POST", "/v1/search", files={"image": ("q.jpg", data)}, data={"top_k": "50"})
    assert sha not in hit_shas(by_image.json()["hits"])
    by_text = api("POST", "/v1/search", json={"text": "a photo", "top_k": 50}).json()["hits"]
    assert sha not in hit_shas(by_text)
    faces = api("POST", "/v1/faces/search", files={"image": ("a.jpg", data)}, data={"top_k": "50"})
    assert job["id"] not in {h["job_id"] for h in faces.json()["hits"]}
    # A repeat removes nothing more, and says what was deleted before.
    again = api("DELETE", f"/v1/jobs/{job['id']}").json()
    assert again["jobs"]["removed"] == 0 and again["jobs"]["deleted_before"] == [job["id"]]
    assert again["points"] == {"images": 0, "frames": 0, "faces": 0}
    assert again["payloads"]["removed"] == 0 and again["found"] is True
    # The same bytes uploaded again are a new job, searchable again.
    fresh = api.wait(api.upload("again.jpg", data))
    assert fresh["state"] == "done" and fresh["id"] != job["id"]


def test_deleting_a_video_by_sha256_removes_every_frame_and_face_point(api: Api) -> None:
    clip = video_of_photos(size=(480, 352))  # bytes of its own
    job = api.wait(api.upload("delete-me.mp4", clip))
    assert job["state"] == "done" and job["result"]["frames"] == 4, job
    text = api("POST", "/v1/search", json={"text": "a photo", "top_k": 100}).json()["hits"]
    assert len([h for h in text if h["video_id"] == job["id"]]) == 4

    resp = api("DELETE", f"/v1/images/{job['sha256'].upper()}")  # either case

    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["points"]["frames"] == 4 and out["points"]["images"] == 0
    assert out["points"]["faces"] == job["result"]["faces_found"] >= 1
    assert out["jobs"]["ids"] == [job["id"]]
    text = api("POST", "/v1/search", json={"text": "a photo", "top_k": 100}).json()["hits"]
    assert not [h for h in text if h["video_id"] == job["id"] or h["sha256"] == job["sha256"]]
    faces = api(
        "POST", "/v1/faces/search", files={"image": ("a.jpg", jpeg(photo("astronaut")))},
        data={"top_k": "50"},
    ).json()["hits"]  # fmt: skip
    assert job["id"] not in {h["video_id"] for h in faces}


def test_deleting_what_raylens_never_held_is_404_and_a_bad_sha256_is_422(api: Api) -> None:
    unknown = api("DELETE", f"/v1/images/{'0' * 64}")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert api("DELETE", "/v1/jobs/no-such-job").status_code == 404
    bad = api("DELETE", "/v1/images/not-a-sha")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_images_pages_through_what_is_indexed_and_a_deleted_image_leaves_the_list(
    api: Api,
) -> None:
    listed_job = api.wait(api.upload("listed.jpg", jpeg(photo("astronaut", (416, 416)))))
    gone_job = api.wait(api.upload("gone.jpg", jpeg(photo("coffee", (416, 320)))))
    assert api("DELETE", f"/v1/images/{gone_job['sha256']}").status_code == 200

    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api("GET", "/v1/images", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["images"]) <= 2
        seen.extend(body["images"])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    by_job = {e["job_id"]: e for e in seen}
    assert len(by_job) == len(seen)  # no entry twice across pages
    entry = by_job[listed_job["id"]]
    assert entry["sha256"] == listed_job["sha256"] and entry["name"] == "listed.jpg"
    assert entry["media"] == "image" and entry["faces"] == listed_job["result"]["faces_found"]
    assert entry["point_id"] == listed_job["result"]["point_id"] and entry["model_id"]
    assert gone_job["id"] not in by_job
    assert any(e["media"] == "video" and e["frames"] == 4 for e in seen)
    assert api("GET", "/v1/images", params={"limit": 0}).status_code == 422
    model = api("GET", "/v1/model")
    assert model.status_code == 200, model.text
    assert model.json()["model_id"] == entry["model_id"] and model.json()["switched_at"] is None
    assert "clip_model_config" not in model.json() and model.json()["previous"] == []
