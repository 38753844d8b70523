"""Pipeline stage one: read a job's source, decode it to model-ready pictures (or a Failure)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raylens.cluster.jobs import Failure, Job, SourceKind
from raylens.cluster.objects import ObjectStores
from raylens.cluster.payloads import PayloadStore
from raylens.cluster.settings import Settings
from raylens.errors import (
    INFRA_ERRORS,
    ErrorCode,
    InputError,
    ModelLoadError,
    RaylensError,
    SourceMissing,
    TooLarge,
)
from raylens.media.budget import DecodeBudget
from raylens.media.transforms import DecodedImage, decode_image, prepare_rgb, sniff_format
from raylens.media.video import VideoLimits, sample_frames, sniff_video

if TYPE_CHECKING:  # torch and open_clip load in the process that runs the model, not at import
    from raylens.models.clip import ClipEmbedder


def _nothing() -> None:
    """No progress to report (tests, callers without a stall clock)."""


@dataclass
class Item:
    """One picture of a job: the image itself, or one sampled frame of a video."""

    image: DecodedImage
    part: str  # "image" or "frame:<n>": part of the point id
    meta: dict[str, Any] = field(default_factory=dict)  # frame number and timestamp


@dataclass
class Decoded:
    items: list[Item]
    video: dict[str, Any] | None = None  # what the video decoder reported


def decode_device_for(setting: str, model_device: str) -> str:
    """RAYLENS_DECODE_DEVICE resolved for a worker whose model runs on model_device."""
    if setting == "auto":
        return "cuda" if model_device == "cuda" else "cpu"
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "RAYLENS_DECODE_DEVICE=cuda but this worker has no CUDA device; use cpu or auto"
        )
    return setting


def _upright(rgb: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """The stored video size, turned like the frame when rotation metadata turned it."""
    turned = (rgb.shape[1] > rgb.shape[0]) != (width > height) and width != height
    return (height, width) if turned else (width, height)


class JobReader:
    """Source bytes -> decoded pictures, with the model's own preprocess geometry."""

    def __init__(
        self,
        settings: Settings,
        embedder: ClipEmbedder,
        payloads: PayloadStore,
        video_limits: VideoLimits,
        *,
        faces_on: bool,
        decode_device: str = "cpu",
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.payloads = payloads
        self.video_limits = video_limits
        self.faces_on = faces_on
        self.decode_device = decode_device
        # Shared by every decode thread of this worker (RAYLENS_MAX_DECODED_BYTES_PER_WORKER).
        self.budget = DecodeBudget(settings.max_decoded_bytes_per_worker)
        # Buckets of URI jobs, reached with this worker's own AWS_* environment, on first use.
        self.objects = ObjectStores(settings)
        # Called as a long input moves (every few dozen video frames): the worker's stall clock.
        self.progress: Callable[[], None] = _nothing

    def wants_faces(self, job: Job) -> bool:
        return self.faces_on and job.pipeline.finds_faces

    def load_and_decode(self, job: Job) -> Decoded | Failure:
        """Never raises: a bad input becomes its own Failure, so it fails alone."""
        try:
            return self.decode_job(job)
        except InputError as exc:
            return Failure(job.id, exc.code, exc.message)
        except RaylensError as exc:  # payload store down: try again later, at no attempt's cost
            infra = isinstance(exc, INFRA_ERRORS)
            return Failure(job.id, exc.code, exc.message, retryable=True, infra=infra)
        except Exception as exc:  # never let one input take the worker down
            return Failure(job.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", True)

    def read_source(self, job: Job) -> bytes | str:
        """The job's bytes; a video file on disk is returned as its path (decoded in place)."""
        if job.source_kind is SourceKind.UPLOAD:
            return self.payloads.get(job.source)
        if job.source_kind is SourceKind.PATH:
            try:
                return self._read_path(job.source)
            except FileNotFoundError:
                raise SourceMissing(f"{job.source} no longer exists") from None
            except IsADirectoryError:
                raise SourceMissing(f"{job.source} is a folder, not a file") from None
            except PermissionError as exc:
                raise SourceMissing(f"{job.source} cannot be read: {exc}") from None
        if job.source_kind is SourceKind.URI:
            return self._read_object(job)
        raise SourceMissing(f"job {job.id}: source kind {job.source_kind.value} not supported")

    def _read_object(self, job: Job) -> bytes:
        """An object's bytes, straight from its bucket (never through the driver). Its size
        is checked before its body is read: against the video cap first, since only the bytes
        tell a video, then against the image cap once they are read."""
        s = self.settings
        cap, name = max(
            (s.max_input_bytes, "RAYLENS_MAX_INPUT_BYTES"),
            (s.max_video_bytes, "RAYLENS_MAX_VIDEO_BYTES"),
        )
        data = self.objects.read(job.source, cap, name, sha256=job.sha256)
        if len(data) > s.max_input_bytes and sniff_video(data[:64]) is None:
            raise TooLarge(
                f"{job.source} has {len(data)} bytes; limit RAYLENS_MAX_INPUT_BYTES="
                f"{s.max_input_bytes}"
            )
        return data

    def _read_path(self, path: str) -> bytes | str:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # one path lookup, not two
            head = f.read(64)
            if sniff_video(head) is not None:
                if size > self.settings.max_video_bytes:
                    raise TooLarge(
                        f"{path} has {size} bytes; limit "
                        f"RAYLENS_MAX_VIDEO_BYTES={self.settings.max_video_bytes}"
                    )
                return path
            if size > self.settings.max_input_bytes:
                raise TooLarge(
                    f"{path} has {size} bytes; limit RAYLENS_MAX_INPUT_BYTES="
                    f"{self.settings.max_input_bytes}"
                )
            return head + f.read()

    def decode(self, data: bytes, keep_side: int | None = None) -> DecodedImage:
        """Decode with the model's own preprocess geometry (size, resize mode, interpolation)."""
        return decode_image(
            data,
            self.embedder.image_size,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_input_bytes,
            resize_mode=self.embedder.resize_mode,
            interpolation=self.embedder.interpolation,
            keep_side=keep_side,
            max_decoded_bytes=self.settings.max_decoded_bytes_per_input,
            budget=self.budget,
        )

    def decode_job(self, job: Job) -> Decoded:
        source = self.read_source(job)
        keep = self.settings.face_max_side if self.wants_faces(job) else None
        fmt = None if isinstance(source, str) else sniff_format(source)
        if isinstance(source, str) or (fmt is None and sniff_video(source)):
            return self._decode_video(source, keep)
        if self.decode_device != "cpu" and keep is None and fmt == "jpeg":
            return Decoded([Item(self._decode_on_device(source), "image")])
        return Decoded([Item(self.decode(source, keep), "image")])

    def _decode_on_device(self, data: bytes) -> DecodedImage:
        from raylens.media.device_decode import decode_jpeg_on_device

        return decode_jpeg_on_device(
            data,
            self.embedder.image_size,
            self.decode_device,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_input_bytes,
            resize_mode=self.embedder.resize_mode,
            interpolation=self.embedder.interpolation,
            max_decoded_bytes=self.settings.max_decoded_bytes_per_input,
            budget=self.budget,
        )

    def _decode_video(self, source: bytes | str, keep_side: int | None) -> Decoded:
        if isinstance(source, bytes) and len(source) > self.settings.max_video_bytes:
            raise TooLarge(
                f"video has {len(source)} bytes; limit "
                f"RAYLENS_MAX_VIDEO_BYTES={self.settings.max_video_bytes}"
            )
        # Frames are kept only as large as needed: twice the model input, or up to 960 pixels
        # when faces are wanted (a long video holds all its sampled frames at once).
        side = max(min(keep_side or 0, 960), self.embedder.image_size * 2)
        frames, info = sample_frames(
            source, self.video_limits, max_side=side, budget=self.budget, progress=self.progress
        )
        items = []
        frames.reverse()
        while frames:
            frame = frames.pop()  # each full-size frame is dropped once it is prepared
            image = prepare_rgb(
                frame.rgb,
                self.embedder.image_size,
                resize_mode=self.embedder.resize_mode,
                interpolation=self.embedder.interpolation,
                keep_side=min(keep_side, side) if keep_side else None,
                fmt=info.container,
                original=_upright(frame.rgb, info.width, info.height),
            )
            meta = {
                "frame": frame.index,
                "timestamp_s": round(frame.timestamp_s, 3),
                "sampled_by": frame.reason,
            }
            items.append(Item(image, f"frame:{frame.index}", meta))
        video = {
            "container": info.container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "duration_s": info.duration_s,
            "fps": info.fps,
            "frames_decoded": info.frames_decoded,
            "frames_sampled": info.frames_sampled,
        }
        return Decoded(items, video)
