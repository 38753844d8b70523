"""Smoke test of the batching peers (bench/peer_ray_data.py, bench/peer_serve_batch.py).

Each starts its own local Ray cluster, embeds a few small JPEGs and one corrupt file with the
tiny OpenCLIP model, and stores one vector per good image in a Qdrant Edge collection (the
engine raylens embeds). Checked: the row's figures, the bad file reported (not a failed run),
and the collection itself, reopened after the peer's cluster is gone.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from test_bench_peers_serve import small_jpegs  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("RAYLENS_BENCH_TESTS") != "1",
        reason="benchmark peer: run it with `make bench-check`",
    ),
]

N_GOOD = 8
PEERS = {"peer_ray_data": "ray_data", "peer_serve_batch": "serve_batch"}


def open_index(folder: Path, wait_s: float = 30.0) -> Any:
    from raylens.cluster.index import VectorIndex
    from raylens.cluster.settings import Settings

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return VectorIndex(Settings(data_dir=folder, qdrant_collection="peer"))
        except Exception:  # the peer's actor may still be letting go of the folder
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("module", list(PEERS))
def test_batching_peer_stores_every_good_image_and_reports_the_bad_one(
    module: str, tiny_model: Any, tmp_path: Path
) -> None:
    peer = importlib.import_module(module)
    paths = small_jpegs(tmp_path / "images", N_GOOD)
    bad = tmp_path / "images" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    work = tmp_path / "work"

    out = peer.run(
        [*paths, bad],
        tiny_model.name,
        1,
        work,
        pretrained=str(tiny_model.checkpoint_path),
        model_config=tiny_model.config_path,
        timeout_s=180,
    )

    assert out["name"] == PEERS[module]
    assert out["done"] == N_GOOD and out["failed"] == 1, out
    assert "corrupt.jpg" in out["errors"][0]
    assert out["points"] == N_GOOD
    assert out["images_per_s"] > 0 and 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]
    assert out["max_ms"] <= out["seconds"] * 1000 + 1e-6
    assert out["peak_rss_mb"] > 0 and out["notes"]
    index = open_index(work / "qdrant")
    try:
        assert index.count() == N_GOOD
        ids = index.point_ids()
        vectors = np.stack([index.get(i)["vector"] for i in ids])
        keys = sorted(index.get(i)["payload"]["key"] for i in ids)
    finally:
        index.close()
    assert keys == sorted(str(p.resolve()) for p in paths)
    assert vectors.shape == (N_GOOD, tiny_model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(PEERS.values()))
def test_batching_peer_failure_drill_kills_the_model_process_at_half_way_and_counts(
    name: str, tiny_model: Any, tmp_path: Path
) -> None:
    import failure_drills

    # Batches of 2, so that half-way falls between batches of 8 images.
    small = {"batch_size": 2} if name == "ray_data" else {"max_batch_size": 2}
    d = failure_drills.drill_peer(name, tmp_path / "drill", tiny_model, 8, 1, 5, **small)
    assert d.corrupt == "finished+reported", d
    assert d.images == 8 and d.stored_at_kill is not None and d.stored_at_kill >= 4, d
    assert "process(es)" in d.killed, d
    assert d.dup == 0 and d.lost is not None and d.redone is not None
    assert d.lost <= 8 - 4
