"""Unit: safe decoding turns any bytes into an RGB square or an error with its own code."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, JpegImagePlugin

from raylens.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyInput,
    InputError,
    TooLarge,
    TruncatedImage,
    UnsupportedFormat,
)
from raylens.media.transforms import decode_image, normalise_batch, sniff_format

from _images import image_bytes

SIZE = 32


def _decode(data: bytes, max_pixels: int = 50_000_000, max_bytes: int = 10_000_000):
    return decode_image(data, SIZE, max_pixels=max_pixels, max_bytes=max_bytes)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with (almost) no pixel data: a cheap bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# --- inputs that are not images -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        (b"", EmptyInput, "empty"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", UnsupportedFormat, "HTML"),
        (b"  <html><body>not an image</body></html>", UnsupportedFormat, "'<html><body>no"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", UnsupportedFormat, "PDF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", UnsupportedFormat, "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", UnsupportedFormat, "HEIC"),
        (b"\x00\x01\x02\x03" * 100, UnsupportedFormat, r"\x00\x01\x02\x03"),
    ],
    ids=["empty", "html", "html-leading-space", "pdf", "svg", "heic", "binary"],
)
def test_decode_fails_with_its_code_when_input_is_not_an_image(data, error, says) -> None:
    with pytest.raises(error) as info:
        _decode(data)
    assert says in info.value.message


def test_decode_refuses_when_the_input_is_over_the_byte_cap() -> None:
    with pytest.raises(TooLarge, match="RAYLENS_MAX_INPUT_BYTES"):
        _decode(image_bytes(1), max_bytes=100)


# --- truncation and corruption ------------------------------------------------------------


@pytest.mark.parametrize("cut", [0.01, 0.05, 0.3, 0.6, 0.9, 0.97])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_decode_reports_truncation_when_the_file_is_cut(fmt, cut) -> None:
    data = image_bytes(3, (200, 150), fmt)
    with pytest.raises(TruncatedImage, match="truncated"):
        _decode(data[: max(16, int(len(data) * cut))])


def test_decode_accepts_a_png_when_only_its_end_marker_is_missing() -> None:
    data = image_bytes(3, (200, 150), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    assert _decode(data[:-12]).pixels.shape == (SIZE, SIZE, 3)  # every pixel is there


def test_decode_reports_corruption_when_a_complete_file_is_damaged() -> None:
    data = bytearray(image_bytes(3, (200, 150), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\xff" * 40  # damaged pixels, the file still ends properly
    with pytest.raises(CorruptImage):
        _decode(bytes(data))


def test_decode_raises_only_input_errors_when_fed_random_garbage_after_a_magic() -> None:
    rng = np.random.default_rng(0)
    magics = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no Pillow warning leaks out of decode_image
        for magic in magics:
            for _ in range(25):
                data = magic + rng.bytes(int(rng.integers(0, 400)))
                with pytest.raises(InputError):
                    _decode(data)


def test_decode_raises_only_input_errors_when_real_files_have_random_bytes_flipped() -> None:
    rng = np.random.default_rng(1)
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        good = image_bytes(5, (64, 48), fmt)
        for _ in range(15):
            data = bytearray(good)
            for pos in rng.integers(len(fmt), len(data), size=8):
                data[pos] = int(rng.integers(0, 256))
            try:
                _decode(bytes(data))
            except InputError:
                pass


# --- decompression bombs ------------------------------------------------------------------


def test_decode_refuses_before_decoding_pixels_when_the_image_is_a_bomb(monkeypatch) -> None:
    bomb = _encode(Image.new("1", (3000, 3000)), "PNG")
    assert len(bomb) < 100_000  # 9 megapixels in a few kB
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with pytest.raises(DecompressionBomb, match="RAYLENS_MAX_IMAGE_PIXELS"):
        _decode(bomb, max_pixels=4_000_000)
    assert loads == []


def test_decode_lets_no_pillow_bomb_warning_through_when_over_pillows_own_limit() -> None:
    header = _png_header_only(10_000, 9_000)  # 90 Mpx: over Pillow's warning threshold
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(DecompressionBomb):
            _decode(header, max_pixels=1_000_000)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global limit is left alone


def test_decode_maps_pillows_hard_limit_to_a_bomb_when_the_setting_allows_more() -> None:
    with pytest.raises(DecompressionBomb, match="RAYLENS_MAX_IMAGE_PIXELS"):
        _decode(_png_header_only(20_000, 20_000), max_pixels=10**12)


# --- modes, shapes, frames ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("im", "fmt"),
    [
        (Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "JPEG"),
        (Image.new("L", (40, 30), 128), "JPEG"),
        (Image.new("1", (40, 30), 1), "PNG"),
        (Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG"),
        (Image.new("LA", (40, 30), (10, 0)), "PNG"),
        (Image.new("RGB", (40, 30), (1, 2, 3)), "BMP"),
        (Image.new("RGB", (40, 30), (1, 2, 3)), "TIFF"),
        (Image.new("RGBA", (40, 30), (1, 2, 3, 4)), "WEBP"),
        (Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
        (Image.new("RGB", (1, 4000), (9, 9, 9)), "PNG"),
        (Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG"),
    ],
    ids=["cmyk", "L", "1bit", "rgba", "la", "bmp", "tiff", "webp", "1x1", "1x4000", "4000x1"],
)
def test_decode_gives_an_rgb_square_when_the_mode_or_shape_is_unusual(im, fmt) -> None:
    out = _decode(_encode(im, fmt))
    assert out.pixels.shape == (SIZE, SIZE, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == im.size
    assert out.format == fmt.lower()


def test_decode_converts_cmyk_to_the_right_colour_when_the_jpeg_is_cmyk() -> None:
    out = _decode(_encode(Image.new("CMYK", (40, 30), (255, 0, 255, 0)), "JPEG", quality=95))
    r, g, b = out.pixels.reshape(-1, 3).mean(axis=0)
    assert g > 200 and r < 60 and b < 60  # cyan + yellow ink = green


def test_decode_keeps_the_extreme_strip_when_the_aspect_ratio_is_huge() -> None:
    strip = np.zeros((60_000, 1, 3), np.uint8)
    strip[29_990:30_010] = 255  # a white band in the middle, which the centre crop must keep
    out = _decode(_encode(Image.fromarray(strip), "PNG"), max_pixels=10**6)
    assert out.pixels.max() == 255 and out.pixels.shape == (SIZE, SIZE, 3)


def test_decode_composites_transparency_on_white_when_alpha_is_zero() -> None:
    out = _decode(_encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"))
    assert out.pixels.min() == 255


def test_decode_keeps_palette_transparency_when_the_png_has_a_palette() -> None:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 20, 40))
    out = _decode(_encode(im, "PNG", transparency=0))
    assert out.pixels[:, -4:].min() == 255  # transparent black became white, not black
    assert tuple(out.pixels[SIZE // 2, 2]) == (255, 0, 0)  # the opaque half stays red


def test_decode_scales_16_bit_instead_of_clipping_when_the_png_is_16_bit() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    out = _decode(_encode(im, "PNG"))
    assert out.pixels.max() > 200 and out.pixels.min() < 50
    assert 100 < out.pixels.mean() < 155  # a ramp, not saturated white


def test_decode_scales_float_samples_when_the_tiff_is_32_bit_float() -> None:
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = _decode(_encode(Image.fromarray(ramp), "TIFF"))
    assert out.pixels.max() > 200 and out.pixels.min() < 50


def test_decode_uses_the_first_frame_when_the_gif_is_animated() -> None:
    frames = [Image.new("RGB", (30, 30), (255 - 5 * i, 5 * i, 0)) for i in range(40)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 40
    r, g, _ = _decode(data).pixels.reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15  # frame 0 is red


def test_decode_uses_draft_mode_when_the_jpeg_is_much_larger_than_the_model_input(
    monkeypatch,
) -> None:
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = _decode(image_bytes(5, (2000, 1500)))
    assert calls == [((SIZE, SIZE), (250, 188))]  # libjpeg decoded at 1/8 scale
    assert (out.width, out.height) == (2000, 1500)  # the original size is still reported


def test_decode_skips_draft_mode_when_the_jpeg_is_already_small(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda *a: calls.append(a))
    _decode(image_bytes(5, (60, 50)))
    assert calls == []


@pytest.mark.parametrize(
    ("resize_mode", "interpolation"),
    [("shortest", "bicubic"), ("shortest", "bilinear"), ("squash", "bicubic")],
)
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (32, 32), (33, 45), (50, 31), (640, 480)])
def test_decode_matches_open_clip_preprocessing_when_the_image_is_rgb(
    size, resize_mode, interpolation
) -> None:
    import open_clip

    arr = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), np.uint8)
    im = Image.fromarray(arr)
    reference = open_clip.image_transform(
        SIZE,
        is_train=False,
        mean=(0,) * 3,
        std=(1,) * 3,
        resize_mode=resize_mode,
        interpolation=interpolation,
    )
    expect = (reference(im).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    out = decode_image(
        _encode(im, "PNG"),
        SIZE,
        max_pixels=10**8,
        max_bytes=10**8,
        resize_mode=resize_mode,
        interpolation=interpolation,
    )
    assert np.array_equal(out.pixels, expect)


# --- EXIF orientation ---------------------------------------------------------------------

_UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _oriented(orientation: int, fmt: str) -> bytes:
    """The same upright 40x30 scene, stored turned/flipped, with the EXIF tag that undoes it."""
    blocks = np.arange(12).reshape(3, 4) * 20
    scene = Image.fromarray(np.kron(blocks, np.ones((10, 10))).astype(np.uint8)).convert("RGB")
    stored = scene.transpose(_UNDO[orientation]) if orientation in _UNDO else scene
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_gives_the_same_picture_when_exif_orientation_is_1_to_8(orientation, fmt) -> None:
    upright = _decode(_oriented(1, fmt))
    out = _decode(_oriented(orientation, fmt))
    assert (out.width, out.height) == (40, 30)
    assert np.abs(out.pixels.astype(int) - upright.pixels.astype(int)).mean() < 3


def test_decode_keeps_going_unrotated_when_the_exif_is_corrupt() -> None:
    data = _encode(Image.new("RGB", (40, 30), (0, 0, 255)), "JPEG", exif=b"Exif\x00\x00MM\x00*junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _decode(data)
    assert (out.width, out.height) == (40, 30) and out.pixels[..., 2].min() > 200


# --- sniffing and normalisation -----------------------------------------------------------


def test_sniff_format_names_each_supported_format_when_given_its_bytes() -> None:
    im = Image.new("RGB", (8, 8))
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        assert sniff_format(_encode(im, fmt)) == fmt.lower()
    assert sniff_format(_encode(im, "TIFF")[:4]) == "tiff"
    for other in (b"", b"hello", b"%PDF-1.4", b"RIFF\x00\x00\x00\x00WAVEfmt "):
        assert sniff_format(other) is None


def test_normalise_batch_matches_the_formula_when_given_uint8_pixels() -> None:
    px = torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalise_batch(px, mean, std, torch.float32)
    expect = (px.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / (
        torch.tensor(std).view(1, 3, 1, 1)
    )
    assert out.shape == (2, 3, 4, 5) and torch.allclose(out, expect, atol=1e-6)


def test_normalise_batch_returns_the_requested_dtype_when_asked_for_half_precision() -> None:
    px = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    out = normalise_batch(px, (0.0,) * 3, (1.0,) * 3, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.device == px.device and float(out.min()) == 1.0
