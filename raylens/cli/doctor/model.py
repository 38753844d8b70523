"""The "models" checks: a timed model load exactly as a worker builds it, and the face models."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from raylens.cli.doctor.common import fix_from_message
from raylens.cli.doctor.report import ERROR, OK, SKIP, WARN, Check
from raylens.cluster.settings import Settings

MODEL_BATCH = 4


def check_model(settings: Settings, batch: int = MODEL_BATCH) -> Check:
    """Load the configured OpenCLIP model the way a worker does and time one batch."""
    import numpy as np

    from raylens.errors import ModelLoadError

    t0 = time.perf_counter()
    try:
        from raylens.cluster.model_setup import build_embedder

        # The worker's own builder (weights, device, precision, torch threads), so the timing
        # is the worker's; no warmup: the two timed batches below show first and steady calls.
        embedder = build_embedder(settings, warmup=False)
    except ModelLoadError as exc:
        return Check(
            "clip model",
            ERROR,
            exc.message,
            fix_from_message(exc.message, "check RAYLENS_CLIP_MODEL and RAYLENS_CLIP_PRETRAINED"),
            group="models",
        )
    except Exception as exc:  # an import or a library bug: still a report, not a traceback
        return Check(
            "clip model",
            ERROR,
            f"{type(exc).__name__}: {str(exc)[:400]}",
            "check RAYLENS_CLIP_MODEL, RAYLENS_CLIP_PRETRAINED and RAYLENS_CLIP_DEVICE",
            group="models",
        )
    wall = time.perf_counter() - t0
    s = embedder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    timings = []
    try:
        for _ in range(2):  # the first call allocates and picks kernels; the second is steady
            t1 = time.perf_counter()
            vectors = embedder.embed_images(pixels)
            timings.append(time.perf_counter() - t1)
        t2 = time.perf_counter()
        embedder.embed_texts(["a photo of a dog"])
        text_s = time.perf_counter() - t2
    except Exception as exc:
        return Check(
            "clip model",
            ERROR,
            f"{embedder.model_id} loaded on {embedder.device} ({embedder.dtype}) but inference "
            f"failed: {type(exc).__name__}: {str(exc)[:300]}",
            "set RAYLENS_CLIP_PRECISION=fp32, or RAYLENS_CLIP_DEVICE=cpu to rule out the GPU",
            group="models",
        )
    report = embedder.report()
    data = {
        **report,
        "import_and_load_seconds": round(wall, 3),
        "batch": batch,
        "batch_seconds_first": round(timings[0], 4),
        "batch_seconds": round(timings[1], 4),
        "images_per_s": round(batch / timings[1], 1) if timings[1] > 0 else None,
        "text_seconds": round(text_s, 4),
    }
    if embedder.device == "cuda":
        import torch

        data["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    detail = (
        f"{report['model_id']} on {report['device']} ({report['dtype']}), dim {report['dim']}, "
        f"{s}px: loaded in {report['load_seconds']:.2f}s ({wall:.2f}s with imports); "
        f"batch of {batch}: {timings[0]:.3f}s first, {timings[1]:.3f}s next "
        f"({data['images_per_s']} images/s); text query {text_s:.3f}s"
    )
    norms = np.linalg.norm(vectors, axis=1)
    if not np.isfinite(vectors).all() or not np.allclose(norms, 1.0, atol=1e-2):
        return Check(
            "clip model",
            ERROR,
            detail + "; the vectors are not finite unit vectors (NaN/inf)",
            "set RAYLENS_CLIP_PRECISION=fp32 (half precision overflows on this model/device)",
            group="models",
            data=data,
        )
    if settings.random_weights:
        return Check(
            "clip model",
            WARN,
            detail + "; RANDOM weights (RAYLENS_CLIP_PRETRAINED=none): vectors are meaningless",
            "set RAYLENS_CLIP_PRETRAINED to an OpenCLIP tag or a checkpoint file",
            group="models",
            data=data,
        )
    return Check("clip model", OK, detail, group="models", data=data)


def check_faces(settings: Settings) -> Check:
    if not settings.faces_enabled:
        return Check(
            "face models", SKIP, "faces disabled (RAYLENS_FACES_ENABLED=false)", group="models"
        )
    from raylens.errors import ModelLoadError
    from raylens.models.faces import MODEL_FILES, models_dir

    try:
        folder = models_dir()
    except ModelLoadError as exc:
        return Check(
            "face models",
            ERROR,
            exc.message,
            fix_from_message(
                exc.message,
                "pip install --force-reinstall face_recognition_models, or set "
                "RAYLENS_FACES_ENABLED=false",
            ),
            group="models",
        )
    sizes = {f: (folder / f).stat().st_size for f in MODEL_FILES.values()}
    files = ", ".join(f"{f} ({n / 1e6:.1f} MB)" for f, n in sizes.items())
    data: dict[str, Any] = {"folder": str(folder), "files": sizes}
    if importlib.util.find_spec("dlib") is None:
        return Check(
            "face models",
            ERROR,
            f"model files in {folder} but dlib is not installed",
            "pip install dlib-bin, or set RAYLENS_FACES_ENABLED=false",
            group="models",
            data=data,
        )
    try:
        import dlib

        cuda = bool(getattr(dlib, "DLIB_USE_CUDA", False))
        data.update(dlib_version=getattr(dlib, "__version__", None), dlib_cuda=cuda)
    except Exception as exc:  # a broken binary wheel
        return Check(
            "face models",
            ERROR,
            f"dlib cannot be imported: {type(exc).__name__}: {exc}",
            "reinstall dlib-bin for this Python, or set RAYLENS_FACES_ENABLED=false",
            group="models",
            data=data,
        )
    detector = settings.face_detector
    note = ""
    if detector == "cnn" and not cuda:
        note = "; cnn detector on a dlib without CUDA is slow (seconds per image)"
    return Check(
        "face models",
        OK,
        f"dlib {data['dlib_version']} ({'CUDA' if cuda else 'CPU'}), detector {detector}; "
        f"{files} in {folder}{note}",
        group="models",
        data=data,
    )
