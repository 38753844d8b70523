"""Unit: the OpenCLIP embedder through the real open_clip loading path, tiny architecture."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import HF_WEIGHTS_NAME

from raylens.errors import ModelLoadError
from raylens.media.transforms import decode_image
from raylens.models import clip, weights
from raylens.models.clip import ClipEmbedder
from raylens.models.device import select_device, select_dtype

from _images import image_bytes

REAL_MODEL, REAL_TAG = "ViT-B-32", "laion2b_s34b_b79k"


@pytest.fixture(scope="module")
def embedder(tiny_model) -> ClipEmbedder:
    return ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )


@pytest.fixture()
def dead_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a hub endpoint nobody listens on (port 9: discard)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def _pixels(size: int, seeds) -> np.ndarray:
    return np.stack(
        [
            decode_image(image_bytes(s), size, max_pixels=10**8, max_bytes=10**8).pixels
            for s in seeds
        ]
    )


# --- loading and reporting ----------------------------------------------------------------


def test_embedder_reports_what_it_loaded_when_given_a_checkpoint(embedder, tiny_model) -> None:
    sha12 = hashlib.sha256(tiny_model.checkpoint_path.read_bytes()).hexdigest()[:12]
    r = embedder.report()
    assert r["model_id"] == f"raylens-tiny:{tiny_model.checkpoint_path.name}:{sha12}"
    assert r["dim"] == tiny_model.dim == embedder.dim
    assert r["image_size"] == tiny_model.image_size == embedder.image_size
    assert r["device"] == "cpu" and r["dtype"] == "float32" and embedder.dtype == torch.float32
    assert r["load_seconds"] > 0 and r["warmup_seconds"] > 0 and r["load_count"] >= 1
    assert r["model_name"] == "raylens-tiny" and r["torch_version"] == torch.__version__
    assert not embedder.model.training


def test_embedder_report_holds_only_plain_values_so_reading_it_needs_no_torch(embedder) -> None:
    # Every process that reads a worker's report (supervisor, Serve replica, CLI) unpickles
    # it; a torch object in it (torch.__version__ is a TorchVersion) makes each import torch.
    plain = (str, int, float, bool, type(None))
    assert all(type(v) in plain for v in embedder.report().values()), embedder.report()


def test_embedder_uses_the_checkpoint_weights_when_given_a_checkpoint(embedder, tiny_model):
    saved = torch.load(tiny_model.checkpoint_path, weights_only=True)
    loaded = embedder.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_embedder_counts_one_load_when_called_many_times(tiny_model, monkeypatch) -> None:
    monkeypatch.setattr(clip, "_LOADS", 0)  # as in a fresh worker process
    e = ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )
    px = _pixels(e.image_size, [1, 2])
    for _ in range(10):
        e.embed_images(px)
        e.embed_texts(["a photo"])
    assert e.report()["load_count"] == 1


# --- embedding ----------------------------------------------------------------------------


def test_embedder_returns_unit_float32_vectors_when_given_a_batch(embedder) -> None:
    v = embedder.embed_images(_pixels(embedder.image_size, range(5)))
    assert v.shape == (5, embedder.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[1])


def test_embedder_gives_identical_vectors_when_the_input_is_identical(embedder) -> None:
    px = _pixels(embedder.image_size, [3])
    assert np.array_equal(embedder.embed_images(px), embedder.embed_images(px.copy()))


def test_embedder_gives_the_same_vectors_when_batched_or_one_by_one(embedder) -> None:
    px = _pixels(embedder.image_size, range(4))
    batch = embedder.embed_images(px)
    single = np.concatenate([embedder.embed_images(px[i : i + 1]) for i in range(4)])
    assert np.allclose(batch, single, atol=1e-5)


def test_embedder_halves_a_batch_and_keeps_the_size_when_the_device_runs_out_of_memory(
    tiny_model,
) -> None:
    emb = ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )
    px = _pixels(emb.image_size, range(11))
    expected = emb.embed_images(px)
    real = emb.model.encode_image
    seen: list[int] = []

    def encode_image(x, normalize=False):  # a device that holds at most 3 images at once
        seen.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, normalize=normalize)

    emb.model.encode_image = encode_image
    got = emb.embed_images(px)
    assert np.allclose(got, expected, atol=1e-5)
    assert seen[:3] == [11, 5, 2]  # 11 fails, 5 fails, then batches of 2 fit
    assert emb.fitting_batch == 2 and emb.oom_halvings == 2
    seen.clear()
    emb.embed_images(px[:4])
    assert seen == [2, 2]  # the next batch starts at the size that fitted
    assert emb.report()["oom_halvings"] == 2


def test_embedder_raises_when_even_one_image_does_not_fit(tiny_model) -> None:
    emb = ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )

    def encode_image(x, normalize=False):
        raise torch.OutOfMemoryError("CUDA out of memory")

    emb.model.encode_image = encode_image
    with pytest.raises(torch.OutOfMemoryError):
        emb.embed_images(_pixels(emb.image_size, range(4)))
    assert emb.fitting_batch == 1


def test_embedder_returns_an_empty_array_when_the_batch_is_empty(embedder) -> None:
    empty = np.zeros((0, embedder.image_size, embedder.image_size, 3), np.uint8)
    assert embedder.embed_images(empty).shape == (0, embedder.dim)
    assert embedder.embed_texts([]).shape == (0, embedder.dim)


def test_embedder_refuses_pixels_when_they_are_not_uint8_squares_of_its_size(embedder) -> None:
    s = embedder.image_size
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_images(np.zeros((1, s, s, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_images(np.zeros((1, s + 1, s, 3), np.uint8))


def test_embedder_embeds_texts_into_unit_vectors_when_given_texts(embedder) -> None:
    v = embedder.embed_texts(["a photo of a cat", "a photo of a dog", "a photo of a cat"])
    assert v.shape == (3, embedder.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[2]) and not np.allclose(v[0], v[1])


def test_embedder_runs_in_bf16_when_asked_on_cpu(embedder, tiny_model) -> None:
    e = ClipEmbedder(
        tiny_model.name,
        str(tiny_model.checkpoint_path),
        precision="bf16",
        model_config=tiny_model.config_path,
        warmup=False,
    )
    px = _pixels(e.image_size, range(3))
    v = e.embed_images(px)
    assert e.report()["dtype"] == "bfloat16" and v.dtype == np.float32
    cosine = (v * embedder.embed_images(px)).sum(axis=1)
    assert cosine.min() > 0.98  # same model, lower precision


# --- random weights -----------------------------------------------------------------------


def test_embedder_weights_are_identical_across_instances_when_pretrained_is_none(
    tiny_model,
) -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = ClipEmbedder(tiny_model.name, "none", model_config=tiny_model.config_path)
    torch.manual_seed(12345)  # whatever the process did before, the weights are the same
    with pytest.warns(UserWarning, match="meaningless"):
        b = ClipEmbedder(tiny_model.name, "none", model_config=tiny_model.config_path)
    px = _pixels(a.image_size, [7, 8])
    assert np.array_equal(a.embed_images(px), b.embed_images(px))
    assert a.model_id == b.model_id == "raylens-tiny:random-seed0"


# --- load failures name the setting to fix ------------------------------------------------


@pytest.mark.parametrize(
    ("model", "pretrained", "setting", "also"),
    [
        ("raylens-tiny", "/nonexistent/weights.pt", "RAYLENS_CLIP_PRETRAINED", "does not exist"),
        ("raylens-tiny", "weights.safetensors", "RAYLENS_CLIP_PRETRAINED", "does not exist"),
        (REAL_MODEL, "no_such_tag", "RAYLENS_CLIP_PRETRAINED", REAL_TAG),
        ("NoSuchNet-99", "none", "RAYLENS_CLIP_MODEL", "NoSuchNet-99"),
    ],
    ids=["missing-checkpoint", "missing-relative-checkpoint", "unknown-tag", "unknown-model"],
)
def test_embedder_fails_naming_the_setting_when_the_model_cannot_load(
    tiny_model, model, pretrained, setting, also
) -> None:
    with pytest.raises(ModelLoadError, match=setting) as info:
        ClipEmbedder(model, pretrained, model_config=tiny_model.config_path)
    assert also in info.value.message


def test_embedder_fails_naming_the_setting_when_the_checkpoint_is_garbage(tmp_path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRETRAINED"):
        ClipEmbedder("raylens-tiny", str(bad), warmup=False)


def test_embedder_fails_naming_the_setting_when_the_model_config_is_missing(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_MODEL_CONFIG"):
        ClipEmbedder("raylens-tiny", "none", model_config=tmp_path / "nope.json")


def test_embedder_refuses_fp16_when_running_on_cpu(tiny_model) -> None:
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRECISION"):
        ClipEmbedder(
            tiny_model.name,
            str(tiny_model.checkpoint_path),
            device="cpu",
            precision="fp16",
            model_config=tiny_model.config_path,
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_select_device_fails_naming_the_setting_when_cuda_is_missing() -> None:
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_DEVICE"):
        select_device("cuda")


def test_select_device_and_dtype_pick_defaults_when_auto() -> None:
    device = select_device("auto")
    assert device in ("cuda", "mps", "cpu")
    assert select_dtype("cuda", "auto") == torch.float16
    assert select_dtype("cpu", "auto") == torch.float32
    assert select_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRECISION"):
        select_dtype("cpu", "fp8")


# --- pretrained tags: cache first, fail fast offline --------------------------------------


def test_embedder_fails_fast_naming_the_setting_when_a_tag_cannot_be_downloaded(
    dead_hub,
) -> None:
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRETRAINED") as info:
        ClipEmbedder(REAL_MODEL, REAL_TAG, warmup=False)
    assert time.monotonic() - t0 < 10
    assert "could not be downloaded" in info.value.message and REAL_TAG in info.value.message
    assert "local checkpoint" in info.value.message


def test_embedder_fails_fast_when_hf_hub_offline_is_set_and_the_tag_is_not_cached(
    dead_hub, monkeypatch
) -> None:
    monkeypatch.setattr(dead_hub, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE.*RAYLENS_CLIP_PRETRAINED"):
        ClipEmbedder(REAL_MODEL, REAL_TAG, warmup=False)
    assert time.monotonic() - t0 < 10


def test_embedder_fails_fast_when_this_machine_is_offline() -> None:
    """The real environment, nothing patched: a tag that is neither cached nor downloadable."""
    if weights.cached_tag_file(open_clip.get_pretrained_cfg(REAL_MODEL, REAL_TAG)):
        pytest.skip(f"{REAL_MODEL}:{REAL_TAG} weights are cached here")
    from huggingface_hub import constants

    host, port, _ = weights.download_route(constants.ENDPOINT)
    if weights.reachable(host, port):
        pytest.skip(f"{host} is reachable: the tag would download (hundreds of MB)")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_PRETRAINED"):
        ClipEmbedder(REAL_MODEL, REAL_TAG, warmup=False)
    assert time.monotonic() - t0 < 60


def test_embedder_loads_a_cached_tag_without_the_network_when_the_hub_is_dead(
    dead_hub, tiny_model, monkeypatch
) -> None:
    """A tag whose weights are already in the HF cache loads offline, with the tag's own
    preprocessing (the file path open_clip gets would otherwise drop it)."""
    repo = Path(dead_hub.HF_HUB_CACHE) / "models--raylens--tiny-weights"  # the hub's layout
    commit = "a" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(tiny_model.checkpoint_path, repo / "snapshots" / commit / HF_WEIGHTS_NAME)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    tag_cfg = {
        "hf_hub": "raylens/tiny-weights/",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "resize_mode": "squash",
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_model.name, {"fake": tag_cfg})

    t0 = time.monotonic()
    e = ClipEmbedder(tiny_model.name, "fake", model_config=tiny_model.config_path)
    assert time.monotonic() - t0 < 10
    assert e.model_id == "raylens-tiny:fake"
    assert e.mean == (0.5, 0.5, 0.5) and e.std == (0.25, 0.25, 0.25)
    assert e.resize_mode == "squash" and e.interpolation == "bicubic"
    saved = torch.load(tiny_model.checkpoint_path, weights_only=True)
    assert torch.equal(saved["text_projection"], e.model.state_dict()["text_projection"])


def test_model_id_is_the_same_when_a_tag_is_spelled_as_open_clip_allows() -> None:
    from raylens.models.model_id import model_id_for

    assert model_id_for("ViT-B-32", "LAION2B-S34B-B79K") == "ViT-B-32:laion2b_s34b_b79k"
