"""One contract for both vector-index backends, through VectorIndex (what raylens calls).

- "edge": the embedded default, Qdrant Edge (qdrant-edge-py) in the data dir;
- "client": the server backend (qdrant-client). No Qdrant server can be installed on the
  machines these tests run on, so it runs on the client's own local mode, which answers the
  same requests in-process; the request building against a real server URL is covered in
  tests/test_index_unit.py and by a small HTTP stand-in in tests/test_faces_video_system.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.settings import Settings
from raylens.errors import SettingsError

DIM = 16
FACES = "raylens_faces"


def open_index(kind: str, data_dir: Path, dim: int | None = DIM) -> VectorIndex:
    settings = Settings(data_dir=data_dir)
    if kind == "edge":
        return VectorIndex(settings, dim)
    from qdrant_client import QdrantClient

    from raylens.cluster.index_client import ClientBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "payload indexes have no effect in local mode"
        client = QdrantClient(path=str(data_dir / "client-local"))
        return VectorIndex(settings, dim, backend=ClientBackend(client, "client local mode"))


@pytest.fixture(params=["edge", "client"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def index(kind: str, tmp_path: Path) -> Iterator[VectorIndex]:
    ix = open_index(kind, tmp_path)
    yield ix
    ix.close()


def rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def payload(k: int) -> dict:
    return {
        "sha256": f"sha-{k}",
        "job_id": f"job-{k // 10}",
        "n": k,
        "even": k % 2 == 0,
        "media": "video" if k % 3 == 0 else "image",
    }


def fill(ix: VectorIndex, n: int = 50) -> tuple[list[str], np.ndarray]:
    ids = [point_id(f"sha-{k}", "m") for k in range(n)]
    vecs = rows(n)
    assert ix.upsert(ids, vecs, [payload(k) for k in range(n)]) == n
    return ids, vecs


def test_upsert_count_get_and_the_same_ids_overwrite(index: VectorIndex) -> None:
    ids, vecs = fill(index)
    assert index.count() == 50
    fill(index)  # a retry writes the same points: no new ones
    assert index.count() == 50
    got = index.get(ids[7])
    assert got is not None and got["id"] == ids[7] and got["payload"] == payload(7)
    unit = vecs[7] / np.linalg.norm(vecs[7])  # cosine collections may keep vectors normalised
    assert np.allclose(got["vector"] / np.linalg.norm(got["vector"]), unit, atol=1e-5)
    assert sorted(index.point_ids()) == sorted(ids)


def test_search_is_best_first_with_cosine_scores(index: VectorIndex) -> None:
    ids, vecs = fill(index)
    hits = index.search(vecs[3], top_k=5)
    assert [h["id"] for h in hits][:1] == [ids[3]]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 5
    assert hits[0]["payload"] == payload(3)


def test_faces_are_compared_by_euclidean_distance_smaller_first(index: VectorIndex) -> None:
    ids = [point_id(f"face-{k}", "dlib") for k in range(20)]
    vecs = rows(20, 128, seed=1)
    index.upsert(ids, vecs, [{"sha256": f"s{k}"} for k in range(20)], FACES)
    hits = index.search(vecs[4], top_k=3, collection=FACES)
    assert hits[0]["id"] == ids[4] and hits[0]["score"] == pytest.approx(0.0, abs=1e-3)
    assert hits[1]["score"] == pytest.approx(float(np.linalg.norm(vecs[4] - vecs[int(
        ids.index(hits[1]["id"]))])), rel=1e-3)  # fmt: skip
    assert [h["score"] for h in hits] == sorted(h["score"] for h in hits)
    assert index.count(FACES) == 20 and index.count() == 0


@pytest.mark.parametrize(
    ("filters", "expect"),
    [
        ({"job_id": "job-2"}, lambda k: k // 10 == 2),
        ({"n": 17}, lambda k: k == 17),
        ({"even": True}, lambda k: k % 2 == 0),
        ({"even": False, "media": "video"}, lambda k: k % 2 == 1 and k % 3 == 0),
        ({"job_id": "job-404"}, lambda k: False),
    ],
)
def test_filters_match_exact_payload_values(index: VectorIndex, filters: dict, expect) -> None:
    ids, vecs = fill(index)
    want = {ids[k] for k in range(50) if expect(k)}
    hits = index.search(vecs[0], top_k=50, filters=filters)
    assert {h["id"] for h in hits} == want
    assert all(all(h["payload"][k] == v for k, v in filters.items()) for h in hits)
    # and top_k of them are the best top_k of the matching ones
    best = index.search(vecs[0], top_k=3, filters=filters)
    assert [h["id"] for h in best] == [h["id"] for h in hits[:3]]


def test_delete_removes_points_and_absent_ids_are_no_error(index: VectorIndex) -> None:
    ids, vecs = fill(index)
    index.delete(ids[:5] + [point_id("never", "m")])
    assert index.count() == 45 and index.get(ids[0]) is None
    assert ids[0] not in {h["id"] for h in index.search(vecs[0], top_k=50)}
    index.delete([], FACES)  # a collection never written: nothing to do


def test_unknown_and_non_uuid_ids_read_as_none(index: VectorIndex) -> None:
    fill(index, 3)
    assert index.get(point_id("nope", "m")) is None
    assert index.get("not-a-uuid") is None
    assert index.get(point_id("nope", "m"), FACES) is None


def test_an_empty_or_missing_collection_answers_empty(index: VectorIndex) -> None:
    assert index.count(FACES) == 0
    assert index.search(rows(1, 128)[0], collection=FACES) == []
    assert index.point_ids(collection=FACES) == []


def test_a_model_of_another_size_is_refused_with_the_setting_to_change(
    kind: str, tmp_path: Path
) -> None:
    ix = open_index(kind, tmp_path)
    fill(ix, 5)
    with pytest.raises(SettingsError, match="16-d vectors but the model makes 32-d"):
        ix.upsert([point_id("x", "m2")], rows(1, 32), [{}])
    with pytest.raises(SettingsError, match="a 32-d query cannot search"):
        ix.search(rows(1, 32)[0])
    ix.close()
    with pytest.raises(SettingsError, match="RAYLENS_QDRANT_COLLECTION"):
        open_index(kind, tmp_path, dim=32)


def test_points_survive_closing_and_reopening(kind: str, tmp_path: Path) -> None:
    ix = open_index(kind, tmp_path)
    ids, vecs = fill(ix)
    ix.close()
    again = open_index(kind, tmp_path, dim=None)
    try:
        assert again.count() == 50
        assert again.search(vecs[9], top_k=1)[0]["id"] == ids[9]
    finally:
        again.close()


def test_a_batch_whose_parts_disagree_is_refused_before_writing(index: VectorIndex) -> None:
    with pytest.raises(ValueError, match="needs as many vectors and payloads"):
        index.upsert([point_id("a", "m"), point_id("b", "m")], rows(1), [{}])
    assert index.count() == 0


def test_delete_content_removes_images_frames_and_faces_of_every_model_and_repeats(
    index: VectorIndex,
) -> None:
    ids, vecs = fill(index)  # sha-0 .. sha-49; k % 3 == 0 are video frames
    other_model = [point_id("sha-4", "another-model"), point_id("sha-6", "another-model")]
    index.upsert(other_model, rows(2, seed=5), [payload(4), payload(6)])
    face_ids = [point_id(f"sha-{k}", "dlib", f"image:face:{k}") for k in (4, 6, 7)]
    index.upsert(face_ids, rows(3, 128, seed=2), [{"sha256": f"sha-{k}"} for k in (4, 6, 7)], FACES)

    removed = index.delete_content(["sha-4", "sha-6", "sha-never"])

    # sha-4: an image under two models; sha-6: a frame (6 % 3 == 0) under two models
    assert removed == {"images": 2, "frames": 2, "faces": 2}
    assert index.count() == 52 - 4 and index.count(FACES) == 1
    for gone in (ids[4], ids[6], *other_model, face_ids[0], face_ids[1]):
        assert index.get(gone) is None and index.get(gone, FACES) is None
    assert {ids[4], ids[6]}.isdisjoint(h["id"] for h in index.search(vecs[4], top_k=60))
    assert index.get(ids[7]) is not None and index.get(face_ids[2], FACES) is not None
    assert index.delete_content(["sha-4", "sha-6"]) == {"images": 0, "frames": 0, "faces": 0}
    assert index.delete_content([]) == {"images": 0, "frames": 0, "faces": 0}


def test_vectors_of_two_models_are_never_mixed_in_a_collection_nor_compared(
    kind: str, tmp_path: Path
) -> None:
    ix = open_index(kind, tmp_path)
    ids = [point_id(f"sha-{k}", "model-a") for k in range(3)]
    ix.upsert(ids, rows(3), [{"sha256": f"sha-{k}", "model_id": "model-a"} for k in range(3)])

    with pytest.raises(SettingsError, match="holds vectors of model 'model-a'"):
        ix.upsert([point_id("x", "model-b")], rows(1), [{"sha256": "x", "model_id": "model-b"}])
    with pytest.raises(SettingsError, match="RAYLENS_QDRANT_COLLECTION"):
        ix.search(rows(1)[0], model_id="model-b")
    assert len(ix.search(rows(1)[0], top_k=3, model_id="model-a")) == 3
    assert ix.count() == 3
    ix.upsert([point_id("f", "dlib")], rows(1, 128), [{"sha256": "f", "model_id": "dlib"}], FACES)
    ix.close()
    # A new process learns the collection's model from its points.
    again = open_index(kind, tmp_path)
    with pytest.raises(SettingsError):
        again.search(rows(1)[0], model_id="model-b")
    again.search(rows(1, 128)[0], collection=FACES, model_id="dlib")
    again.close()


def test_existing_names_the_ids_a_collection_holds_and_delete_content_visits_each_collection(
    index: VectorIndex,
) -> None:
    ids, _ = fill(index, 5)
    new_ids = [point_id(f"sha-{k}", "model-b") for k in range(3)]
    index.upsert(new_ids, rows(3, seed=9), [payload(k) for k in range(3)], "images-b")

    assert set(index.existing([*ids[:2], new_ids[0], "not-a-uuid"])) == set(ids[:2])
    assert index.existing([new_ids[0], ids[0]], "images-b") == [new_ids[0]]
    assert index.existing([], "no-such-collection") == []

    removed = index.delete_content(["sha-1", "sha-2"], [index.collection, "images-b"])

    assert removed["images"] + removed["frames"] == 4
    assert index.existing(new_ids, "images-b") == [new_ids[0]]
    assert set(index.existing(ids)) == {ids[0], ids[3], ids[4]}


def test_an_alias_is_moved_in_one_step_on_a_server_and_absent_on_the_embedded_engine(
    kind: str, index: VectorIndex
) -> None:
    fill(index, 3)
    index.upsert([point_id("x", "b")], rows(1), [payload(1)], "images-b")

    first = index.point_alias("images-active", index.collection)
    if kind == "edge":
        assert first is False and index.alias_target("images-active") is None
        return
    assert first is True and index.alias_target("images-active") == index.collection
    assert index.point_alias("images-active", "images-b") is True
    assert index.alias_target("images-active") == "images-b"
