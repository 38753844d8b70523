"""ClipEmbedder: OpenCLIP loaded once; uint8 image batches (or texts) in, unit vectors out.

A plain class, testable without Ray; the Worker actor wraps it. Which weights to load (tag,
checkpoint, cache, offline checks) is decided in raylens.models.weights.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens.errors import ModelLoadError
from raylens.media.transforms import INTERPOLATIONS, RESIZE_MODES, normalise_batch
from raylens.models.device import select_device, select_dtype
from raylens.models.model_id import model_id_for
from raylens.models.weights import load_error, weights_args

log = logging.getLogger("raylens.clip")

# How many models this process has loaded; the system checks it stays 1 per worker.
_LOADS = 0

_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_WARMUP_BATCH = 2


class ClipEmbedder:
    """One OpenCLIP model on one device. Construct once per process: it loads in __init__.

    `pretrained` is an OpenCLIP tag (e.g. "laion2b_s34b_b79k"), a local checkpoint path, or
    "none" (random weights from a fixed seed: identical in every process, meaningless vectors).
    Any failure to load raises ModelLoadError naming the RAYLENS_* setting to fix.
    """

    model_id: str
    dim: int
    image_size: int
    device: str
    dtype: torch.dtype
    resize_mode: str  # pass to decode_image with interpolation, so pixels match the model
    interpolation: str

    def __init__(
        self,
        model_name: str,
        pretrained: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        model_config: Path | None = None,
        threads: int | None = None,
        warmup: bool = True,
    ) -> None:
        global _LOADS
        import open_clip  # heavy: imported by the process that loads, not by its importers

        t0 = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = select_device(device)
        self.dtype = select_dtype(self.device, precision)
        _check_model_name(open_clip, model_name, model_config)
        self.model_id = model_id_for(model_name, pretrained)
        load_args = weights_args(open_clip, model_name, pretrained)
        try:
            model = open_clip.create_model(
                model_name,
                device=self.device,
                precision=_OPEN_CLIP_PRECISION[self.dtype],
                **load_args,
            )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:
            raise load_error(model_name, pretrained, exc) from exc
        self.model = model.eval().requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
        # How decode_image must shape pixels for this model (SigLIP-style tags "squash").
        self.resize_mode = str(cfg.get("resize_mode") or "shortest")
        self.interpolation = str(cfg.get("interpolation") or "bicubic")
        if self.resize_mode not in RESIZE_MODES or self.interpolation not in INTERPOLATIONS:
            raise ModelLoadError(
                f"{model_name} wants {self.resize_mode}/{self.interpolation} preprocessing, which "
                "raylens does not implement; choose another RAYLENS_CLIP_MODEL or tag"
            )
        self.dim = _embed_dim(open_clip, model_name, model)
        # The largest image batch known to fit in device memory (None: not limited yet) and
        # how often an out-of-memory error halved one.
        self.fitting_batch: int | None = None
        self.oom_halvings = 0
        _LOADS += 1
        self.load_seconds = time.perf_counter() - t0
        self.warmup_seconds = 0.0
        if warmup:  # first calls allocate and pick kernels; pay that here, not on a user's job
            t1 = time.perf_counter()
            blank = np.zeros((_WARMUP_BATCH, self.image_size, self.image_size, 3), np.uint8)
            try:
                self.embed_images(blank)
                self.embed_texts(["a photo"])
            except Exception as exc:  # e.g. an op or dtype this device lacks, or no memory
                raise ModelLoadError(
                    f"{self.model_id} loaded but failed its warm-up on {self.device} "
                    f"({self.dtype}): {type(exc).__name__}: {str(exc)[:300]}; check "
                    "RAYLENS_CLIP_DEVICE and RAYLENS_CLIP_PRECISION"
                ) from exc
            self.warmup_seconds = time.perf_counter() - t1
        log.info(
            "loaded %s on %s (%s, dim %d) in %.1fs, warm-up %.1fs",
            self.model_id,
            self.device,
            self.dtype,
            self.dim,
            self.load_seconds,
            self.warmup_seconds,
        )

    def report(self) -> dict[str, Any]:
        """What this process loaded and how long it took (the system checks load_count == 1)."""
        return {
            "model_id": self.model_id,
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "dim": self.dim,
            "image_size": self.image_size,
            "load_seconds": round(self.load_seconds, 3),
            "warmup_seconds": round(self.warmup_seconds, 3),
            "load_count": _LOADS,
            "pid": os.getpid(),
            # a plain str: torch's TorchVersion would make every reader of a report import torch
            "torch_version": str(torch.__version__),
            "fitting_batch": self.fitting_batch,
            "oom_halvings": self.oom_halvings,
        }

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (B, S, S, 3) with S = image_size -> L2-normalised float32 (B, dim).

        pixels: a numpy array, or a torch tensor (e.g. decoded on the device already).

        uint8 travels to the device (4x fewer bytes than float32) and is normalised there.
        """
        s = self.image_size
        uint8 = pixels.dtype == (torch.uint8 if isinstance(pixels, torch.Tensor) else np.uint8)
        if not uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3):
            raise ValueError(
                f"embed_images wants uint8 (B, {s}, {s}, 3); got {pixels.dtype} {pixels.shape}"
            )
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        # Out of device memory on a batch: halve it and go on, and keep the size that fitted
        # for the batches after (a worker never fails jobs because a batch was too big).
        out, i = [], 0
        while i < len(pixels):
            size = min(len(pixels) - i, self.fitting_batch or len(pixels))
            try:
                out.append(self._embed(pixels[i : i + size]))
            except Exception as exc:
                if not _is_oom(exc) or size == 1:
                    raise
                self.oom_halvings += 1
                self.fitting_batch = size // 2
                log.warning("out of memory on a batch of %d; halving it to %d", size, size // 2)
                _free_device_cache(self.device)
                continue
            i += size
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _embed(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(pixels, torch.Tensor):  # decoded on the device already (a no-op move)
            batch = pixels.to(self.device)
        elif self.device == "cuda":
            batch = torch.from_numpy(np.ascontiguousarray(pixels))
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        x = normalise_batch(batch, self.mean, self.std, self.dtype)
        feats = self.model.encode_image(x, normalize=True)
        return feats.float().cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 (B, dim), in the same space as the images."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        feats = self.model.encode_text(tokens, normalize=True)
        return feats.float().cpu().numpy()


def _is_oom(exc: BaseException) -> bool:
    """Out of device memory: CUDA's own error, or the RuntimeError MPS (and older torch) raise."""
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError)
        if isinstance(t, type)
    )
    if isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _check_model_name(open_clip: Any, model_name: str, model_config: Path | None) -> None:
    """Register an extra architecture file, then make sure the name is known."""
    hint = ""
    if model_config is not None:
        path = Path(model_config).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"RAYLENS_CLIP_MODEL_CONFIG={model_config} is not a file")
        try:
            open_clip.add_model_config(path)
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ModelLoadError(
                f"RAYLENS_CLIP_MODEL_CONFIG={model_config} cannot be read: {exc}"
            ) from exc
        # open_clip names a config after its file and skips files missing its required keys.
        hint = (
            f"; RAYLENS_CLIP_MODEL_CONFIG registers {path.stem!r} if the file has embed_dim, "
            "vision_cfg and text_cfg"
        )
    if model_name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown OpenCLIP model {model_name!r}: set RAYLENS_CLIP_MODEL to one of "
            f"open_clip.list_models() (e.g. ViT-B-32){hint}"
        )


def _embed_dim(open_clip: Any, model_name: str, model: Any) -> int:
    cfg = open_clip.get_model_config(model_name) or {}
    if "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    with torch.inference_mode():  # architectures without a plain config: ask the model
        probe = open_clip.get_tokenizer(model_name)(["x"]).to(next(model.parameters()).device)
        return int(model.encode_text(probe).shape[-1])
