"""Faces/s and video frames/s through a running raylens (the HTTP ingress and one worker).

Real photos (scikit-image) are the face images; the video is encoded here from them. Called by
bench_http.py on its own cluster, after the HTTP figures.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    from skimage import data as skdata

    im = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    return np.asarray(im.resize(size, Image.Resampling.BICUBIC))


def _letterboxed(name: str, size: tuple[int, int]) -> np.ndarray:
    """The photo scaled to fit `size` without distortion, on a black background."""
    from skimage import data as skdata

    im = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    im.thumbnail(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size)
    canvas.paste(im, ((size[0] - im.width) // 2, (size[1] - im.height) // 2))
    return np.asarray(canvas)


def _jpeg(rgb: np.ndarray, comment: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, comment=comment.encode())
    return buf.getvalue()


def face_images(n: int) -> list[bytes]:
    """n distinct JPEGs of the astronaut photo at 512 to 2048 pixels (one face each)."""
    sides = (512, 1024, 1536, 2048)
    return [_jpeg(_photo("astronaut", (sides[i % 4], sides[i % 4])), f"copy {i}") for i in range(n)]


def video_bytes(seconds: int, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> bytes:
    """An H.264 mp4 cycling through the photos, 5 s each."""
    import av

    frames = {name: _letterboxed(name, size) for name in PHOTOS}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            rgb = frames[PHOTOS[(i // (5 * fps)) % len(PHOTOS)]]
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _wait(client: httpx.Client, ids: list[str], timeout_s: float = 1800) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    pending = list(dict.fromkeys(ids))
    jobs: dict[str, dict[str, Any]] = {}
    while pending:
        for job_id in list(pending):
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                jobs[job_id] = job
                pending.remove(job_id)
        if time.monotonic() > deadline:
            raise SystemExit(f"media bench: {len(pending)} jobs not done in {timeout_s}s")
        time.sleep(0.1)
    return [jobs[i] for i in ids]


def run_media(url: str, face_jobs: int = 24, video_seconds: int = 60) -> dict[str, Any]:
    images = face_images(face_jobs)
    clip = video_bytes(video_seconds)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        t0 = time.perf_counter()
        ids = []
        for i in range(0, len(images), 8):
            files = [("files", (f"face{i + k}.jpg", b)) for k, b in enumerate(images[i : i + 8])]
            resp = client.post("/v1/jobs", files=files, data={"pipeline": "faces"})
            resp.raise_for_status()
            ids += [j["id"] for j in resp.json()["jobs"]]
        jobs = _wait(client, ids)
        seconds = time.perf_counter() - t0
        faces = sum(j["result"]["faces_found"] for j in jobs if j["state"] == "done")
        out["faces"] = {
            "images": len(images),
            "faces_found": faces,
            "failed": sum(j["state"] == "failed" for j in jobs),
            "seconds": round(seconds, 2),
            "images_per_s": round(len(images) / seconds, 2),
            "faces_per_s": round(faces / seconds, 2),
            "image_sides_px": "512-2048",
        }
        t0 = time.perf_counter()
        resp = client.post(
            "/v1/jobs", files=[("files", ("clip.mp4", clip))], data={"pipeline": "both"}
        )
        resp.raise_for_status()
        (job,) = _wait(client, [resp.json()["jobs"][0]["id"]])
        seconds = time.perf_counter() - t0
        video = (job.get("result") or {}).get("video") or {}
        out["video"] = {
            "state": job["state"],
            "error": job.get("error"),
            "seconds_of_video": video_seconds,
            "resolution": "1280x720",
            "frames_decoded": video.get("frames_decoded"),
            "frames_sampled": video.get("frames_sampled"),
            "faces_found": (job.get("result") or {}).get("faces_found"),
            "seconds": round(seconds, 2),
            "sampled_frames_per_s": round((video.get("frames_sampled") or 0) / seconds, 2),
            "decoded_frames_per_s": round((video.get("frames_decoded") or 0) / seconds, 2),
        }
    return out


def print_media(media: dict[str, Any]) -> None:
    f, v = media["faces"], media["video"]
    print(
        f"faces (pipeline=faces, {f['images']} photos {f['image_sides_px']} px): "
        f"{f['images_per_s']} images/s, {f['faces_per_s']} faces/s "
        f"({f['faces_found']} faces, {f['failed']} failed, {f['seconds']} s)"
    )
    print(
        f"video ({v['seconds_of_video']} s {v['resolution']} H.264, pipeline=both): "
        f"{v['sampled_frames_per_s']} sampled frames/s ({v['frames_sampled']} sampled, "
        f"{v['frames_decoded']} decoded = {v['decoded_frames_per_s']} decoded frames/s, "
        f"{v['faces_found']} faces, {v['seconds']} s, state {v['state']})"
    )
