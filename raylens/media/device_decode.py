"""JPEG decode on the device: torchvision's decode_jpeg (nvJPEG on a CUDA device), then the
model's resize and crop on the device too, so the CPU only reads bytes (RAYLENS_DECODE_DEVICE).

Only well-formed JPEGs take this path. Everything else (other formats, empty, oversize, pixel
bombs, cut files, JPEGs whose full-size decode on the device would hold more than
max_decoded_bytes, and any JPEG the device decoder refuses) goes to the CPU path, decode_image,
which raises the precise InputError (or decodes at reduced scale), so an input fails with the
same code on either path. A device decode holds its bytes of the worker's DecodeBudget.
The result differs from the CPU path only by resampling (torch's antialiased interpolation
against Pillow's), a few grey levels per pixel.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from PIL import Image

from raylens.media.budget import DecodeBudget
from raylens.media.transforms import (
    INTERPOLATIONS,
    RESIZE_MODES,
    DecodedImage,
    _is_complete,
    decode_image,
    sniff_format,
)


def decode_jpeg_on_device(
    data: bytes,
    size: int,
    device: str,
    *,
    max_pixels: int,
    max_bytes: int,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    max_decoded_bytes: int | None = None,
    budget: DecodeBudget | None = None,
) -> DecodedImage:
    """A size x size RGB square as a uint8 (size, size, 3) tensor on `device`."""
    if resize_mode not in RESIZE_MODES or interpolation not in INTERPOLATIONS:
        raise ValueError(f"unsupported preprocessing {resize_mode!r}/{interpolation!r}")

    def on_cpu() -> DecodedImage:
        return decode_image(
            data,
            size,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            resize_mode=resize_mode,
            interpolation=interpolation,
            max_decoded_bytes=max_decoded_bytes,
            budget=budget,
        )

    if not data or len(data) > max_bytes or sniff_format(data) != "jpeg":
        return on_cpu()
    if not _is_complete(data, "jpeg"):
        return on_cpu()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, h = Image.open(io.BytesIO(data), formats=["JPEG"]).size  # header only
    except Exception:
        return on_cpu()
    cost = device_cost(w, h, len(data))
    if w * h > max_pixels or (max_decoded_bytes is not None and cost > max_decoded_bytes):
        return on_cpu()
    from torchvision.io import ImageReadMode, decode_jpeg

    square: torch.Tensor | None = None
    with budget.hold(cost) if budget is not None else contextlib.nullcontext():
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            chw = decode_jpeg(
                raw, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
            )
            height, width = int(chw.shape[1]), int(chw.shape[2])
            square = _fit(chw, size, resize_mode, interpolation)
            del raw, chw
        except Exception:
            pass  # to the CPU path, once this hold is released (never two holds at once)
    if square is None:
        return on_cpu()
    return DecodedImage(square.permute(1, 2, 0).contiguous(), width, height, "jpeg")  # type: ignore[arg-type]


def device_cost(width: int, height: int, nbytes: int) -> int:
    """Peak bytes of a device decode: the input's copy, the full-size uint8 RGB picture and its
    float32 copy that _fit resizes (the EXIF-turned copy does not outlive the uint8 one)."""
    return nbytes + width * height * 3 * (1 + 1 + 4)


def _fit(chw: torch.Tensor, size: int, resize_mode: str, interpolation: str) -> torch.Tensor:
    """transforms._fit on a (3, H, W) uint8 tensor: resize the short side to size and crop
    the centre ("shortest"), or resize to size x size ("squash")."""
    _, h, w = chw.shape
    if resize_mode == "squash":
        nh, nw = size, size
    elif w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    x = chw[None].float()
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(
            x, size=(nh, nw), mode=interpolation, antialias=True, align_corners=False
        )
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[:, :, top : top + size, left : left + size]
    return x[0].round_().clamp_(0, 255).to(torch.uint8)
