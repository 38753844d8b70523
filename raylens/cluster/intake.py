"""Intake rules: which files are media, upload checks, and the job spec for a path, an object or
an upload."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from raylens.cluster.jobs import JobSpec, Lane, Pipeline, SourceKind
from raylens.cluster.objects import ObjectStores
from raylens.cluster.payloads import PayloadStore
from raylens.cluster.settings import Settings
from raylens.errors import EmptyInput, SourceMissing, TooLarge, UnsupportedFormat
from raylens.media.formats import MEDIA_SUFFIXES, sniff_format
from raylens.media.video import sniff_video

_HASH_CHUNK = 1 << 20
log = logging.getLogger(__name__)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def discover(root: Path) -> Iterator[Path]:
    """Every image or video file under root (by suffix); root may be one file.

    Streams: a folder of a million files is never held as a list (each directory's entries are
    yielded as the file system reports them, then its subdirectories in name order), so the
    same tree is listed in the same order while it is unchanged. Symlinked directories are not
    followed; an unreadable directory is skipped with a warning."""
    if root.is_file():
        yield root.resolve()
        return
    if not root.is_dir():
        raise SourceMissing(f"{root} does not exist")
    stack = [root.resolve()]
    while stack:
        folder = stack.pop()
        subdirs: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
                        elif _is_media_name(entry.name) and entry.is_file():
                            path = Path(entry.path)
                            yield path.resolve() if entry.is_symlink() else path
                    except OSError:  # vanished or unreadable since the listing: not a file
                        continue
        except OSError as exc:
            log.warning("skipping %s: %s", folder, exc)
            continue
        stack += [folder / name for name in sorted(subdirs, reverse=True)]


def _is_media_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MEDIA_SUFFIXES


def spec_for_path(path: Path, lane: Lane, pipeline: Pipeline = Pipeline.BOTH) -> JobSpec:
    """A path job: the file is referenced (never copied); its hash makes the dedup key."""
    sha, size = sha256_file(path)
    return JobSpec(
        source_kind=SourceKind.PATH,
        source=str(path),
        sha256=sha,
        size_bytes=size,
        lane=lane,
        pipeline=pipeline,
        name=path.name,
    )


def spec_for_object(
    uri: str, stores: ObjectStores, lane: Lane, pipeline: Pipeline = Pipeline.BOTH
) -> JobSpec:
    """An object job: the object is referenced by its s3:// URI and workers read it from the
    bucket themselves. Its bytes are read here once, streamed (never held whole), for the
    content sha256 that makes the dedup key and the point ids: an ETag is not a content hash
    (multipart and SSE-KMS ETags are not even an MD5), so it could not dedup against uploads,
    local files or another bucket."""
    sha, size = stores.sha256(uri)
    return JobSpec(
        source_kind=SourceKind.URI,
        source=uri,
        sha256=sha,
        size_bytes=size,
        lane=lane,
        pipeline=pipeline,
        name=uri.rsplit("/", 1)[-1],
    )


def check_upload(data: bytes, settings: Settings, what: str, video: bool = True) -> None:
    """The checks every upload passes first: not empty, an image (or a video, when allowed),
    under its cap."""
    if not data:
        raise EmptyInput(f"{what} is empty")
    is_video = video and sniff_format(data) is None and sniff_video(data) is not None
    limit, name = (
        (settings.max_video_bytes, "RAYLENS_MAX_VIDEO_BYTES")
        if is_video
        else (settings.max_input_bytes, "RAYLENS_MAX_INPUT_BYTES")
    )
    if len(data) > limit:
        raise TooLarge(f"{what} has {len(data)} bytes; limit {name}={limit}")
    if sniff_format(data) is None and not is_video:
        raise UnsupportedFormat(
            f"{what} is not a supported image (jpeg, png, gif, webp, bmp, tiff)"
            + (" or video (mp4, mov, webm, mkv)" if video else "")
            + "; the content is checked, not the file name"
        )


def spec_for_upload(
    data: bytes,
    payloads: PayloadStore,
    settings: Settings,
    lane: Lane,
    name: str | None = None,
    pipeline: Pipeline = Pipeline.BOTH,
) -> JobSpec:
    """Validate an upload (size cap, magic bytes) and store it durably before any job exists."""
    check_upload(data, settings, f"upload {name!r}" if name else "upload")
    sha = payloads.put(data)
    return JobSpec(
        source_kind=SourceKind.UPLOAD,
        source=sha,
        sha256=sha,
        size_bytes=len(data),
        lane=lane,
        pipeline=pipeline,
        name=name,
    )
