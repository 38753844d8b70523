"""Pure video transforms: open a sniffed container, decode it safely, sample frames as RGB.

No state and no jobs: bytes (or a local file) in, sampled frames plus what the video was
(or an InputError naming what is wrong) out. Every frame is decoded (correctness first: no
keyframe skipping); only the sampled ones are converted to RGB.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from raylens.errors import (
    CorruptVideo,
    EmptyInput,
    InputError,
    SourceMissing,
    TooLarge,
    UnsupportedFormat,
)
from raylens.media.budget import DecodeBudget

# sniff_video and VIDEO_CONTAINERS live in media.formats (the one home of magic bytes); they are
# re-exported here because the worker, intake and tests import them from this module.
from raylens.media.formats import (
    EBML_MAGIC,
    VIDEO_CONTAINERS,
    VIDEO_SNIFF_BYTES,
    read_ebml_vint,
    sniff_video,
)

__all__ = [
    "VIDEO_CONTAINERS",
    "VideoFrame",
    "VideoInfo",
    "VideoLimits",
    "sample_frames",
    "sniff_video",
]

# The one FFmpeg demuxer each sniffed container is opened with (never FFmpeg's own probing:
# less parser surface, and bytes that claim to be MP4 are never read as something else).
_DEMUXER = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}
_EBML_SEGMENT_ID = b"\x18\x53\x80\x67"
# Top-level ISO BMFF boxes walked to find a cut file (fragmented MP4 has two per fragment).
_MAX_TOP_BOXES = 100_000
# Decoded frames between two progress calls of sample_frames (a 30 fps video: about 2 s).
PROGRESS_FRAMES = 64
# Scene detector: the mean absolute difference of a tiny grey thumbnail.
_THUMB_W, _THUMB_H = 32, 18
# Timestamps are exact fractions; interval boundaries (k * every_s) are floats: a frame this
# close before a boundary counts as at it (0.1 * 3 = 0.30000000000000004 > 0.3).
_EPS_S = 1e-6
# Frames of the stream FFmpeg may hold at once (references, reordering and frame threads).
_DECODER_FRAMES = 24


@dataclass(frozen=True)
class VideoLimits:
    """How to sample a video, and the limits that refuse one (each names its RAYLENS_ variable).

    every_s: one frame at or after each multiple of every_s (0, every_s, 2*every_s, ...).
    scene_threshold: None (off) or 0..1; also sample a frame whose 32x18 grey thumbnail
    differs from the last sampled frame's by more than this (mean absolute difference / 255),
    unless it is within min_gap_s of the last sample.
    max_duration_s, max_frames (sampled), max_pixels (width * height of the stream).
    max_decoded_bytes: None (off) or the most bytes the sampled frames (RGB, as kept) may hold
    at once, plus the decoder's own frames; refused from the header duration when it is known,
    and on the frame that passes it.
    """

    every_s: float = 1.0
    scene_threshold: float | None = None
    max_duration_s: float = 3600
    max_frames: int = 2000
    max_pixels: int = 8_294_400
    min_gap_s: float = 0.25
    max_decoded_bytes: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.every_s) and self.every_s > 0):
            raise ValueError(f"every_s must be > 0, got {self.every_s!r}")
        if self.scene_threshold is not None and not 0.0 <= self.scene_threshold <= 1.0:
            raise ValueError(f"scene_threshold must be in 0..1, got {self.scene_threshold!r}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s!r}")
        if self.max_frames < 1 or self.max_pixels < 1:
            raise ValueError("max_frames and max_pixels must be >= 1")
        if not self.min_gap_s >= 0:
            raise ValueError(f"min_gap_s must be >= 0, got {self.min_gap_s!r}")
        if self.max_decoded_bytes is not None and self.max_decoded_bytes < 1:
            raise ValueError(f"max_decoded_bytes must be >= 1, got {self.max_decoded_bytes!r}")


@dataclass
class VideoFrame:
    """One sampled frame: its sample number, presentation time and RGB pixels."""

    index: int  # sample number, from 0
    timestamp_s: float  # pts * time_base, relative to the stream start
    rgb: np.ndarray  # uint8 (H, W, 3), upright (display rotation applied)
    reason: str  # "interval" | "scene"


@dataclass
class VideoInfo:
    """What the video was, and what sampling it took."""

    container: str  # one of VIDEO_CONTAINERS
    codec: str  # FFmpeg decoder name: "h264", "vp9", ...
    width: int  # coded width of the video stream
    height: int
    duration_s: float | None  # from the header; else the last decoded frame's timestamp
    fps: float | None  # average frame rate from the header
    frames_decoded: int
    frames_sampled: int
    seconds: float  # wall time sample_frames took


def sample_frames(
    source: bytes | str | Path,
    limits: VideoLimits,
    *,
    max_side: int | None = None,
    budget: DecodeBudget | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[list[VideoFrame], VideoInfo]:
    """Decode a video and sample frames; raises only InputError subclasses for bad input.

    source: the file's bytes, or the path of a local file (opened here, never handed to
    FFmpeg as a URL). max_side: scale sampled frames so the longer side is <= max_side.
    budget: the worker's DecodeBudget, held while frames are decoded for the most the sampled
    frames and the decoder may hold (video_cost), waiting for it first. progress: called every
    PROGRESS_FRAMES decoded frames, so a long video is seen moving (the worker's stall clock).

    EmptyInput, SourceMissing (no such file), UnsupportedFormat (magic bytes), TooLarge
    (resolution, duration, sampled frames or their decoded bytes over the limits; resolution
    and a known duration are checked before any frame is decoded), CorruptVideo (no video stream, or
    anything FFmpeg cannot demux/decode, also after some frames were decoded: never a
    partial result).
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side!r}")
    started = time.perf_counter()
    fh, container_name = _open_source(source)
    try:
        with fh:
            _check_complete(fh, container_name)
            frames, info = _sample(fh, container_name, limits, max_side, budget, progress)
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise CorruptVideo(f"cannot decode {container_name}: {_ffmpeg_message(exc)}") from None
    info.seconds = time.perf_counter() - started
    return frames, info


