"""A tiny OpenCLIP architecture, saved as a real checkpoint and loaded through the user path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_NAME = "raylens-tiny"  # open_clip names a registered config after its file's stem
# A real CLIP, just tiny: 32 px images in 2x2 patches of 16 px, one layer per tower. The text
# tower keeps the real tokenizer's vocabulary and context so get_tokenizer() works unchanged.
TINY_DIM, TINY_IMAGE_SIZE = 32, 32
TINY_CONFIG = {
    "embed_dim": TINY_DIM,
    "vision_cfg": {
        "image_size": TINY_IMAGE_SIZE,
        "layers": 1,
        "width": 32,
        "patch_size": 16,
        "head_width": 16,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class TinyModel:
    """What a test needs to load the tiny model the way a user loads a real one."""

    name: str
    config_path: Path
    checkpoint_path: Path
    dim: int
    image_size: int


def write_tiny_model(folder: Path, seed: int = 1234) -> TinyModel:
    """Register the tiny config, initialise it randomly (fixed seed), save its state_dict."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_NAME}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(config_path))
    with torch.random.fork_rng(devices=[]):  # leave the test process's RNG as it was
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_NAME, pretrained=None)
    checkpoint = folder / f"{TINY_NAME}.pt"
    torch.save(model.state_dict(), checkpoint)
    return TinyModel(TINY_NAME, config_path, checkpoint, TINY_DIM, TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny model's config and checkpoint, written once per test session."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))
