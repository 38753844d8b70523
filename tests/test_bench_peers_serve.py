"""Smoke test of the Ray Serve benchmark peers (bench/peer_serve_tc.py, peer_serve_naive.py).

Each peer starts its own local Ray cluster (and, for the task consumer, its own redis-server),
embeds a few small JPEGs with the tiny OpenCLIP model and stores one vector per image in a Qdrant
local collection. Checked here: the row's figures, and the collection itself, reopened after
the peer's cluster is gone.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

# Benchmark fixtures, not product code: checked by `make bench-check` (and exercised by every
# `make bench`), kept out of `make test` to hold CI inside its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("RAYLENS_BENCH_TESTS") != "1",
        reason="benchmark peer: run it with `make bench-check`",
    ),
]

N_IMAGES = 8
PEERS = {"peer_serve_tc": "serve_task_consumer", "peer_serve_naive": "serve_naive"}


def small_jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = (64, 48) if i % 2 else (40, 72)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
        p = folder / f"small_{i:02d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def open_collection(path: Path, wait_s: float = 30.0) -> Any:
    """The peer's Qdrant local folder, once its replica process has let go of the lock."""
    from qdrant_client import QdrantClient

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return QdrantClient(path=str(path))
        except RuntimeError as exc:  # "already accessed by another instance": still exiting
            if "already accessed" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("module", list(PEERS))
def test_peer_embeds_and_stores_every_image(module: str, tiny_model: Any, tmp_path: Path) -> None:
    peer = importlib.import_module(module)
    paths = small_jpegs(tmp_path / "images", N_IMAGES)
    work = tmp_path / "work"

    out = peer.run(
        paths,
        tiny_model.name,
        1,
        work,
        pretrained=str(tiny_model.checkpoint_path),
        model_config=tiny_model.config_path,
        timeout_s=120,
    )

    assert out["name"] == PEERS[module]
    assert out["done"] == N_IMAGES, out
    assert out["failed"] == 0, out
    assert out["points"] == N_IMAGES, out
    assert out["images_per_s"] > 0
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]
    # every latency lies inside the timed window
    assert out["max_ms"] <= out["seconds"] * 1000 + 1e-6
    assert out["images_per_s"] == pytest.approx(N_IMAGES / out["seconds"])
    assert out["peak_rss_mb"] > 0
    assert 0 < out["peak_rss_tree_mb"] <= out["peak_rss_mb"] + 1e-6
    assert out["torch_threads"] == 1
    assert out["notes"]

    # The vectors really are there: one per image, the model's size, unit length.
    client = open_collection(work / "qdrant")
    try:
        assert client.count("peer", exact=True).count == N_IMAGES
        points, _ = client.scroll("peer", limit=100, with_vectors=True, with_payload=True)
    finally:
        client.close()
    assert sorted(p.payload["key"] for p in points) == sorted(str(p.resolve()) for p in paths)
    vectors = np.array([p.vector for p in points], dtype=np.float32)
    assert vectors.shape == (N_IMAGES, tiny_model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_peers_reject_an_empty_image_list(tmp_path: Path) -> None:
    for module in PEERS:
        peer = importlib.import_module(module)
        with pytest.raises(ValueError, match="no images"):
            peer.run([], "ViT-B-32", 1, tmp_path)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(PEERS.values()))
def test_serve_peer_failure_drill_kills_the_replica_at_half_way_and_counts(
    name: str, tiny_model: Any, tmp_path: Path
) -> None:
    import failure_drills

    d = failure_drills.drill_peer(name, tmp_path / "drill", tiny_model, 8, 1, settle_s=5)
    assert d.corrupt == "finished+reported", d
    assert d.images == 8 and "1 replica process(es)" in d.killed, d
    assert d.stored_at_kill is not None and d.stored_at_kill >= 4
    assert d.dup == 0 and d.lost is not None and d.redone is not None
    assert d.lost <= 8 - 4  # what was stored before the kill stays stored
