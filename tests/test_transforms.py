"""Unit: safe decoding turns any bytes into an RGB square or an error with its own code."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raylens.actors import transforms
from raylens.actors.transforms import decode_image, sniff_format
from raylens.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyInput,
    InputError,
    TooLarge,
    TruncatedImage,
    UnsupportedFormat,
)

from _images import image_bytes

SIZE = 32


def _decode(data: bytes, max_pixels: int = 50_000_000, max_bytes: int = 10_000_000):
    return decode_image(data, SIZE, max_pixels=max_pixels, max_bytes=max_bytes)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyInput),
        (b"<!DOCTYPE html><html><body>hi</body></html>", UnsupportedFormat),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", UnsupportedFormat),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", UnsupportedFormat),
        (b"\x00\x01\x02\x03" * 100, UnsupportedFormat),
    ],
)
def test_decode_fails_with_its_code_when_input_is_not_an_image(data, error) -> None:
    with pytest.raises(error) as info:
        _decode(data)
    assert info.value.message


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_reports_truncation_when_the_file_is_cut(fmt, fraction) -> None:
    data = image_bytes(3, (200, 150), fmt)
    with pytest.raises((TruncatedImage, CorruptImage)) as info:
        _decode(data[: int(len(data) * fraction)])
    if fmt == "JPEG":
        assert isinstance(info.value, TruncatedImage)


def test_decode_refuses_before_decoding_pixels_when_the_image_is_a_bomb() -> None:
    bomb = _encode(Image.new("1", (3000, 3000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(DecompressionBomb, match="RAYLENS_MAX_IMAGE_PIXELS"):
        _decode(bomb, max_pixels=4_000_000)


def test_decode_refuses_when_the_input_is_over_the_byte_cap() -> None:
    with pytest.raises(TooLarge, match="RAYLENS_MAX_INPUT_BYTES"):
        _decode(image_bytes(1), max_bytes=100)


@pytest.mark.parametrize(
    "im",
    [
        Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        Image.new("L", (40, 30), 128),
        Image.new("1", (40, 30), 1),
        Image.new("RGBA", (40, 30), (255, 0, 0, 128)),
        Image.new("LA", (40, 30), (10, 0)),
        Image.new("RGB", (1, 1), (1, 2, 3)),
        Image.new("RGB", (1, 4000), (9, 9, 9)),
    ],
    ids=["cmyk", "L", "1bit", "rgba", "la", "1x1", "1x4000"],
)
def test_decode_gives_an_rgb_square_when_the_mode_or_shape_is_unusual(im) -> None:
    fmt = "JPEG" if im.mode in ("CMYK", "L") else "PNG"
    out = _decode(_encode(im, fmt))
    assert out.pixels.shape == (SIZE, SIZE, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == im.size


def test_decode_composites_transparency_on_white_when_alpha_is_zero() -> None:
    out = _decode(_encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"))
    assert out.pixels.min() == 255


def test_decode_keeps_palette_transparency_when_the_png_has_a_palette() -> None:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 20, 40))
    out = _decode(_encode(im, "PNG", transparency=0))
    right = out.pixels[:, -4:]
    assert right.min() == 255  # transparent black became white, not black


def test_decode_scales_16_bit_instead_of_clipping_when_the_png_is_16_bit() -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    out = _decode(_encode(im, "PNG"))
    assert out.pixels.max() > 200 and out.pixels.min() < 50


def test_decode_uses_the_first_frame_when_the_gif_is_animated() -> None:
    frames = [Image.new("P", (30, 30), i) for i in range(50)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert _decode(data).pixels.shape == (SIZE, SIZE, 3)


def test_decode_uses_draft_mode_when_the_jpeg_is_much_larger_than_the_model_input(
    monkeypatch,
) -> None:
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = _decode(image_bytes(5, (2000, 1500)))
    assert calls == [(SIZE, SIZE)]
    assert (out.width, out.height) == (2000, 1500)


def _oriented(orientation: int) -> bytes:
    """The same scene stored rotated/flipped, with the EXIF tag that undoes it."""
    base = Image.fromarray(
        np.kron(np.arange(12).reshape(3, 4) * 20, np.ones((10, 10))).astype(np.uint8)
    ).convert("RGB")
    undo = {
        1: None,
        2: Image.FLIP_LEFT_RIGHT,
        3: Image.ROTATE_180,
        4: Image.FLIP_TOP_BOTTOM,
        5: Image.TRANSPOSE,
        6: Image.ROTATE_90,
        7: Image.TRANSVERSE,
        8: Image.ROTATE_270,
    }
    stored = base if undo[orientation] is None else base.transpose(undo[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored, "PNG", exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_gives_the_same_picture_when_exif_orientation_is_1_to_8(orientation) -> None:
    upright = _decode(_oriented(1))
    out = _decode(_oriented(orientation))
    assert (out.width, out.height) == (40, 30)
    assert np.abs(out.pixels.astype(int) - upright.pixels.astype(int)).mean() < 2


def test_sniff_format_names_each_supported_format_when_given_its_bytes() -> None:
    im = Image.new("RGB", (8, 8))
    for fmt, name in [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ]:
        assert sniff_format(_encode(im, fmt)) == name
    assert sniff_format(b"hello") is None


def test_decode_raises_only_input_errors_when_fed_random_garbage_after_a_magic() -> None:
    rng = np.random.default_rng(0)
    for magic in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00"):
        for _ in range(20):
            data = magic + rng.bytes(int(rng.integers(0, 400)))
            try:
                _decode(data)
            except InputError:
                pass


def test_normalise_batch_matches_torchvision_when_given_uint8_pixels() -> None:
    import torch

    px = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    out = transforms.normalise_batch(px, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), torch.float32)
    expect = (
        px.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    ) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 4, 4) and torch.allclose(out, expect, atol=1e-6)
