"""A tiny OpenCLIP architecture, saved as a real checkpoint and loaded through the user path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_NAME = "raylens-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class TinyModel:
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
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    checkpoint = folder / f"{TINY_NAME}.pt"
    torch.save(model.state_dict(), checkpoint)
    return TinyModel(
        TINY_NAME,
        config_path,
        checkpoint,
        TINY_CONFIG["embed_dim"],
        TINY_CONFIG["vision_cfg"]["image_size"],
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))
