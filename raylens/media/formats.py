"""Format sniffing: the one home of magic bytes and file suffixes raylens accepts (images, videos).

Content decides the format (magic bytes), never the file name; suffixes only choose which files
a folder walk picks up. Pure Python, no Pillow or PyAV, so the ingress, the CLI and the HTTP
client can use it without the decoders.
"""

from __future__ import annotations

ACCEPTED = ("jpeg", "png", "gif", "webp", "bmp", "tiff")
VIDEO_CONTAINERS = ("mp4", "mov", "webm", "mkv")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv"})
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES

# Magic bytes of the formats we accept (checked on content, never on the file name).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# What rejected bytes most often are, so the error message can say so.
_KNOWN_OTHER: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"{", "JSON text"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)
# ISO BMFF brands of still images (HEIF/AVIF): they start with ftyp too but are not videos.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_FTYP_BRANDS: tuple[tuple[frozenset[bytes], str], ...] = (
    (_HEIF_BRANDS, "a HEIC/HEIF image"),
    (_AVIF_BRANDS, "an AVIF image"),
)
# An EBML (Matroska/WebM) file starts with this element id; its DocType says which one.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE_ID = b"\x42\x82"
# How many leading bytes sniff_video needs (the EBML DocType sits within them).
VIDEO_SNIFF_BYTES = 64


def sniff_format(data: bytes) -> str | None:
    """The image format from magic bytes ("jpeg", "png", ...), or None if not one we accept."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def describe(data: bytes) -> str:
    """A short human description of bytes that are not an accepted image."""
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")  # a BOM or whitespace before markup
    what = next((n for magic, n in _KNOWN_OTHER if head.lower().startswith(magic.lower())), None)
    if what is None and data[4:8] == b"ftyp":
        brand = data[8:12]
        what = next((n for brands, n in _FTYP_BRANDS if brand in brands), "an MP4/MOV video")
    snippet = head[:16] if what else data[:16]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in snippet):
        shown = repr(snippet.decode("ascii"))
    else:
        shown = repr(snippet)
    return f"looks like {what}, starts with {shown}" if what else f"starts with {shown}"


def sniff_video(data: bytes) -> str | None:
    """The container from magic bytes ("mp4", "mov", "webm", "mkv"), or None if not one."""
    if data[4:8] == b"ftyp" and len(data) >= 12:
        brand = data[8:12]
        if brand in _HEIF_BRANDS or brand in _AVIF_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if data.startswith(EBML_MAGIC):
        return "webm" if _ebml_doctype(data[:VIDEO_SNIFF_BYTES]) == b"webm" else "mkv"
    return None


def _ebml_doctype(head: bytes) -> bytes | None:
    """The DocType string of an EBML header ("webm", "matroska"), if it is in head."""
    at = head.find(_EBML_DOCTYPE_ID, 4)
    vint = read_ebml_vint(head, at + 2) if at >= 0 else None
    if vint is None:
        return None
    size, start, _ = vint
    return head[start : start + size].rstrip(b"\x00")


def read_ebml_vint(buf: bytes, pos: int) -> tuple[int, int, bool] | None:
    """An EBML variable-size integer at pos: (value, end position, is "unknown size")."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    width = 1
    while width <= 8 and not first & (0x80 >> (width - 1)):
        width += 1
    if width > 8 or pos + width > len(buf):
        return None
    value = first & (0xFF >> width)
    for b in buf[pos + 1 : pos + width]:
        value = (value << 8) | b
    return value, pos + width, value == (1 << (7 * width)) - 1
