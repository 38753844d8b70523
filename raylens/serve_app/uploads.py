"""Multipart bodies read as a stream, with the size cap enforced while reading (never after)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from raylens.errors import InvalidRequest, TooLarge, UnsupportedFormat

FIELD_LIMIT = 64 * 1024  # a plain form field (priority, top_k, filters) is small


def too_large(size: int | str, limit: int) -> TooLarge:
    return TooLarge(
        f"request body {'of ' + str(size) + ' bytes ' if size else ''}is over the upload cap "
        f"of {limit} bytes (RAYLENS_MAX_UPLOAD_BYTES); send fewer or smaller files per request"
    )


async def capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body chunk by chunk; raises TooLarge as soon as more than limit arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(declared, limit)  # refused before a byte of the body is read
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large("", limit)
        yield chunk


async def read_multipart(request: Request, limit: int, max_files: int) -> FormData:
    """Parse multipart/form-data; file parts spool to temporary files off the event loop."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UnsupportedFormat(
            f"expected a multipart/form-data body, got {ctype or 'no content type'!r}"
        )
    parser = MultiPartParser(
        request.headers,
        capped(request, limit),
        max_files=max_files,
        max_fields=32,
        max_part_size=FIELD_LIMIT,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None


async def file_parts(form: FormData, field: str) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every file part named `field`, in order."""
    out: list[tuple[str | None, bytes]] = []
    for item in form.getlist(field):
        if not isinstance(item, UploadFile):
            raise InvalidRequest(f"form field {field!r} must be a file part, not a text field")
        try:
            out.append((item.filename or None, await item.read()))
        finally:
            await item.close()
    return out


def text_field(form: FormData, field: str) -> str | None:
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"form field {field!r} must be text, not a file")
    return value
