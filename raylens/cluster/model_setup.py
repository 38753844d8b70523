"""Settings -> models: the one place a worker (and doctor's timed load) builds its models.

`raylens/models` knows nothing of settings; this module reads them. A worker and `raylens doctor`
call the same functions, so doctor times the model exactly as a worker loads it (same weights
resolution, device, precision and torch threads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raylens.cluster.settings import Settings

if TYPE_CHECKING:  # torch and open_clip load in the process that runs the model, not at import
    from raylens.media.video import VideoLimits
    from raylens.models.clip import ClipEmbedder
    from raylens.models.faces import FaceBackend


def torch_threads(settings: Settings) -> int:
    """Threads torch may use: RAYLENS_TORCH_THREADS, else the CPUs the worker reserves."""
    return settings.torch_threads or max(1, round(settings.worker_num_cpus))


def build_embedder(settings: Settings, *, warmup: bool = True) -> ClipEmbedder:
    """The configured OpenCLIP embedder, loaded in this process (raises ModelLoadError)."""
    from raylens.models.clip import ClipEmbedder

    return ClipEmbedder(
        settings.clip_model,
        settings.clip_pretrained,
        device=settings.clip_device,
        precision=settings.clip_precision,
        model_config=settings.clip_model_config,
        threads=torch_threads(settings),
        warmup=warmup,
    )


def build_face_backend(settings: Settings) -> FaceBackend | None:
    """The configured face detector + embedder, or None when faces are off."""
    if not settings.faces_enabled:
        return None
    from raylens.models.faces import FaceOptions, load_face_backend

    return load_face_backend(
        FaceOptions(
            detector=settings.face_detector,
            upsample=settings.face_upsample,
            min_size_px=settings.face_min_size_px,
            max_faces=settings.face_max_faces,
            min_score=settings.face_min_score,
            jitters=settings.face_jitters,
        )
    )


def video_limits(settings: Settings) -> VideoLimits:
    """Frame sampling limits for video jobs."""
    from raylens.media.video import VideoLimits

    return VideoLimits(
        every_s=settings.video_every_s,
        scene_threshold=settings.video_scene_threshold,
        max_duration_s=settings.video_max_duration_s,
        max_frames=settings.video_max_frames,
        max_pixels=settings.video_max_pixels,
        max_decoded_bytes=settings.max_decoded_bytes_per_input,
    )
