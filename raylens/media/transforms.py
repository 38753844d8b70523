"""Pure image transforms: sniff, decode safely, orient, convert, resize, crop, normalise.

No state and no I/O: bytes in, a uint8 array (or an InputError naming what is wrong) out.
"""

from __future__ import annotations

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

    Pillow's own convert("L") clips I;16 at 255, turning most 16-bit pictures white.
    """
    arr = np.asarray(im, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
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
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _wide_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, ...


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
) -> DecodedImage:
    """Decode one image into a size x size RGB square; raises only InputError subclasses.

    keep_side: also keep the whole picture (aspect ratio kept, longest side at most keep_side)
    in `.full`, from the same decode (face detection needs more than the model's square).

    resize_mode ("shortest" or "squash") and interpolation ("bicubic" or "bilinear") come
    from the model's preprocess config (ClipEmbedder.resize_mode / .interpolation).

    EmptyInput, TooLarge (over max_bytes), UnsupportedFormat (magic bytes), DecompressionBomb
    (header width x height over max_pixels, refused before any pixel is decoded),
    TruncatedImage, CorruptImage (anything else Pillow cannot read).
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
        return _decode(data, size, max_pixels, fmt, resize_mode, interpolation, keep_side)
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
        im.load()  # frame 0 of animated GIF/WebP/TIFF
        stored = im.size
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # corrupt EXIF: keep the pixels as stored rather than fail the image
            pass
        turned = stored[0] != stored[1] and im.size == (stored[1], stored[0])
        rgb = _to_rgb(im)
        out = _fit(rgb, size, resize_mode, interpolation)
        full = _bounded(rgb, keep_side) if keep_side else None
    width, height = (h, w) if turned else (w, h)
    scale = full.shape[1] / width if full is not None else 1.0
    return DecodedImage(np.asarray(out, dtype=np.uint8), width, height, fmt, full, scale)


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
