"""RAYLENS_DECODE_DEVICE: JPEG decode, resize and crop in torch (nvJPEG on cuda; checked here on
the CPU device, the same code), matching the Pillow path and failing with its error codes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from raylens.cluster.pipeline import decode_device_for
from raylens.errors import DecompressionBomb, EmptyInput, ModelLoadError, TruncatedImage
from raylens.media.device_decode import decode_jpeg_on_device
from raylens.media.transforms import decode_image
from raylens.models.clip import ClipEmbedder

LIMITS = dict(max_pixels=50_000_000, max_bytes=50_000_000)


def _jpeg(size: tuple[int, int], exif_orientation: int | None = None) -> bytes:
    img = Image.fromarray(skdata.astronaut()).resize(size)
    buf = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("size", [(512, 512), (1600, 1200), (300, 900), (4000, 3000)])
@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_device_decode_matches_the_pillow_path_within_resampling_noise(size, mode) -> None:
    data = _jpeg(size)
    cpu = decode_image(data, 224, resize_mode=mode, **LIMITS)
    dev = decode_jpeg_on_device(data, 224, "cpu", resize_mode=mode, **LIMITS)
    assert isinstance(dev.pixels, torch.Tensor)
    assert dev.pixels.dtype == torch.uint8 and tuple(dev.pixels.shape) == (224, 224, 3)
    assert (dev.width, dev.height, dev.format) == (cpu.width, cpu.height, "jpeg")
    diff = np.abs(cpu.pixels.astype(int) - dev.pixels.numpy().astype(int))
    assert diff.mean() < 2.0, diff.mean()  # measured 0.2-1.3 grey levels


def test_device_decode_applies_exif_orientation_like_the_pillow_path() -> None:
    data = _jpeg((800, 600), exif_orientation=6)  # stored landscape, shown portrait
    cpu = decode_image(data, 224, **LIMITS)
    dev = decode_jpeg_on_device(data, 224, "cpu", **LIMITS)
    assert (dev.width, dev.height) == (cpu.width, cpu.height) == (600, 800)
    diff = np.abs(cpu.pixels.astype(int) - dev.pixels.numpy().astype(int))
    assert diff.mean() < 2.0


def test_device_decode_fails_with_the_cpu_paths_codes_and_leaves_other_formats_to_it() -> None:
    good = _jpeg((640, 480))
    with pytest.raises(EmptyInput):
        decode_jpeg_on_device(b"", 224, "cpu", **LIMITS)
    with pytest.raises(TruncatedImage):
        decode_jpeg_on_device(good[: len(good) // 2], 224, "cpu", **LIMITS)
    with pytest.raises(DecompressionBomb):
        decode_jpeg_on_device(good, 224, "cpu", max_pixels=640 * 480 - 1, max_bytes=10**8)
    png = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(png, "PNG")
    other = decode_jpeg_on_device(png.getvalue(), 224, "cpu", **LIMITS)
    assert isinstance(other.pixels, np.ndarray) and other.format == "png"


def test_embedder_takes_a_tensor_batch_and_gives_the_numpy_batchs_vectors(tiny_model) -> None:
    emb = ClipEmbedder(
        tiny_model.name, str(tiny_model.checkpoint_path), model_config=tiny_model.config_path
    )
    px = np.stack(
        [decode_image(_jpeg((200 + i, 150)), emb.image_size, **LIMITS).pixels for i in range(3)]
    )
    assert np.allclose(emb.embed_images(torch.from_numpy(px)), emb.embed_images(px), atol=1e-6)


def test_decode_device_setting_resolves_per_worker_and_refuses_cuda_without_one() -> None:
    assert decode_device_for("cpu", "cuda") == "cpu"
    assert decode_device_for("auto", "cuda") == "cuda"
    assert decode_device_for("auto", "cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="RAYLENS_DECODE_DEVICE=cuda"):
            decode_device_for("cuda", "cpu")
