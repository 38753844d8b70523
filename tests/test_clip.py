"""Unit: the OpenCLIP embedder through the real open_clip loading path, tiny architecture."""

from __future__ import annotations

import time

import numpy as np
import pytest

from raylens.actors import clip
from raylens.actors.clip import ClipEmbedder
from raylens.actors.model_id import model_id_for
from raylens.actors.transforms import decode_image
from raylens.errors import ModelLoadError

from _images import image_bytes


@pytest.fixture(scope="module")
def embedder(tiny_model) -> ClipEmbedder:
    return ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )


def _pixels(e: ClipEmbedder, seeds) -> np.ndarray:
    return np.stack(
        [
            decode_image(image_bytes(s), e.image_size, max_pixels=10**8, max_bytes=10**8).pixels
            for s in seeds
        ]
    )


def test_embedder_reports_what_it_loaded_when_given_a_checkpoint(embedder, tiny_model) -> None:
    r = embedder.report()
    assert r["dim"] == tiny_model.dim and r["image_size"] == tiny_model.image_size
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["load_seconds"] > 0
    assert r["model_id"].startswith(f"{tiny_model.name}:{tiny_model.checkpoint_path.name}:")
    assert r["model_id"] == model_id_for(tiny_model.name, str(tiny_model.checkpoint_path))


def test_embedder_returns_unit_float32_vectors_when_given_a_batch(embedder) -> None:
    v = embedder.embed_images(_pixels(embedder, range(5)))
    assert v.shape == (5, embedder.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1])


def test_embedder_gives_the_same_vectors_when_batched_or_one_by_one(embedder) -> None:
    px = _pixels(embedder, range(4))
    batch = embedder.embed_images(px)
    single = np.concatenate([embedder.embed_images(px[i : i + 1]) for i in range(4)])
    assert np.allclose(batch, single, atol=1e-5)


def test_embedder_loads_once_when_called_many_times(embedder) -> None:
    before = embedder.report()["load_count"]
    for _ in range(5):
        embedder.embed_images(_pixels(embedder, [1, 2]))
        embedder.embed_texts(["a photo"])
    assert embedder.report()["load_count"] == before


def test_embedder_weights_are_identical_across_instances_when_pretrained_is_none(
    tiny_model,
) -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = ClipEmbedder(tiny_model.name, "none", model_config=tiny_model.config_path)
    with pytest.warns(UserWarning):
        b = ClipEmbedder(tiny_model.name, "none", model_config=tiny_model.config_path)
    px = _pixels(a, [7])
    assert np.allclose(a.embed_images(px), b.embed_images(px))
    assert a.model_id == f"{tiny_model.name}:random-seed0"


@pytest.mark.parametrize(
    ("model", "pretrained", "setting"),
    [
        ("raylens-tiny", "/nonexistent/weights.pt", "RAYLENS_CLIP_PRETRAINED"),
        ("ViT-B-32", "no_such_tag", "RAYLENS_CLIP_PRETRAINED"),
        ("NoSuchNet-99", "none", "RAYLENS_CLIP_MODEL"),
    ],
)
def test_embedder_fails_naming_the_setting_when_the_model_cannot_load(
    tiny_model, model, pretrained, setting
) -> None:
    with pytest.raises(ModelLoadError, match=setting):
        ClipEmbedder(model, pretrained, model_config=tiny_model.config_path)


def test_embedder_fails_fast_naming_the_setting_when_weights_cannot_be_downloaded(
    monkeypatch,
) -> None:
    monkeypatch.setattr(clip, "_cached_weights", lambda *a: None)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRETRAINED") as info:
        ClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", warmup=False)
    assert time.monotonic() - t0 < 10
    assert "local checkpoint" in info.value.message


def test_embedder_refuses_fp16_when_running_on_cpu(tiny_model) -> None:
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRECISION"):
        ClipEmbedder(
            tiny_model.name,
            str(tiny_model.checkpoint_path),
            device="cpu",
            precision="fp16",
            model_config=tiny_model.config_path,
        )
