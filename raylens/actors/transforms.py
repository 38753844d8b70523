"""Pure image transforms: sniff, decode safely, orient, convert, resize, crop, normalise.

No state and no I/O: bytes in, a uint8 array (or an InputError naming what is wrong) out.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from raylens.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyInput,
    InputError,
    TooLarge,
    TruncatedImage,
    UnsupportedFormat,
)

# Magic bytes of the formats we accept (checked on content, never on the file name).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
)
_KNOWN_OTHER: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"PK\x03\x04", "a ZIP archive"),
)
_TRUNCATION_HINTS = (
    "truncated",
    "premature end",
    "end of file",
    "not enough data",
    "broken data stream",
    "unexpected end",
)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 (size, size, 3), RGB
    width: int  # original width after EXIF orientation
    height: int
    format: str


def sniff_format(data: bytes) -> str | None:
    """The image format from magic bytes, or None when it is not one we accept."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    for magic, what in _KNOWN_OTHER:
        if head.startswith(magic.lower()):
            return what
    return f"starts with {data[:8]!r}"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        im = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shortest side to `size` (bicubic), then a centred size x size crop (open_clip's geometry)."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode_image(data: bytes, size: int, *, max_pixels: int, max_bytes: int) -> DecodedImage:
    """Decode one image safely; raises only InputError subclasses, with the reason."""
    if len(data) == 0:
        raise EmptyInput("input is empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"input has {len(data)} bytes; limit RAYLENS_MAX_INPUT_BYTES={max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormat(
            f"not a supported image ({_describe(data)}); accepted: jpeg, png, gif, webp, bmp, tiff"
        )
    try:
        return _decode(data, size, max_pixels, fmt)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types; each input fails alone, with a code
        text = str(exc)
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise DecompressionBomb(
                f"{text}; limit RAYLENS_MAX_IMAGE_PIXELS={max_pixels}"
            ) from None
        if any(h in text.lower() for h in _TRUNCATION_HINTS) or isinstance(exc, EOFError):
            raise TruncatedImage(f"{fmt} data is truncated: {text or type(exc).__name__}") from None
        raise CorruptImage(f"cannot decode {fmt}: {type(exc).__name__}: {text}") from None


def _decode(data: bytes, size: int, max_pixels: int, fmt: str) -> DecodedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise DecompressionBomb(
                f"{w}x{h} = {w * h} pixels; limit RAYLENS_MAX_IMAGE_PIXELS={max_pixels}"
            )
        if im.format == "JPEG" and min(w, h) >= 2 * size:
            # Decode at 1/2, 1/4 or 1/8 scale, still >= size on the short side: far fewer pixels.
            im.draft("RGB", (size, size))
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        im.load()
        before = im.size
        try:
            im = ImageOps.exif_transpose(im)  # type: ignore[assignment]
        except Exception:  # corrupt EXIF: keep the pixels as stored rather than fail the image
            pass
        swapped = before[0] != before[1] and im.size == (before[1], before[0])
        full_w, full_h = (h, w) if swapped else (w, h)
        rgb = _to_rgb(im)
        out = _resize_crop(rgb, size)
    return DecodedImage(np.asarray(out, dtype=np.uint8), full_w, full_h, fmt)


def normalise_batch(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 (B,H,W,3) -> normalised (B,3,H,W) in dtype, on the tensor's own device."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)
