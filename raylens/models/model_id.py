"""The model id: names the exact weights a vector came from (part of point ids and dedup keys)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

RANDOM_SEED = 0


@lru_cache(maxsize=16)
def _file_sha12(path: str, _size: int, _mtime_ns: int) -> str:
    # _size and _mtime_ns are only part of the cache key: a rewritten file is hashed again.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:12]


def checkpoint_digest(path: Path) -> str:
    """First 12 hex digits of a checkpoint file's sha256 (cached per size and mtime)."""
    st = path.stat()
    return _file_sha12(str(path.resolve()), st.st_size, st.st_mtime_ns)


def model_id_for(model_name: str, pretrained: str) -> str:
    """`{model}:{tag}`, `{model}:{file name}:{sha12}` for a checkpoint, `{model}:random-seed0`.

    Computable without loading the model, so the queue can key jobs before any worker is up.
    """
    if pretrained.lower() == "none":
        return f"{model_name}:random-seed{RANDOM_SEED}"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"{model_name}:{path.name}:{checkpoint_digest(path)}"
    # open_clip treats LAION2B-S34B-B79K and laion2b_s34b_b79k as the same weights; so do we.
    return f"{model_name}:{pretrained.lower().replace('-', '_')}"
