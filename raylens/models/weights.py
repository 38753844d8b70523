"""Weights resolution for OpenCLIP: RAYLENS_CLIP_PRETRAINED -> open_clip.create_model arguments.

A tag, a checkpoint path or "none": checked up front, loaded from the local Hugging Face cache
when it is there, refused at once when it can be neither found nor downloaded.
"""

from __future__ import annotations

import logging
import os
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from raylens.errors import ModelLoadError
from raylens.models.model_id import RANDOM_SEED
from raylens.models.reachability import tcp_reachable

log = logging.getLogger("raylens.clip")

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# The preprocess keys a pretrained tag may set (size always comes from the model itself).
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
# A TCP connect to the download host (or proxy) bounds how long an offline start takes: the
# Hugging Face client retries each file with backoff, about 46 s for a tag before it gives up.
_PROBE_TIMEOUT_S = 3.0
NO_WEIGHTS_HINT = (
    "Set RAYLENS_CLIP_PRETRAINED to a local checkpoint path (or to none for random weights, "
    "benchmarks only)"
)


def looks_like_path(value: str) -> bool:
    """Whether RAYLENS_CLIP_PRETRAINED names a file rather than an OpenCLIP tag."""
    return os.sep in value or value.startswith("~") or value.endswith(_CHECKPOINT_SUFFIXES)


def weights_args(open_clip: Any, model_name: str, pretrained: str) -> dict[str, Any]:
    """open_clip.create_model keyword arguments for RAYLENS_CLIP_PRETRAINED, checked up front."""
    if pretrained.lower() == "none":
        msg = (
            f"RAYLENS_CLIP_PRETRAINED=none: {model_name} gets RANDOM weights (seed "
            f"{RANDOM_SEED}); its vectors are meaningless. Benchmarks and smoke runs only."
        )
        # stacklevel 3: the warning points at whoever constructed the ClipEmbedder
        warnings.warn(msg, UserWarning, stacklevel=3)
        log.warning(msg)
        # Every worker process must build identical weights, or their vectors would not mix.
        torch.manual_seed(RANDOM_SEED)
        return {"pretrained": None, "pretrained_text": False, "pretrained_image": False}
    path = Path(pretrained).expanduser()
    if path.is_file():
        return {"pretrained": str(path)}
    if looks_like_path(pretrained):
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
    return tag_args(model_name, pretrained, tag_cfg)


def tag_args(model_name: str, tag: str, tag_cfg: dict[str, Any]) -> dict[str, Any]:
    """Load a tag from the local cache when it is there; refuse at once when it cannot be
    downloaded (no network), instead of letting the hub client retry for most of a minute."""
    # Weights trained with QuickGELU (the OpenAI ones) give wrong vectors without it;
    # open_clip itself only warns about the mismatch.
    quick_gelu = {"force_quick_gelu": True} if tag_cfg.get("quick_gelu") else {}
    cached = cached_tag_file(tag_cfg)
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
            + NO_WEIGHTS_HINT
        )
    host, port, via = download_route(constants.ENDPOINT)
    if not reachable(host, port):
        raise ModelLoadError(
            f"the {tag!r} weights for {model_name} could not be downloaded: {host}:{port}{via} "
            f"cannot be reached and they are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}). " + NO_WEIGHTS_HINT
        )
    return {"pretrained": tag, **quick_gelu}


def cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
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


def download_route(endpoint: str) -> tuple[str, int, str]:
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


def reachable(host: str, port: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the model hub (or its proxy) accepts a TCP connection within timeout_s."""
    return tcp_reachable(host, port, timeout_s)


def load_error(model_name: str, pretrained: str, exc: Exception) -> ModelLoadError:
    """The ModelLoadError for open_clip failing to build the model, naming the setting to fix."""
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
        f"({detail}). " + NO_WEIGHTS_HINT
    )
