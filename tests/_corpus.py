"""A malformed corpus for the fault drill: every case generated here, each with its one outcome.

`malformed_corpus()` returns Cases. `expect` is an error code (raylens.errors.ErrorCode value)
the upload or job must fail with, exactly, or "ok": the job must embed. `where` says which
stage decides: "upload" (check_upload at HTTP intake: empty, not an image/video by magic bytes,
over RAYLENS_MAX_INPUT_BYTES) or "job" (accepted, then decoded by a worker). Cases sharing a
`group` must embed to the same vector (the 8 EXIF orientations of one photo).

Every expectation below was found by running the real code (decode_image at size 224 with the
default RAYLENS_MAX_IMAGE_PIXELS and max_bytes = the corpus cap, check_upload, sample_frames)
with Pillow 13.0 / PyAV 18.1, and is then written down as a constant: a behaviour change makes
tests/test_corpus.py fail. What was found, where it is not obvious:

- PNG with a bad CRC in IHDR: corrupt_image. Pillow checks the CRC of the chunks it reads while
  opening (SyntaxError -> "cannot identify image file"); the file ends with IEND, so it is
  corruption, not truncation.
- PNG with a bad CRC in IDAT: ok. Pillow never checks IDAT CRCs (zlib's own adler32 guards the
  data); a flipped byte inside the IDAT zlib stream instead is corrupt_image.
- JPEG with a garbage APP1 "Exif" block: ok (decode_image keeps the pixels as stored).
- JPEG with trailing garbage after EOI: ok (libjpeg stops at EOI).
- JPEG with random bytes (no 0xFF) over part of the entropy-coded data: ok (libjpeg conceals
  the damaged blocks); the same with a stray marker (FF C4) in the scan: corrupt_image
  ("broken data stream").
- JPEG magic then random bytes: truncated_image (no EOI at the end); the same bytes ending
  with an EOI marker are corrupt_image.
- PNG with a zlib bomb (32 MiB of zeros) in a zTXt or iCCP chunk: decompression_bomb (Pillow
  stops at MAX_TEXT_CHUNK and raises "Decompressed data too large"; iTXt, or the chunk after
  IDAT, give the same).
- Truncated JPEG/PNG/WebP/GIF/BMP: truncated_image (decode_image's end-of-file checks: EOI,
  IEND, RIFF size, GIF trailer, BMP bfSize).
- 30000 x 30000 PNG: decompression_bomb (Pillow's own hard cap, 2x MAX_IMAGE_PIXELS, fires
  in Image.open); 10000 x 10000: decompression_bomb from RAYLENS_MAX_IMAGE_PIXELS itself.
- 16-bit RGB PNG: Pillow cannot write one (no 16-bit RGB mode), so it is written here by hand
  (IHDR bit depth 16, colour type 2); Pillow reads it as 8-bit RGB: ok.
- 10000 x 1 and 1 x 10000: ok (the strip path of _fit resamples only the crop box).
- Uncompressed TIFF cut in half: truncated_image (Pillow says "image file is truncated"); an
  LZW TIFF cut in half loses its IFD (written at the end): corrupt_image.
- Videos: an ftyp header then garbage, a cut MP4 (moov last or first) and a cut WebM are
  corrupt_video (box / Segment sizes); EBML magic then garbage is corrupt_video (FFmpeg).

The drill must run with RAYLENS_MAX_INPUT_BYTES = max_input_bytes (the "too_large" case is
just over it) and an HTTP body limit above it (RAYLENS_MAX_UPLOAD_BYTES). Every case's bytes
are distinct (the queue dedups by sha256), and the corpus is deterministic.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image
from skimage import data as skdata

DRILL_MAX_INPUT_BYTES = 1 << 20  # 1 MiB: the cap the drill runs with
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Settings.max_image_pixels' default
DECODE_SIZE = 224
ORIENTATION_GROUP = "orientation"
UPLOAD, JOB, OK = "upload", "job", "ok"


@dataclass(frozen=True)
class Case:
    kind: str  # unique name of the case
    data: bytes
    filename: str  # what it is uploaded as (suffixes lie on purpose: "text.jpg")
    expect: str  # an ErrorCode value, or "ok"
    group: str | None = None  # cases of one group must embed identically
    where: str = JOB  # "upload": refused by check_upload; "job": decided by the worker

    def __repr__(self) -> str:  # the bytes would flood a failing test's output
        return f"Case({self.kind!r}, {len(self.data)} bytes, expect={self.expect!r}, {self.where})"


def malformed_corpus(
    tmp_dir: Path | None = None, *, max_input_bytes: int = DRILL_MAX_INPUT_BYTES
) -> list[Case]:
    """The corpus, in a stable order. tmp_dir: scratch space for encoders that need a real
    file (a faststart MP4); None: a private temporary folder. max_input_bytes: the cap the
    drill sets (RAYLENS_MAX_INPUT_BYTES); the one too_large case is just over it."""
    if max_input_bytes < 256 * 1024:
        raise ValueError("max_input_bytes must be >= 256 KiB: the valid cases must fit under it")
    return list(_build(None if tmp_dir is None else Path(tmp_dir), max_input_bytes))


def write_corpus(cases: list[Case], folder: Path) -> dict[str, Path]:
    """Each case's bytes as folder/filename (for path-based ingest): kind -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in cases:
        path = folder / case.filename
        path.write_bytes(case.data)
        out[case.kind] = path
    return out


