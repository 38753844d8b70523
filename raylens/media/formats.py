"""Format sniffing: the one home of magic bytes and file suffixes raylens accepts.

Content decides the format (magic bytes), never the file name; suffixes only choose which files
a folder walk picks up. Pure Python, no Pillow or PyAV, so the ingress, the CLI and the HTTP
client can use it without the decoders.
"""

from __future__ import annotations

ACCEPTED = ("jpeg", "png", "gif", "webp", "bmp", "tiff")
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
_FTYP_BRANDS: tuple[tuple[tuple[bytes, ...], str], ...] = (
    ((b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"), "a HEIC/HEIF image"),
    ((b"avif", b"avis"), "an AVIF image"),
)


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
