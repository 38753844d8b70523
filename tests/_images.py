"""Generated test images: real encoders (Pillow), distinct content, several sizes and formats."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (96, 64), fmt: str = "JPEG") -> bytes:
    """A distinct smooth-ish picture per seed (gradients + blocks), encoded by Pillow."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, size=3)
    arr = np.stack([(x * (c + 1) + y * (3 - c) + base[c]) % 256 for c in range(3)], axis=-1)
    blocks = rng.integers(0, 255, size=(4, 4, 3))
    arr = (arr + np.kron(blocks, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]) % 256
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    """n distinct images (JPEG and PNG, a few sizes) under folder and one sub-folder."""
    paths = []
    for i in range(start, start + n):
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        size = [(96, 64), (64, 128), (160, 120)][i % 3]
        sub = folder / ("nested" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img_{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        p.write_bytes(image_bytes(i, size, fmt))
        paths.append(p)
    return paths


def bad_inputs(folder: Path, bomb_side: int = 3000) -> dict[str, Path]:
    """Files that must fail with a specific code each: name -> path (expected code = name)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = image_bytes(999, (200, 150))
    out = {
        "empty_input": b"",
        "truncated_image": good[: len(good) // 2],
        "unsupported_format": b"<html><body>not an image</body></html>\n" * 20,
    }
    bomb = io.BytesIO()
    Image.new("1", (bomb_side, bomb_side)).save(bomb, format="PNG")
    out["decompression_bomb"] = bomb.getvalue()
    paths = {}
    for code, data in out.items():
        p = folder / f"bad_{code}.jpg"
        p.write_bytes(data)
        paths[code] = p
    return paths