def _open_source(source: bytes | str | Path) -> tuple[BinaryIO, str]:
    """A readable file object for source, and its sniffed container."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        head = data[:VIDEO_SNIFF_BYTES]
        fh: BinaryIO = io.BytesIO(data)
    else:
        try:
            fh = open(source, "rb")  # closed by sample_frames
        except FileNotFoundError:
            raise SourceMissing(f"no such video file: {source}") from None
        head = fh.read(VIDEO_SNIFF_BYTES)
        fh.seek(0)
    if not head:
        fh.close()
        raise EmptyInput("input is empty (0 bytes)")
    container_name = sniff_video(head)
    if container_name is None:
        fh.close()
        shown = repr(head[:16])
        raise UnsupportedFormat(
            f"not a supported video (starts with {shown}); accepted: {', '.join(VIDEO_CONTAINERS)}"
        )
    return fh, container_name


def _check_complete(fh: BinaryIO, container_name: str) -> None:
    """Refuse a file cut short, from its own top-level sizes, before decoding anything.

    FFmpeg decodes the frames that are there and stops quietly at a cut, which would return
    a partial result. Files whose sizes are unknown (a live-recorded WebM) are not checked.
    """
    total = fh.seek(0, io.SEEK_END)
    try:
        if container_name in ("mp4", "mov"):
            _check_iso_boxes(fh, total)
        else:
            _check_ebml_segment(fh, total)
    finally:
        fh.seek(0)


def _check_iso_boxes(fh: BinaryIO, total: int) -> None:
    pos = 0
    for _ in range(_MAX_TOP_BOXES):
        if pos >= total:
            return
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            if not head.strip(b"\x00"):
                return  # zero padding after the last box
            raise CorruptVideo(f"truncated: {total - pos} stray bytes at offset {pos}")
        size, kind = int.from_bytes(head[:4], "big"), head[4:8]
        if size == 1 and len(head) == 16:
            size = int.from_bytes(head[8:16], "big")  # 64-bit largesize
        elif size == 0:
            return  # the box runs to the end of the file
        if size < 8:
            raise CorruptVideo(f"invalid {kind!r} box of {size} bytes at offset {pos}")
        if pos + size > total:
            raise CorruptVideo(
                f"truncated: the {kind!r} box at offset {pos} needs {size} bytes, "
                f"{total - pos} are there"
            )
        pos += size


def _check_ebml_segment(fh: BinaryIO, total: int) -> None:
    fh.seek(0)
    head = fh.read(256)
    header = read_ebml_vint(head, len(EBML_MAGIC))
    if header is None:
        return
    at = header[1] + header[0]  # end of the EBML header element
    if head[at : at + 4] != _EBML_SEGMENT_ID:
        return
    segment = read_ebml_vint(head, at + 4)
    if segment is None or segment[2]:
        return  # unknown size: written live, nothing to check against
    size, start, _ = segment
    if start + size > total:
        raise CorruptVideo(f"truncated: the Segment needs {start + size} bytes, {total} are there")


def _ffmpeg_message(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


def frame_bytes(width: int, height: int, max_side: int | None) -> int:
    """Bytes of one sampled frame as kept: RGB, its longer side scaled down to max_side."""
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width * height * 3


def decoder_bytes(width: int, height: int) -> int:
    """Bytes the decoder holds of its own: ~_DECODER_FRAMES frames of the stream in YUV 4:2:0
    (references, reordering, frame threads) and one full-size RGB conversion."""
    return int(width * height * (1.5 * _DECODER_FRAMES + 3))


def video_cost(
    width: int, height: int, duration_s: float | None, limits: VideoLimits, max_side: int | None
) -> tuple[int, int]:
    """(fewest, most) bytes sampling this video holds at its peak, from its header: the
    decoder's own (decoder_bytes) plus the sampled frames as kept (fewest: the interval
    samples a known duration certainly gives; most: every sample it may give, scene changes
    included, within max_frames and max_decoded_bytes)."""
    one = frame_bytes(width, height, max_side)
    decoder = decoder_bytes(width, height)
    if duration_s is None:
        fewest, most = 1, limits.max_frames
    else:
        fewest = max(1, math.floor(duration_s / limits.every_s + _EPS_S))
        most = fewest + 1
        if limits.scene_threshold is not None:
            most += math.ceil(duration_s / max(limits.min_gap_s, 1e-3)) + 1
    most = min(most, limits.max_frames)
    held = most * one
    if limits.max_decoded_bytes is not None:
        held = min(held, max(0, limits.max_decoded_bytes - decoder))
    return fewest * one + decoder, held + decoder


def _sample(
    fh: BinaryIO,
    container_name: str,
    limits: VideoLimits,
    max_side: int | None,
    budget: DecodeBudget | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[list[VideoFrame], VideoInfo]:
    with av.open(fh, mode="r", format=_DEMUXER[container_name]) as container:
        if not container.streams.video:
            raise CorruptVideo(f"{container_name}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        _check_pixels(width, height, limits)
        duration = _header_duration(stream, container)
        if duration is not None and duration > limits.max_duration_s:
            raise TooLarge(
                f"video lasts {duration:.1f} s; "
                f"limit RAYLENS_VIDEO_MAX_DURATION_S={limits.max_duration_s:g}"
            )
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        fewest, most = video_cost(width, height, duration, limits, max_side)
        if limits.max_decoded_bytes is not None and fewest > limits.max_decoded_bytes:
            lasting = f" for {duration:.1f} s" if duration is not None else ""
            raise TooLarge(
                f"video is {width}x{height}{lasting}: decoding and its sampled frames would "
                f"hold at least {fewest / 1e6:.0f} MB ({fewest} bytes); "
                f"limit RAYLENS_MAX_DECODED_BYTES_PER_INPUT={limits.max_decoded_bytes}"
            )
        sampler = _Sampler(limits, max_side, stream, fps, decoder_bytes(width, height))
        with budget.hold(most) if budget is not None else contextlib.nullcontext():
            for frame in container.decode(stream):
                sampler.feed(frame)
                if progress is not None and sampler.decoded % PROGRESS_FRAMES == 0:
                    progress()
        if not sampler.samples:
            raise CorruptVideo(
                f"{container_name}: no frame to sample ({sampler.decoded} frames decoded)"
            )
        info = VideoInfo(
            container=container_name,
            codec=ctx.name,
            width=width or sampler.width,
            height=height or sampler.height,
            duration_s=duration if duration is not None else sampler.last_t,
            fps=fps,
            frames_decoded=sampler.decoded,
            frames_sampled=len(sampler.samples),
            seconds=0.0,
        )
        return sampler.samples, info


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"video is {width}x{height} = {width * height} pixels; "
            f"limit RAYLENS_VIDEO_MAX_PIXELS={limits.max_pixels}"
        )


def _header_duration(stream: av.video.stream.VideoStream, container) -> float | None:
    """The stream's duration, else the container's, in seconds (None: the header has none)."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


