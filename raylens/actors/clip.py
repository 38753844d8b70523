"""ClipEmbedder: OpenCLIP loaded once; uint8 image batches (or texts) in, unit vectors out.

A plain class, testable without Ray; the cluster's Worker actor wraps it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from raylens.actors.device import select_device, select_dtype
from raylens.actors.model_id import RANDOM_SEED, model_id_for
from raylens.actors.transforms import normalise_batch
from raylens.errors import ModelLoadError

log = logging.getLogger("raylens.clip")

# How many models this process has loaded; the system checks it stays 1 per worker.
_LOADS = 0


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _hub_host() -> tuple[str, int]:
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))  # HF's own knob
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return endpoint.hostname or "huggingface.co", port


def _reachable(where: tuple[str, int], timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(where, timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_weights(open_clip: Any, model_name: str, tag: str) -> str | None:
    """The weights file for a tag if the Hugging Face cache already has it."""
    hub = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "").rstrip("/")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename)
        if isinstance(found, str):
            return found
    return None


class ClipEmbedder:
    """One OpenCLIP model on one device. Construct once per process; it loads in __init__."""

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
        import open_clip

        t0 = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        if model_config is not None:
            if not Path(model_config).is_file():
                raise ModelLoadError(f"RAYLENS_CLIP_MODEL_CONFIG={model_config} does not exist")
            open_clip.add_model_config(str(model_config))
        if model_name not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown OpenCLIP model {model_name!r}; set RAYLENS_CLIP_MODEL to one of "
                "open_clip.list_models() (e.g. ViT-B-32) or register it with "
                "RAYLENS_CLIP_MODEL_CONFIG"
            )
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = select_device(device)
        self.dtype = select_dtype(self.device, precision)
        self.model_id = model_id_for(model_name, pretrained)
        weights = self._resolve_weights(open_clip, model_name, pretrained)
        try:
            model = open_clip.create_model(model_name, pretrained=weights, device="cpu")
        except ModelLoadError:
            raise
        except Exception as exc:
            raise self._load_error(model_name, pretrained, exc) from None
        model.eval().requires_grad_(False)
        self.model = model.to(device=self.device, dtype=self.dtype)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = int(self.embed_texts(["warm-up"]).shape[1])
        _LOADS += 1
        self.load_seconds = time.perf_counter() - t0
        self.warmup_seconds = 0.0
        if warmup:
            t1 = time.perf_counter()
            self.embed_images(np.zeros((2, self.image_size, self.image_size, 3), np.uint8))
            self.warmup_seconds = time.perf_counter() - t1
        log.info(
            "loaded %s on %s (%s) in %.1fs",
            self.model_id,
            self.device,
            self.dtype,
            self.load_seconds,
        )

    @staticmethod
    def _resolve_weights(open_clip: Any, model_name: str, pretrained: str) -> str | None:
        if pretrained.lower() == "none":
            msg = (
                f"RAYLENS_CLIP_PRETRAINED=none: {model_name} has RANDOM weights (seed "
                f"{RANDOM_SEED}); its vectors are meaningless. Benchmarks and smoke runs only."
            )
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
            torch.manual_seed(RANDOM_SEED)  # every worker process gets identical weights
            return None
        path = Path(pretrained).expanduser()
        if path.is_file():
            return str(path)
        if _looks_like_path(pretrained):
            raise ModelLoadError(
                f"checkpoint {pretrained} does not exist; set "
                "RAYLENS_CLIP_PRETRAINED to a readable checkpoint file"
            )
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ModelLoadError(
                f"{model_name} has no pretrained tag {pretrained!r}; set RAYLENS_CLIP_PRETRAINED "
                f"to one of {', '.join(tags) or '(none known)'}, a checkpoint path, or none"
            )
        cached = _cached_weights(open_clip, model_name, pretrained)
        if cached:
            return cached  # a file path: open_clip loads it without asking the hub again
        host = _hub_host()
        if not _reachable(host):
            # Fail at once: the hub client would otherwise retry for most of a minute.
            raise ModelLoadError(
                f"the {pretrained!r} weights for {model_name} are not cached and {host[0]} cannot "
                "be reached to download them. Set RAYLENS_CLIP_PRETRAINED to a local checkpoint "
                "path (or to none for random weights, benchmarks only)"
            )
        return pretrained

    @staticmethod
    def _load_error(model_name: str, pretrained: str, exc: Exception) -> ModelLoadError:
        if _looks_like_path(pretrained) or Path(pretrained).expanduser().is_file():
            return ModelLoadError(
                f"cannot load checkpoint {pretrained} into {model_name}: "
                f"{type(exc).__name__}: {exc}; check RAYLENS_CLIP_PRETRAINED "
                "and RAYLENS_CLIP_MODEL"
            )
        return ModelLoadError(
            f"the {pretrained!r} weights for {model_name} could not be obtained "
            f"({type(exc).__name__}: {str(exc)[:300]}). Set RAYLENS_CLIP_PRETRAINED to a local "
            "checkpoint path (or to none for random weights, benchmarks only)"
        )

    def report(self) -> dict[str, Any]:
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
            "torch_version": torch.__version__,
        }

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) -> L2-normalised float32 (B, dim). uint8 travels to the device
        (4x less than float) and is normalised there."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        x = normalise_batch(batch, self.mean, self.std, self.dtype)
        feats = self.model.encode_image(x, normalize=True)
        return feats.float().cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        feats = self.model.encode_text(tokens, normalize=True)
        return feats.float().cpu().numpy()
