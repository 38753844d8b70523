"""Request bodies read as a stream, with the size cap enforced while reading (never after)."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.requests import Request

from raylens.errors import InvalidRequest, TooLarge, UnsupportedFormat
from raylens.serve_app.error_handlers import validation_message
from raylens.serve_app.schemas import STRICT_TYPES, Filters

FIELD_LIMIT = 64 * 1024  # a plain form field (priority, top_k, filters) is small
JSON_LIMIT = 4 * 1024 * 1024  # a JSON query: text or one vector
M = TypeVar("M", bound=BaseModel)


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


class _Parser(MultiPartParser):
    """Starlette's parser, except that a part named as a file field is a file even without a
    filename in its Content-Disposition (RFC 7578 makes the filename optional; Starlette would
    decode such a part as text, and lose its bytes)."""

    def __init__(self, *args: Any, file_fields: Collection[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_fields = {name.encode() for name in file_fields}

    def on_headers_finished(self) -> None:
        part = self._current_part
        _, options = parse_options_header(part.content_disposition)
        if options.get(b"name") in self.file_fields and b"filename" not in options:
            part.content_disposition = (part.content_disposition or b"") + b'; filename=""'
        super().on_headers_finished()


async def read_multipart(
    request: Request, limit: int, max_files: int, file_fields: Collection[str] = ()
) -> FormData:
    """Parse multipart/form-data; file parts spool to temporary files off the event loop."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UnsupportedFormat(
            f"expected a multipart/form-data body, got {ctype or 'no content type'!r}"
        )
    parser = _Parser(
        request.headers,
        capped(request, limit),
        max_files=max_files,
        max_fields=32,
        max_part_size=FIELD_LIMIT,
        file_fields=file_fields,
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


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_json(request: Request, model: type[M]) -> M:
    """A small JSON body, capped while it streams in, validated as `model` (422 if not)."""
    body = b"".join([chunk async for chunk in capped(request, JSON_LIMIT)])
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(list(exc.errors()))) from None


@dataclass(frozen=True)
class ImageQuery:
    """A multipart image query: the image and the form fields its route reads, parsed."""

    image: bytes
    top_k: int = 10
    filters: Any = None  # parsed and checked JSON (schemas.Filters)
    face_index: int | None = None
    max_distance: float | None = None


# Form fields are text: an integer is digits, a number is JSON's number syntax (no "inf", no
# "1_000", no other scripts' digits, which int() and float() would take), so the handler takes
# what the OpenAPI schema's integer and number admit, nothing more.
INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")
NUMBER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
FILTERS: TypeAdapter[Filters] = TypeAdapter(Filters, config=STRICT_TYPES)


def _integer(field: str, text: str) -> int:
    if INTEGER_TEXT.fullmatch(text):
        return int(text)
    if NUMBER_TEXT.fullmatch(text) and float(text).is_integer():  # 10.0 is an integer too
        return int(float(text))
    raise InvalidRequest(f"{field} must be an integer, got {text[:80]!r}")


def _number(field: str, text: str) -> float:
    value = float(text) if NUMBER_TEXT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise InvalidRequest(f"{field} must be a number (finite), got {text[:80]!r}")
    return value


def _filters(field: str, text: str) -> Any:
    """A JSON object of {payload field: string, integer or boolean}, checked as the JSON body's
    filters are (schemas.Filters)."""
    try:
        return FILTERS.validate_json(text)
    except ValidationError as exc:
        raise InvalidRequest(
            f"{field} must be a JSON object of filters: " + validation_message(list(exc.errors()))
        ) from None


QUERY_FIELDS: dict[str, Callable[[str, str], Any]] = {
    "top_k": _integer,
    "filters": _filters,
    "face_index": _integer,
    "max_distance": _number,
}


async def read_image_query(
    request: Request, max_input_bytes: int, fields: Collection[str]
) -> ImageQuery:
    """The one parser of multipart image queries (search by image, search by face): exactly
    one file part named `image`, plus the form `fields` of QUERY_FIELDS the route takes (other
    fields are ignored). An absent field keeps its default; an empty one is not a value (422)."""
    # Room for the form fields beside the image, which is capped at RAYLENS_MAX_INPUT_BYTES.
    form = await read_multipart(request, max_input_bytes + FIELD_LIMIT, 1, ("image",))
    try:
        images = await file_parts(form, "image")
        texts = {name: text_field(form, name) for name in fields}
    finally:
        await form.close()
    if len(images) != 1:
        raise InvalidRequest("send exactly one file part named 'image'")
    values = {
        name: QUERY_FIELDS[name](name, text) for name, text in texts.items() if text is not None
    }
    return ImageQuery(image=images[0][1], **values)
