"""Pure image transforms: sniff, decode safely, orient, convert, resize, crop, normalise.

No state and no I/O: bytes in, a uint8 array (or an InputError naming what is wrong) out.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from raylens.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyInput,
    InputError,
    TooLarge,
    TruncatedImage,
    UnsupportedFormat,
)
from raylens.media.budget import DecodeBudget
from raylens.media.formats import ACCEPTED, describe, sniff_format

if TYPE_CHECKING:  # torch is imported where it is used: the ingress sniffs uploads without it
    import torch

# The eval-time geometry open_clip's pretrained configs use ("longest" appears in none).
RESIZE_MODES = ("shortest", "squash")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
INTERPOLATIONS = tuple(_RESAMPLE)

# Pillow is only ever asked to try the plugin that matches the magic: less parser surface.
_PIL_FORMAT = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
}
# Pillow's words for "the data stopped early" (its messages vary by plugin and version).
_TRUNCATION_HINTS = (
    "truncated",
    "premature end",
    "end of file",
    "not enough data",
    "unexpected end",
    "requires a buffer",
    "incomplete",
)
# Above this (long side of the resized image / size) the resize works on the crop's source box
# only: a 1 x 60000 strip would otherwise be blown up to size x (size * 60000) pixels first.
_MAX_STRIP_RATIO = 8
# Pixels per strip of the 16-bit/float to 8-bit conversion (a few MB of float64 at a time).
_STRIP_PIXELS = 1 << 18
_WIDE_MODES = ("I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Bytes per pixel of Pillow's raster by mode: 1 for 1/L/P, 2 for the I;16 family, else 4
# (Pillow keeps RGB, LA, CMYK, YCbCr, ... in 4 bytes per pixel, I and F in 4).
_ONE_BYTE_MODES = ("1", "L", "P")
# Bytes per pixel a decoder holds besides the raster while the image is alive: libwebp's
# canvas, the frame it hands Pillow and the copy Pillow reads it from (measured).
_DECODER_BYTES = {"webp": 12}
# Besides: decoder buffers (zlib, rows, strips), allocator slack; measured under 10 MB.
_DECODE_OVERHEAD = 16 * 1024 * 1024


def pixel_bytes(mode: str) -> int:
    """Bytes per pixel of a Pillow raster in this mode."""
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _convert_bytes(mode: str, info: dict) -> int:
    """Bytes per pixel _to_rgb holds besides the raster, at its peak."""
    if mode == "RGB":
        return 0
    if mode == "RGBA":
        return 9  # the white canvas and the composite (+1: measured)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in info):
        return 13  # the RGBA copy, the white canvas and the composite (+1: measured)
    return 5 if mode in _WIDE_MODES or mode.startswith("I;16") else 4  # (8-bit L +) RGB


def decode_cost(
    width: int,
    height: int,
    mode: str,
    fmt: str,
    size: int,
    *,
    keep_side: int | None = None,
    turns: bool = False,
    info: dict | None = None,
) -> int:
    """Estimated peak bytes decoding one image holds, from what its header says.

    The raster (width x height x bytes per pixel of mode; a JPEG's after draft scaling), what
    its decoder keeps beside it, and the largest of: the EXIF transpose copy (turns), the copies
    of the conversion to RGB, the RGB copy plus the resize buffers. Only the first frame of an
    animated image is ever decoded, so the frame count does not enter.
    """
    px = width * height
    raster = px * (pixel_bytes(mode) + _DECODER_BYTES.get(fmt, 0))
    turn = px * pixel_bytes(mode) if turns else 0
    convert = px * _convert_bytes(mode, info or {})
    if mode in _WIDE_MODES or mode.startswith("I;16"):
        convert += 32 * _STRIP_PIXELS  # one strip in float64, and its temporaries
    rgb = 0 if mode == "RGB" else 4 * px
    resize = 4 * max(width, height) * (size + (keep_side or 0)) + 4 * 8 * size * size
    kept = 8 * keep_side * keep_side if keep_side else 0  # the whole picture for faces
    return raster + max(turn, convert, rgb + resize + kept) + _DECODE_OVERHEAD


def _may_turn(im: Image.Image, data: bytes, fmt: str) -> bool:
    """Whether EXIF orientation will transpose the picture (a copy of the raster), read without
    decoding pixels (a PNG's eXIf chunk may come after the pixels: then assume it will)."""
    if fmt == "png" and "exif" not in im.info:
        return b"eXIf" in data or b"Raw profile type exif" in data
    try:
        return im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8)
    except Exception:
        return True


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model: a size x size RGB square plus what it was."""

    pixels: np.ndarray  # uint8 (size, size, 3), RGB
    width: int  # original width, after EXIF orientation
    height: int  # original height, after EXIF orientation
    format: str  # one of ACCEPTED
    # With keep_side: the whole picture, aspect kept, longest side <= keep_side (for faces)
    full: np.ndarray | None = None
    full_scale: float = 1.0  # full-image pixels per original pixel


def _is_complete(data: bytes, fmt: str) -> bool | None:
    """Whether the bytes end where their format says a file ends (None: the format cannot tell).

    Only consulted after a decode failed, to tell truncation (a cut upload) from corruption.
    """
    if fmt == "jpeg":
        return data.rstrip(b"\x00\r\n")[-2:] == b"\xff\xd9"  # EOI marker
    if fmt == "png":
        return b"IEND" in data[-16:]
    if fmt == "gif":
        return data.rstrip(b"\x00")[-1:] == b";"  # GIF trailer
    if fmt == "webp":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")  # RIFF chunk size
    if fmt == "bmp" and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")  # bfSize; some writers leave it 0
        return False if declared > len(data) else None
    return None


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8-bit L, scaled by the nominal range, not clipped.

    Pillow's own convert("L") clips I;16 at 255, turning most 16-bit pictures white. Works in
    strips of _STRIP_PIXELS, so it holds the 8-bit result and one strip beside the raster (never
    a float64 copy of the whole picture: that took 2.7 GB for one 9,000 x 9,000 16-bit PNG).
    """
    w, h = im.size
    rows = max(1, _STRIP_PIXELS // max(1, w))
    strips = [(top, min(h, top + rows)) for top in range(0, h, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(im.crop((0, top, w, bottom)), dtype=np.float64)

    try:
        lo, hi = (float(v) for v in im.getextrema())  # type: ignore[arg-type]
    except (ValueError, TypeError):  # modes Pillow cannot take extremes of (I;16B, ...)
        parts = [strip(t, b) for t, b in strips[:1]]
        lo, hi = float(parts[0].min()), float(parts[0].max())
        for t, b in strips[1:]:
            part = strip(t, b)
            lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    out = np.empty((h, w), dtype=np.uint8)
    for top, bottom in strips:
        arr = strip(top, bottom)
        if im.mode.startswith("I;16") or (lo >= 0.0 and 255.0 < hi <= 65535.0):
            scaled = arr / 257.0  # 16-bit samples: 65535 -> 255
        elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        elif hi > lo:
            scaled = (arr - lo) * (255.0 / (hi - lo))  # no nominal range: stretch what is there
        else:
            scaled = np.zeros_like(arr)
        out[top:bottom] = np.clip(np.rint(scaled), 0, 255)
    return Image.fromarray(out, "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped.

    Each step drops the copy before it (decode_cost counts what is left at the peak).
    """
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode == "RGB":
            return im
    if im.mode in _WIDE_MODES or im.mode.startswith("I;16"):
        im = _wide_to_l(im)
    if im.mode in _ALPHA_MODES:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
        del white, rgba
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, the composite, ...


def _fit(im: Image.Image, size: int, resize_mode: str, interpolation: str) -> Image.Image:
    """Make a size x size square the way open_clip's eval preprocess does for this model.

    "shortest": torchvision Resize(size) + CenterCrop(size) (the default); "squash":
    Resize((size, size)), ignoring the aspect ratio (SigLIP-style tags). Same integer
    arithmetic as torchvision on a PIL image, so vectors match open_clip's own pipeline.
    """
    resample = _RESAMPLE[interpolation]
    if resize_mode == "squash":
        return im if im.size == (size, size) else im.resize((size, size), resample)
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    if max(nw, nh) > _MAX_STRIP_RATIO * size:
        # Extreme aspect ratio: resample only the source box that becomes the crop.
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return im.resize((size, size), resample, box=box)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), resample)
    return im.crop((left, top, left + size, top + size))


def decode_image(
    data: bytes,
    size: int,
    *,
    max_pixels: int,
    max_bytes: int,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    keep_side: int | None = None,
    max_decoded_bytes: int | None = None,
    budget: DecodeBudget | None = None,
) -> DecodedImage:
    """Decode one image into a size x size RGB square; raises only InputError subclasses.

    keep_side: also keep the whole picture (aspect ratio kept, longest side at most keep_side)
    in `.full`, from the same decode (face detection needs more than the model's square).

    resize_mode ("shortest" or "squash") and interpolation ("bicubic" or "bilinear") come
    from the model's preprocess config (ClipEmbedder.resize_mode / .interpolation).

    max_decoded_bytes: refuse an image whose decode_cost (estimated from the header) is over
    it. budget: the worker's DecodeBudget, held for that estimate while the pixels are decoded
    and converted (waiting for it first).

    EmptyInput, TooLarge (over max_bytes), UnsupportedFormat (magic bytes), DecompressionBomb
    (header width x height over max_pixels, or decoded bytes over max_decoded_bytes, refused
    before any pixel is decoded), TruncatedImage, CorruptImage (anything else Pillow cannot
    read).
    """
    if resize_mode not in RESIZE_MODES or interpolation not in _RESAMPLE:
        raise ValueError(f"unsupported preprocessing {resize_mode!r}/{interpolation!r}")
    if len(data) == 0:
        raise EmptyInput("input is empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"input has {len(data)} bytes; limit RAYLENS_MAX_INPUT_BYTES={max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormat(
            f"not a supported image ({describe(data)}); accepted: {', '.join(ACCEPTED)}"
        )
    try:
        return _decode(
            data,
            size,
            max_pixels,
            fmt,
            resize_mode,
            interpolation,
            keep_side,
            max_decoded_bytes,
            budget,
        )
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own hard cap (2x Image.MAX_IMAGE_PIXELS)
        raise DecompressionBomb(f"{exc} (RAYLENS_MAX_IMAGE_PIXELS={max_pixels})") from None
    except Exception as exc:  # Pillow raises many types; each input fails alone, with a code
        raise _classify_failure(data, fmt, exc) from None


def _classify_failure(data: bytes, fmt: str, exc: Exception) -> InputError:
    text = str(exc) or type(exc).__name__
    if "decompressed data too large" in text.lower():  # a zlib bomb in PNG text/ICC chunks
        return DecompressionBomb(f"{fmt}: {text}")
    complete = _is_complete(data, fmt)
    hinted = isinstance(exc, EOFError) or any(h in text.lower() for h in _TRUNCATION_HINTS)
    if complete is False or (hinted and complete is None):
        return TruncatedImage(f"{fmt} data is truncated ({len(data)} bytes): {text}")
    return CorruptImage(f"cannot decode {fmt}: {type(exc).__name__}: {text}")


def _decode(
    data: bytes,
    size: int,
    max_pixels: int,
    fmt: str,
    resize_mode: str,
    interpolation: str,
    keep_side: int | None = None,
    max_decoded_bytes: int | None = None,
    budget: DecodeBudget | None = None,
) -> DecodedImage:
    with warnings.catch_warnings():
        # Our max_pixels check below is the limit that counts; Pillow's warning (at its global
        # MAX_IMAGE_PIXELS) is noise, and so are its per-file complaints (corrupt EXIF, ...).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        im: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])  # header only
        w, h = im.size
        if w * h > max_pixels:
            raise DecompressionBomb(
                f"{fmt} header says {w}x{h} = {w * h} pixels; "
                f"limit RAYLENS_MAX_IMAGE_PIXELS={max_pixels}"
            )
        if im.format in ("JPEG", "MPO") and min(w, h) >= 2 * size:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, still >= size on the short side
            # (and, with keep_side, still >= keep_side on the long side).
            want = (size, size)
            if keep_side:
                k = keep_side / max(w, h)
                want = (max(size, int(w * k)), max(size, int(h * k)))
            im.draft("RGB", want)
        cost = decode_cost(
            *im.size,
            im.mode,
            fmt,
            size,
            keep_side=keep_side,
            turns=_may_turn(im, data, fmt),
            info=im.info,
        )
        if max_decoded_bytes is not None and cost > max_decoded_bytes:
            raise DecompressionBomb(
                f"{fmt} header says {w}x{h} {im.mode}: decoding it would hold about "
                f"{cost / 1e6:.0f} MB ({cost} bytes); "
                f"limit RAYLENS_MAX_DECODED_BYTES_PER_INPUT={max_decoded_bytes}"
            )
        with budget.hold(cost) if budget is not None else contextlib.nullcontext():
            im.load()  # frame 0 only of an animated GIF/WebP/PNG/TIFF: never the others
            stored = im.size
            try:
                ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to do
            except Exception:  # corrupt EXIF: keep the pixels as stored rather than fail it
                pass
            turned = stored[0] != stored[1] and im.size == (stored[1], stored[0])
            rgb = _to_rgb(im)
            del im
            out = _fit(rgb, size, resize_mode, interpolation)
            full = _bounded(rgb, keep_side) if keep_side else None
            del rgb
            square = np.asarray(out, dtype=np.uint8)
    width, height = (h, w) if turned else (w, h)
    scale = full.shape[1] / width if full is not None else 1.0
    return DecodedImage(square, width, height, fmt, full, scale)


def _bounded(rgb: Image.Image, side: int) -> np.ndarray:
    """The whole picture with its longest side at most `side` (aspect ratio kept)."""
    if max(rgb.size) > side:
        k = side / max(rgb.size)
        rgb = rgb.resize(
            (max(1, round(rgb.width * k)), max(1, round(rgb.height * k))),
            Image.Resampling.BILINEAR,
        )
    return np.asarray(rgb, dtype=np.uint8)


def prepare_rgb(
    rgb: np.ndarray,
    size: int,
    *,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    keep_side: int | None = None,
    fmt: str = "video",
    original: tuple[int, int] | None = None,
) -> DecodedImage:
    """An already decoded RGB picture (a video frame) made ready like decode_image's output.
    original: the (width, height) the picture had before any downscaling."""
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    width, height = original or im.size
    out = _fit(im, size, resize_mode, interpolation)
    full = _bounded(im, keep_side) if keep_side else None
    scale = full.shape[1] / width if full is not None else 1.0
    return DecodedImage(np.asarray(out, dtype=np.uint8), width, height, fmt, full, scale)


def normalise_batch(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 (B,H,W,3) -> (x/255 - mean)/std as (B,3,H,W) in dtype, on the tensor's own device.

    The caller ships uint8 to the device (4x fewer bytes than float32) and normalises there.
    """
    import torch

    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)
