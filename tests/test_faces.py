"""Face detection and embeddings with dlib's real pretrained models, on real photos."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata  # dev dependency: its bundled photos are test data

from raylens.media.transforms import decode_image
from raylens.models.faces import Face, FaceOptions, load_face_backend

THRESHOLD = 0.6  # dlib's own same-person distance, the default RAYLENS_FACE_MATCH_THRESHOLD


@pytest.fixture(scope="module")
def backend():
    return load_face_backend(FaceOptions())


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def largest(faces: list[Face]) -> Face | None:
    """The face with the largest box (by area), whatever order the backend returned."""
    return max(faces, key=lambda f: f.area, default=None)


def faces_in(backend, data: bytes, keep_side: int = 1024):
    img = decode_image(data, 32, max_pixels=50_000_000, max_bytes=50_000_000, keep_side=keep_side)
    return backend.faces([img.full], [img.full_scale])[0]


def test_the_astronaut_photo_has_a_face_with_a_box_around_her_face(backend) -> None:
    faces = faces_in(backend, jpeg(skdata.astronaut()))
    assert faces, "no face found in skimage's astronaut photo"
    face = largest(faces)
    x0, y0, x1, y1 = face.box
    # Her face is at about x 175-265, y 75-165 in the 512 x 512 photo.
    assert 150 < x0 < 200 and 240 < x1 < 290 and 50 < y0 < 100 and 140 < y1 < 190, face.box
    assert face.vector.shape == (128,) and face.vector.dtype == np.float32
    assert len(face.landmarks) == 5
    assert all(x0 - 10 <= x <= x1 + 10 and y0 - 10 <= y <= y1 + 10 for x, y in face.landmarks)


@pytest.mark.parametrize("change", ["resize", "crop", "flip", "recompress"])
def test_the_same_face_matches_after_resize_crop_flip_and_recompression(backend, change) -> None:
    photo = skdata.astronaut()
    reference = largest(faces_in(backend, jpeg(photo)))
    if change == "resize":
        other = np.asarray(Image.fromarray(photo).resize((1100, 1100), Image.Resampling.BICUBIC))
    elif change == "crop":
        other = photo[20:300, 60:420]
    elif change == "flip":
        other = photo[:, ::-1]
    else:
        other = np.asarray(Image.open(io.BytesIO(jpeg(photo, quality=40))))
    face = largest(faces_in(backend, jpeg(np.ascontiguousarray(other))))
    assert face is not None, f"face lost after {change}"
    distance = float(np.linalg.norm(face.vector - reference.vector))
    assert distance < THRESHOLD, f"{change}: distance {distance:.3f}"


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_photos_without_people_give_zero_faces(backend, name) -> None:
    assert faces_in(backend, jpeg(getattr(skdata, name)())) == []


def test_a_batch_returns_faces_per_image_in_order_with_boxes_in_original_pixels(backend) -> None:
    big = np.asarray(Image.fromarray(skdata.astronaut()).resize((2048, 2048)))
    small = faces_in(backend, jpeg(skdata.astronaut()))
    scaled = faces_in(backend, jpeg(big), keep_side=512)  # detected at 1/4 scale
    coffee = decode_image(
        jpeg(skdata.coffee()), 32, max_pixels=10**8, max_bytes=10**8, keep_side=512
    )
    astro = decode_image(jpeg(big), 32, max_pixels=10**8, max_bytes=10**8, keep_side=512)
    batch = backend.faces([coffee.full, astro.full], [coffee.full_scale, astro.full_scale])
    assert batch[0] == [] and len(batch[1]) == len(scaled)
    box_small, box_big = largest(small).box, largest(scaled).box
    assert all(abs(b / 4 - s) < 12 for b, s in zip(box_big, box_small)), (box_big, box_small)


def test_threads_sharing_one_backend_get_the_same_faces_as_one_thread(backend) -> None:
    """The worker runs its batch loop and query calls (faces_in_bytes) on one backend from
    several threads at once; dlib's detector, shape predictor and ResNet are not documented as
    thread-safe, so each concurrent result must equal the single-threaded one exactly."""
    astronaut = skdata.astronaut()
    images = [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    scales = [1.0, 1.0]

    def key(batch: list[list[Face]]) -> list[list[tuple[Any, ...]]]:
        return [
            [(f.box, f.score, tuple(f.landmarks), f.vector.tobytes()) for f in faces]
            for faces in batch
        ]

    expected = key(backend.faces(images, scales))
    assert all(expected)  # a face in every image, or the comparison would prove little
    start = threading.Barrier(4)

    def run(_: int) -> list[list[list[tuple[Any, ...]]]]:
        start.wait()
        return [key(backend.faces(images, scales)) for _ in range(2)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(run, range(4)) for r in rs]
    assert len(results) == 8
    assert [r == expected for r in results] == [True] * 8  # no thread saw other results