class _Sampler:
    """Decides, frame by frame in presentation order, which frames to keep."""

    def __init__(
        self,
        limits: VideoLimits,
        max_side: int | None,
        stream: av.video.stream.VideoStream,
        fps: float | None,
        decoder: int = 0,
    ) -> None:
        self.limits = limits
        self.max_side = max_side
        self.fps = fps
        self.start: int | None = stream.start_time  # in stream.time_base units
        self.samples: list[VideoFrame] = []
        self.held = decoder  # bytes of the decoder's own frames and of the sampled frames
        self.decoded = 0
        self.width = 0
        self.height = 0
        self.last_t: float | None = None
        self.next_k = 0  # the next interval boundary is next_k * every_s
        self.last_sample_t = -math.inf
        self.last_thumb: np.ndarray | None = None
        # One per target: a reformatter keeps its scaler while the sizes stay the same.
        self.thumb_scaler = VideoReformatter()
        self.rgb_scaler = VideoReformatter()

    def feed(self, frame: av.VideoFrame) -> None:
        self.decoded += 1
        if frame.is_corrupt:
            raise CorruptVideo(f"frame {self.decoded - 1} is corrupt (damaged stream)")
        if frame.width * frame.height > self.limits.max_pixels:
            _check_pixels(frame.width, frame.height, self.limits)
        self.width, self.height = self.width or frame.width, self.height or frame.height
        t = self._timestamp(frame)
        if t > self.limits.max_duration_s:
            raise TooLarge(
                f"video runs past {self.limits.max_duration_s:g} s (frame at {t:.1f} s); "
                f"limit RAYLENS_VIDEO_MAX_DURATION_S={self.limits.max_duration_s:g}"
            )
        self.last_t = t if self.last_t is None else max(self.last_t, t)
        if t < 0:  # before the stream start (pre-roll an edit list cuts): never sampled
            return
        every = self.limits.every_s
        thumb = self._thumb(frame) if self.limits.scene_threshold is not None else None
        if t + _EPS_S >= self.next_k * every:
            self.next_k = math.floor((t + _EPS_S) / every) + 1
            self._keep(frame, t, "interval", thumb)
        elif thumb is not None and self._is_scene_change(t, thumb):
            self._keep(frame, t, "scene", thumb)

    def _timestamp(self, frame: av.VideoFrame) -> float:
        if frame.pts is None or frame.time_base is None:
            if self.last_t is None:
                return 0.0
            if self.fps:
                return self.last_t + 1.0 / self.fps
            raise CorruptVideo(f"frame {self.decoded - 1} has no timestamp")
        if self.start is None:
            self.start = frame.pts
        return float(Fraction(frame.pts - self.start) * frame.time_base)

    def _is_scene_change(self, t: float, thumb: np.ndarray) -> bool:
        assert self.limits.scene_threshold is not None
        if t - self.last_sample_t < self.limits.min_gap_s or self.last_thumb is None:
            return False
        diff = float(np.abs(thumb - self.last_thumb).mean()) / 255.0
        return diff > self.limits.scene_threshold

    def _keep(self, frame: av.VideoFrame, t: float, reason: str, thumb: np.ndarray | None) -> None:
        if len(self.samples) >= self.limits.max_frames:
            raise TooLarge(
                f"more than {self.limits.max_frames} frames would be sampled "
                f"(at {t:.1f} s); limit RAYLENS_VIDEO_MAX_FRAMES={self.limits.max_frames}"
            )
        rgb = _to_rgb(frame, self.max_side, self.rgb_scaler)
        self.held += rgb.nbytes
        cap = self.limits.max_decoded_bytes
        if cap is not None and self.held > cap:
            raise TooLarge(
                f"the {len(self.samples) + 1} frames sampled by {t:.1f} s "
                f"({rgb.shape[1]}x{rgb.shape[0]} RGB each) and the decoder hold {self.held} "
                f"bytes; limit RAYLENS_MAX_DECODED_BYTES_PER_INPUT={cap}"
            )
        self.samples.append(VideoFrame(len(self.samples), t, rgb, reason))
        self.last_sample_t = t
        if thumb is not None:
            self.last_thumb = thumb

    def _thumb(self, frame: av.VideoFrame) -> np.ndarray:
        small = self.thumb_scaler.reformat(
            frame, width=_THUMB_W, height=_THUMB_H, format="gray", interpolation="AREA"
        )  # AREA: a true block mean (FAST_BILINEAR is 10x cheaper but aliases on texture)
        return small.to_ndarray().astype(np.int16)


def _to_rgb(frame: av.VideoFrame, max_side: int | None, scaler: VideoReformatter) -> np.ndarray:
    """The frame as upright uint8 RGB, its longer side scaled down to max_side if given."""
    w, h = frame.width, frame.height
    rotation = int(frame.rotation or 0) % 360  # display matrix: degrees counter-clockwise
    rgb: np.ndarray
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        rgb = scaler.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if rotation in (90, 180, 270):
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb
