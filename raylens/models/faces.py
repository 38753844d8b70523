"""Face detection, 5-point alignment and 128-d face embeddings, behind a small backend interface.

The shipped backend uses dlib's pretrained models from `face_recognition_models` (HOG or CNN
detector, 5-point shape predictor, ResNet face embedding). A GPU backend (for example ONNX
RetinaFace + ArcFace) implements FaceBackend and is chosen in `load_face_backend`; the job
system only sees Face records and vectors.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raylens.errors import ModelLoadError

MODEL_FILES = {
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "embedding": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}


@dataclass(frozen=True)
class FaceOptions:
    detector: str = "hog"  # "hog" (CPU, fast) or "cnn" (more accurate; GPU when dlib has CUDA)
    upsample: int = 1  # times the image is upsampled before detection (finds smaller faces)
    min_size_px: int = 20  # smaller boxes (shorter side, original pixels) are dropped
    max_faces: int = 32  # the largest ones are kept
    min_score: float = 0.0  # detector score threshold (HOG margin / CNN confidence)
    jitters: int = 1  # dlib re-samples per embedding (more = slower, slightly more robust)


@dataclass
class Face:
    """One face in original-image pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: list[tuple[float, float]]  # 5 points (eye corners and nose), dlib order
    vector: np.ndarray  # float32 (dim,)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("vector")
        d["box"] = [round(v, 1) for v in self.box]
        d["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        d["score"] = round(self.score, 4)
        return d


class FaceBackend(ABC):
    """Finds faces in a batch of RGB images and embeds each one."""

    model_id: str
    dim: int
    load_seconds: float

    @abstractmethod
    def faces(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[list[Face]]:
        """Faces per image, largest first. images: uint8 (H, W, 3) RGB; scales: image pixels
        per original pixel, so boxes and landmarks come back in original coordinates."""

    def report(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "dim": self.dim, "load_seconds": self.load_seconds}


def models_dir() -> Path:
    """The folder of face_recognition_models' files, found without importing the package (its
    __init__ imports pkg_resources, which newer setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "face models are not installed: pip install face_recognition_models dlib-bin"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [f for f in MODEL_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"face model files missing in {folder}: {', '.join(missing)}")
    return folder


class DlibFaces(FaceBackend):
    """dlib's HOG or CNN (MMOD) detector, 5-point landmarks and ResNet 128-d embeddings.

    Thread-safe: a worker calls `faces` from its batch loop and from query calls
    (faces_in_bytes) at once. dlib's models are not: its object_detector is documented as unsafe
    for concurrent use, and two threads in the HOG detector at once crashed the process
    (SIGSEGV, tests/test_faces.py). So each of the three models has its own lock: threads take
    turns per model, and one may embed while another detects.
    """

    dim = 128

    def __init__(self, options: FaceOptions) -> None:
        t0 = time.perf_counter()
        try:
            import dlib
        except ImportError as exc:
            raise ModelLoadError(f"dlib is not installed ({exc}): pip install dlib-bin") from None
        if options.detector not in ("hog", "cnn"):
            raise ModelLoadError(f"unknown face detector {options.detector!r} (hog or cnn)")
        folder = models_dir()
        self.options = options
        self._dlib = dlib
        self._cnn = options.detector == "cnn"
        if self._cnn:
            self._detector = dlib.cnn_face_detection_model_v1(str(folder / MODEL_FILES["cnn"]))
        else:
            self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(folder / MODEL_FILES["landmarks"]))
        self._embedder = dlib.face_recognition_model_v1(str(folder / MODEL_FILES["embedding"]))
        self._detector_lock = threading.Lock()
        self._landmarks_lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self.model_id = f"dlib-{options.detector}-5pt-resnet128"
        self.load_seconds = round(time.perf_counter() - t0, 3)

    def _detect(self, image: np.ndarray) -> list[tuple[Any, float]]:
        if self._cnn:
            with self._detector_lock:
                found = self._detector(image, self.options.upsample)
            return [(d.rect, float(d.confidence)) for d in found]
        with self._detector_lock:
            rects, scores, _ = self._detector.run(image, self.options.upsample, 0.0)
        return list(zip(rects, (float(s) for s in scores)))

    def faces(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[list[Face]]:
        dlib = self._dlib
        opts = self.options
        kept_images, kept_shapes, kept_meta = [], [], []
        out: list[list[Face]] = [[] for _ in images]
        for i, (image, scale) in enumerate(zip(images, scales)):
            image = np.ascontiguousarray(image)
            found = []
            for rect, score in self._detect(image):
                side = min(rect.width(), rect.height()) / scale
                if score >= opts.min_score and side >= opts.min_size_px:
                    found.append((rect, score))
            found.sort(key=lambda rs: -(rs[0].width() * rs[0].height()))
            found = found[: opts.max_faces]
            if not found:
                continue
            shapes = dlib.full_object_detections()
            with self._landmarks_lock:
                for rect, _ in found:
                    shapes.append(self._landmarks(image, rect))
            kept_images.append(image)
            kept_shapes.append(shapes)
            kept_meta.append((i, scale, found, shapes))
        if not kept_images:
            return out
        # One call for the whole batch: dlib aligns every face chip and runs the ResNet on them.
        with self._embedder_lock:
            vectors = self._embedder.compute_face_descriptor(kept_images, kept_shapes, opts.jitters)
        for (i, scale, found, shapes), vecs in zip(kept_meta, vectors):
            for (rect, score), shape, vec in zip(found, shapes, vecs):
                out[i].append(
                    Face(
                        box=(
                            rect.left() / scale,
                            rect.top() / scale,
                            rect.right() / scale,
                            rect.bottom() / scale,
                        ),
                        score=score,
                        landmarks=[(p.x / scale, p.y / scale) for p in shape.parts()],
                        vector=np.asarray(vec, dtype=np.float32),
                    )
                )
        return out


def load_face_backend(options: FaceOptions) -> FaceBackend:
    """The configured backend (dlib today; a GPU backend would be picked here)."""
    return DlibFaces(options)