# --- building blocks ------------------------------------------------------------------------


@functools.cache
def _astronaut(w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skdata.astronaut()).resize((w, h), Image.BICUBIC))


def _gradient(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth, distinct RGB picture per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, size=3)
    chans = [(x * (c + 1) * 3 + y * (3 - c) * 2 + base[c]) % 256 for c in range(3)]
    return np.stack(chans, axis=-1).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)


def _png(w: int, h: int, depth: int, colour: int, rows: Callable[[], bytes], n: int) -> bytes:
    """A PNG written by hand: n rows, each rows() (filter byte included), deflated streaming."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(rows()) for _ in range(n)) + z.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png_insert(png: bytes, chunk: bytes) -> bytes:
    """chunk placed right after IHDR (before any pixel data)."""
    at = 8 + 8 + 13 + 4
    return png[:at] + chunk + png[at:]


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """An APP1 segment with payload inserted right after SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _noise(kind: str, n: int, *, markers: bool = True) -> bytes:
    """n random bytes, the same every run for this kind; markers=False: no 0xFF byte, so no
    JPEG marker can appear in them."""
    data = random.Random(kind).randbytes(n)
    return data if markers else data.replace(b"\xff", b"\x00")


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def _encode_video(
    sink: str | io.BytesIO, fmt: str, codec: str, frames: list[np.ndarray], options=None
) -> None:
    # bitexact: no random Segment UID, date or version string, so every build is the same bytes
    with av.open(sink, "w", format=fmt, options={"fflags": "+bitexact", **(options or {})}) as out:
        stream = out.add_stream(codec, rate=5)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # encoders' output may depend on the threads
        stream.options = {"flags": "+bitexact"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


def _video_frames() -> list[np.ndarray]:
    """3 s at 5 fps, 96 x 64: one sampled frame per second (3 with the default every_s=1)."""
    photo = _astronaut(160, 64)
    return [np.ascontiguousarray(photo[:, 4 * i : 4 * i + 96]) for i in range(15)]


def _faststart_mp4(tmp: Path | None, codec: str, frames: list[np.ndarray]) -> bytes:
    """moov before mdat (what web uploads usually are): the muxer needs a real file for it."""
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="raylens-corpus-", dir=tmp) as folder:
        path = Path(folder) / "faststart.mp4"
        _encode_video(str(path), "mp4", codec, frames, {"movflags": "faststart"})
        return path.read_bytes()


