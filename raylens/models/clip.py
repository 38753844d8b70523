"""ClipEmbedder: OpenCLIP loaded once; uint8 image batches (or texts) in, unit vectors out.

A plain class, testable without Ray; the cluster's Worker actor wraps it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from raylens.errors import ModelLoadError
from raylens.media.transforms import INTERPOLATIONS, RESIZE_MODES, normalise_batch
from raylens.models.device import select_device, select_dtype
from raylens.models.model_id import RANDOM_SEED, model_id_for

log = logging.getLogger("raylens.clip")

# How many models this process has loaded; the system checks it stays 1 per worker.
_LOADS = 0

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The preprocess keys a pretrained tag may set (size always comes from the model itself).
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
# A TCP connect to the download host (or proxy) bounds how long an offline start takes: the
# Hugging Face client retries each file with backoff, about 46 s for a tag before it gives up.
_PROBE_TIMEOUT_S = 3.0
_WARMUP_BATCH = 2
_NO_WEIGHTS_HINT = (
    "Set RAYLENS_CLIP_PRETRAINED to a local checkpoint path (or to none for random weights, "
    "benchmarks only)"
)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith("~") or value.endswith(_CHECKPOINT_SUFFIXES)


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
        load_args = _weights_args(open_clip, model_name, pretrained)
        try:
            model = open_clip.create_model(
                model_name,
                device=self.device,
                precision=_OPEN_CLIP_PRECISION[self.dtype],
                **load_args,
            )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:
            raise _load_error(model_name, pretrained, exc) from exc
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


def _weights_args(open_clip: Any, model_name: str, pretrained: str) -> dict[str, Any]:
    """open_clip.create_model keyword arguments for RAYLENS_CLIP_PRETRAINED, checked up front."""
    if pretrained.lower() == "none":
        msg = (
            f"RAYLENS_CLIP_PRETRAINED=none: {model_name} gets RANDOM weights (seed "
            f"{RANDOM_SEED}); its vectors are meaningless. Benchmarks and smoke runs only."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        log.warning(msg)
        # Every worker process must build identical weights, or their vectors would not mix.
        torch.manual_seed(RANDOM_SEED)
        return {"pretrained": None, "pretrained_text": False, "pretrained_image": False}
    path = Path(pretrained).expanduser()
    if path.is_file():
        return {"pretrained": str(path)}
    if _looks_like_path(pretrained):
        raise ModelLoadError(
            f"checkpoint {pretrained} does not exist or is not a file; set "
            "RAYLENS_CLIP_PRETRAINED to a readable checkpoint file (or an OpenCLIP tag)"
        )
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelLoadError(
            f"{model_name} has no pretrained tag {pretrained!r}; set RAYLENS_CLIP_PRETRAINED "
            f"to one of: {', '.join(tags) or '(no tags for this model)'}; or a checkpoint "
            "path, or none"
        )
    return _tag_args(model_name, pretrained, tag_cfg)


def _tag_args(model_name: str, tag: str, tag_cfg: dict[str, Any]) -> dict[str, Any]:
    """Load a tag from the local cache when it is there; refuse at once when it cannot be
    downloaded (no network), instead of letting the hub client retry for most of a minute."""
    # Weights trained with QuickGELU (the OpenAI ones) give wrong vectors without it;
    # open_clip itself only warns about the mismatch.
    quick_gelu = {"force_quick_gelu": True} if tag_cfg.get("quick_gelu") else {}
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:
        # A file path skips the hub's online freshness check; the tag's own preprocessing
        # (mean/std, resize mode) would be lost with it, so it is passed along explicitly.
        preprocess = {k: tag_cfg[k] for k in _TAG_PREPROCESS_KEYS if tag_cfg.get(k) is not None}
        log.info("%s:%s weights found in the local cache: %s", model_name, tag, cached)
        return {"pretrained": cached, "force_preprocess_cfg": preprocess, **quick_gelu}
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"the {tag!r} weights for {model_name} could not be downloaded: HF_HUB_OFFLINE is "
            f"set and they are not in the Hugging Face cache ({constants.HF_HUB_CACHE}). "
            + _NO_WEIGHTS_HINT
        )
    host, port, via = _download_route(constants.ENDPOINT)
    if not _reachable(host, port):
        raise ModelLoadError(
            f"the {tag!r} weights for {model_name} could not be downloaded: {host}:{port}{via} "
            f"cannot be reached and they are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}). " + _NO_WEIGHTS_HINT
        )
    return {"pretrained": tag, **quick_gelu}


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    """The tag's weights file if already on disk (same file names open_clip downloads)."""
    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    # "org/repo/" means the default file names; "org/repo/file.bin" names the file.
    repo, filename = hub.rstrip("/"), ""
    if not hub.endswith("/"):
        repo, filename = os.path.split(hub)
    names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename:
        stem, ext = os.path.splitext(filename)
        names = [f"{stem}.safetensors", filename] if ext in (".bin", ".pth") else [filename]
    for name in names:
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # a malformed repo id: treat as not cached, open_clip will say why
            return None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _download_route(endpoint: str) -> tuple[str, int, str]:
    """Host and port a download would connect to: the hub, or the proxy in front of it."""
    url = urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    proxies = urllib.request.getproxies()  # HTTPS_PROXY / ALL_PROXY, as the hub client uses
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if purl.hostname:
            default = 443 if purl.scheme == "https" else 80
            return purl.hostname, purl.port or default, f" (proxy for {host})"
    return host, port, ""


def _reachable(host: str, port: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection opens within timeout_s. Runs in a thread because the socket
    timeout does not cover name resolution, which can hang when DNS itself is unreachable."""
    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=attempt, name="raylens-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout_s + 1.0)
    return bool(ok)


def _embed_dim(open_clip: Any, model_name: str, model: Any) -> int:
    cfg = open_clip.get_model_config(model_name) or {}
    if "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    with torch.inference_mode():  # architectures without a plain config: ask the model
        probe = open_clip.get_tokenizer(model_name)(["x"]).to(next(model.parameters()).device)
        return int(model.encode_text(probe).shape[-1])


def _load_error(model_name: str, pretrained: str, exc: Exception) -> ModelLoadError:
    detail = f"{type(exc).__name__}: {str(exc)[:300]}"
    if pretrained.lower() == "none":
        return ModelLoadError(
            f"cannot build {model_name} with random weights ({detail}); check RAYLENS_CLIP_MODEL"
        )
    if Path(pretrained).expanduser().is_file():
        return ModelLoadError(
            f"cannot load checkpoint {pretrained} into {model_name} ({detail}); check that "
            "RAYLENS_CLIP_PRETRAINED was saved from the architecture in RAYLENS_CLIP_MODEL"
        )
    return ModelLoadError(
        f"the {pretrained!r} weights for {model_name} could not be downloaded or loaded "
        f"({detail}). " + _NO_WEIGHTS_HINT
    )