# EXIF orientation n: exif_transpose applies _UPRIGHT[n] to the stored pixels; stored is the
# upright picture with the inverse applied (rotations by 90 swap, flips undo themselves).
_T = Image.Transpose
_UPRIGHT = {
    1: None,
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}
_INVERSE = {**_UPRIGHT, 6: _T.ROTATE_90, 8: _T.ROTATE_270}


def orientation_upright() -> np.ndarray:
    """The upright picture every orientation case shows (256 x 256 RGB)."""
    return _astronaut(256, 256)


def _oriented_jpeg(n: int) -> bytes:
    upright = Image.fromarray(orientation_upright())
    stored = upright if _INVERSE[n] is None else upright.transpose(_INVERSE[n])
    exif = Image.Exif()
    exif[0x0112] = n  # Orientation
    return _save(stored, "JPEG", quality=95, subsampling=0, exif=exif)


# --- the corpus -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _build(tmp: Path | None, cap: int) -> tuple[Case, ...]:
    cases: list[Case] = []

    def add(kind: str, data: bytes, ext: str, expect: str, where: str = JOB, **kw) -> None:
        cases.append(Case(kind, data, f"{kind}{ext}", expect, where=where, **kw))

    photo = Image.fromarray(_astronaut(192, 128))
    jpeg = _save(photo, "JPEG", quality=90)
    png = _save(Image.fromarray(_gradient(160, 96, 1)), "PNG")

    # -- refused at upload: empty, not an image or video by content, over the cap
    add("zero_bytes", b"", ".jpg", "empty_input", UPLOAD)
    add(
        "text_as_jpg",
        b"Just some notes, not a picture.\n" * 8,
        ".jpg",
        "unsupported_format",
        UPLOAD,
    )
    html = (
        b"<!DOCTYPE html>\n<html><head><title>x</title></head><body><img src=a.jpg></body></html>"
    )
    add("html_as_jpg", html, ".jpg", "unsupported_format", UPLOAD)
    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n"
        b"xref\n0 4\n0000000000 65535 f \n0000000009 00000 n \n0000000052 00000 n \n"
        b"0000000101 00000 n \ntrailer<</Size 4/Root 1 0 R>>\nstartxref\n170\n%%EOF\n"
    )
    add("pdf", pdf, ".pdf", "unsupported_format", UPLOAD)
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" '
        b'height="64"><circle cx="32" cy="32" r="30" fill="red"/></svg>\n'
    )
    add("svg", svg, ".svg", "unsupported_format", UPLOAD)
    add(
        "json_as_png",
        b'{"image": "not really", "pixels": [1, 2, 3]}\n',
        ".png",
        "unsupported_format",
        UPLOAD,
    )
    zipped = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + _noise("zip", 300)
    add("zip_as_png", zipped, ".png", "unsupported_format", UPLOAD)
    heic = struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + _noise("heic", 500)
    add("heic", heic, ".heic", "unsupported_format", UPLOAD)  # ftyp, but an image brand
    rows = cap // (256 * 3 + 1) + 2  # RGB noise stored uncompressed: a few KiB over the cap
    noise = np.random.default_rng(7).integers(0, 256, (rows, 256, 3), dtype=np.uint8)
    add(
        "oversize_png",
        _save(Image.fromarray(noise), "PNG", compress_level=0),
        ".png",
        "too_large",
        UPLOAD,
    )

    # -- cut short
    for pct in (10, 50, 90):
        add(f"jpeg_truncated_{pct}", jpeg[: len(jpeg) * pct // 100], ".jpg", "truncated_image")
    for pct in (30, 70):
        add(f"png_truncated_{pct}", png[: len(png) * pct // 100], ".png", "truncated_image")
    webp = _save(photo, "WEBP", quality=80)
    add("webp_truncated_50", webp[: len(webp) // 2], ".webp", "truncated_image")
    gif = _save(photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    add("gif_truncated_50", gif[: len(gif) // 2], ".gif", "truncated_image")
    bmp = _save(Image.fromarray(_gradient(80, 60, 2)), "BMP")
    add("bmp_truncated_50", bmp[: len(bmp) // 2], ".bmp", "truncated_image")
    tif = _save(Image.fromarray(_gradient(80, 60, 3)), "TIFF")
    add("tiff_truncated_50", tif[: len(tif) // 2], ".tif", "truncated_image")
    lzw = _save(Image.fromarray(_gradient(80, 60, 4)), "TIFF", compression="tiff_lzw")
    add("tiff_lzw_truncated_50", lzw[: len(lzw) // 2], ".tif", "corrupt_image")  # IFD lost

    # -- damaged inside
    bad = bytearray(png)
    bad[29] ^= 0xFF  # the IHDR CRC (bytes 29..32)
    add("png_bad_crc_ihdr", bytes(bad), ".png", "corrupt_image")
    i = png.find(b"IDAT")
    n = struct.unpack(">I", png[i - 4 : i])[0]
    bad = bytearray(png)
    bad[i + 4 + n] ^= 0xFF  # the IDAT CRC: never checked by Pillow
    add("png_bad_crc_idat", bytes(bad), ".png", OK)
    bad = bytearray(png)
    bad[i + 4 + 10] ^= 0xFF  # inside the zlib stream
    add("png_idat_zlib_damaged", bytes(bad), ".png", "corrupt_image")
    add("jpeg_corrupt_exif", _with_app1(jpeg, b"Exif\x00\x00" + _noise("exif", 200)), ".jpg", OK)
    tiff_head = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x07" + _noise("exif_ifd", 120)
    add("jpeg_corrupt_exif_ifd", _with_app1(jpeg, tiff_head), ".jpg", OK)
    add("jpeg_trailing_garbage", jpeg + _noise("trailing", 2000), ".jpg", OK)
    sos = jpeg.find(b"\xff\xda")
    bad = bytearray(jpeg)
    bad[sos + 300 : sos + 360] = _noise("entropy", 60, markers=False)
    add("jpeg_entropy_noise", bytes(bad), ".jpg", OK)  # libjpeg conceals the damaged blocks
    bad[sos + 300 : sos + 302] = b"\xff\xc4"  # a DHT marker in the middle of the scan
    add("jpeg_entropy_marker", bytes(bad), ".jpg", "corrupt_image")
    junk = b"\xff\xd8\xff\xe0" + _noise("jpeg_junk", 3000)
    add("jpeg_magic_then_garbage", junk, ".jpg", "truncated_image")  # no EOI: "cut"
    add("jpeg_magic_garbage_eoi", junk + b"\xff\xd9", ".jpg", "corrupt_image")

    # -- bombs
    zbomb = zlib.compress(bytes(32 << 20), 9)  # 32 MiB of zeros in ~32 KiB
    add(
        "png_ztxt_zlib_bomb",
        _png_insert(png, _chunk(b"zTXt", b"Comment\x00\x00" + zbomb)),
        ".png",
        "decompression_bomb",
    )
    add(
        "png_iccp_zlib_bomb",
        _png_insert(png, _chunk(b"iCCP", b"icc\x00\x00" + zbomb)),
        ".png",
        "decompression_bomb",
    )
    row = b"\x00" + bytes(30000 // 8)  # mode "1" row: filter byte + 3750 zero bytes
    add(
        "pixel_bomb_30000",
        _png(30000, 30000, 1, 0, lambda: row, 30000),
        ".png",
        "decompression_bomb",
    )
    row2 = b"\x00" + bytes(10000 // 8)
    add(
        "pixel_bomb_10000",
        _png(10000, 10000, 1, 0, lambda: row2, 10000),
        ".png",
        "decompression_bomb",
    )

    # -- valid but unusual: must embed
    cmyk = photo.convert("CMYK")
    add("jpeg_cmyk", _save(cmyk, "JPEG", quality=90), ".jpg", OK)
    add("jpeg_grey", _save(photo.convert("L"), "JPEG", quality=90), ".jpg", OK)
    add("jpeg_progressive", _save(photo, "JPEG", quality=85, progressive=True), ".jpg", OK)
    ramp = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    add("png_16bit_grey", _save(Image.fromarray(ramp), "PNG"), ".png", OK)  # mode I;16
    rgb16 = np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1).astype(">u2")
    rows16 = iter([b"\x00" + r.tobytes() for r in rgb16])
    add("png_16bit_rgb", _png(128, 96, 16, 2, lambda: next(rows16), 96), ".png", OK)
    pal = Image.fromarray(_gradient(96, 64, 5)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    add("png_palette_transparent", _save(pal, "PNG", transparency=0), ".png", OK)
    grey = np.asarray(photo.convert("L"))
    alpha = np.tile(np.linspace(0, 255, grey.shape[1], dtype=np.uint8), (grey.shape[0], 1))
    add("png_la", _save(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"), ".png", OK)
    rgba = np.dstack([np.asarray(photo), alpha[::-1, ::-1]])
    add("png_rgba", _save(Image.fromarray(rgba, "RGBA"), "PNG"), ".png", OK)
    add("png_1x1", _save(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"), ".png", OK)
    strip = _gradient(10000, 1, 6)
    add("png_10000x1", _save(Image.fromarray(strip), "PNG"), ".png", OK)
    add("png_1x10000", _save(Image.fromarray(strip.transpose(1, 0, 2)), "PNG"), ".png", OK)
    add("bmp", _save(Image.fromarray(_gradient(120, 80, 8)), "BMP"), ".bmp", OK)
    add("tiff", _save(photo, "TIFF", compression="tiff_lzw"), ".tif", OK)
    add(
        "webp_lossless",
        _save(Image.fromarray(_gradient(96, 64, 9)), "WEBP", lossless=True),
        ".webp",
        OK,
    )
    add("webp_lossy", webp, ".webp", OK)
    add(
        "gif_single_frame",
        _save(Image.fromarray(_gradient(96, 64, 10)).convert("P"), "GIF"),
        ".gif",
        OK,
    )
    frames = [Image.fromarray(_gradient(48, 32, 100 + k)).quantize(16) for k in range(200)]
    anim = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    add("gif_animated_200", anim, ".gif", OK)  # embeds frame 0
    for n in range(1, 9):
        add(f"exif_orientation_{n}", _oriented_jpeg(n), ".jpg", OK, group=ORIENTATION_GROUP)

    # -- videos
    # FFmpeg's own MPEG-4 Part 2 encoder: always built in, and the same bytes every run
    # (libx264 gave one of two bitstreams for the same frames, now and then, even on 1 thread).
    codec = "mpeg4"
    sink = io.BytesIO()
    _encode_video(sink, "mp4", codec, _video_frames())
    mp4 = sink.getvalue()
    add("mp4_tiny", mp4, ".mp4", OK)
    add("mp4_truncated_50", mp4[: len(mp4) // 2], ".mp4", "corrupt_video")
    fast = _faststart_mp4(tmp, codec, _video_frames()[::-1])
    add("mp4_faststart_truncated_50", fast[: len(fast) // 2], ".mp4", "corrupt_video")
    ftyp = struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2"
    add("mp4_header_then_garbage", ftyp + _noise("mp4_junk", 4096), ".mp4", "corrupt_video")
    add(
        "mkv_magic_then_garbage",
        b"\x1a\x45\xdf\xa3" + _noise("mkv_junk", 3000),
        ".mkv",
        "corrupt_video",
    )
    vpx = next((c for c in ("libvpx", "libvpx-vp9") if _has_encoder(c)), None)
    if vpx is not None:
        sink = io.BytesIO()
        _encode_video(sink, "webm", vpx, _video_frames()[::2])
        webm = sink.getvalue()
        add("webm_tiny", webm, ".webm", OK)
        add("webm_truncated_50", webm[: len(webm) // 2], ".webm", "corrupt_video")

    for case in cases:
        if case.expect != "too_large" and len(case.data) > cap:
            raise AssertionError(f"{case.kind} ({len(case.data)} bytes) is over the cap {cap}")
    return tuple(cases)
