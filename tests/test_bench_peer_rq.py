"""Smoke test of bench/peer_rq.py: a real redis-server, RQ forking worker and Qdrant local store."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peer_rq  # noqa: E402

# Benchmark fixtures, not product code: checked by `make bench-check` (and exercised by every
# `make bench`), kept out of `make test` to hold CI inside its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("RAYLENS_BENCH_TESTS") != "1",
        reason="benchmark peer: run it with `make bench-check`",
    ),
]

SIZES = [(64, 48), (96, 96), (120, 80), (160, 120), (200, 150), (48, 64), (80, 120), (128, 128)]


def small_jpegs(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
        path = folder / f"small_{i}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def run_tiny(paths: list[Path], tiny_model, work_dir: Path) -> dict:  # type: ignore[no-untyped-def]
    return peer_rq.run(
        paths,
        tiny_model.name,
        threads=2,
        work_dir=work_dir,
        pretrained=str(tiny_model.checkpoint_path),
        model_config=tiny_model.config_path,
        timeout_s=120,
    )


def test_rq_peer_embeds_every_image_in_a_forked_horse_and_stores_it(tiny_model, tmp_path) -> None:
    paths = small_jpegs(tmp_path / "images")
    out = run_tiny(paths, tiny_model, tmp_path / "work")
    assert out["name"] == "rq"
    assert (out["done"], out["failed"], out["points"]) == (8, 0, 8), out["errors"]
    assert out["images_per_s"] > 0
    assert 0 < out["p50_ms"] <= out["p99_ms"]
    assert out["peak_rss_mb"] > 0
    # RQ's default Worker: one fresh fork per job, never the worker parent itself.
    assert out["worker_class"] == "rq.worker.worker_classes.Worker"
    assert out["horse_pids"] == 8 and not out["worker_pid_ran_a_job"]
    assert out["horse_threads"] == [2]


def test_rq_peer_counts_a_failed_job(tiny_model, tmp_path) -> None:
    paths = small_jpegs(tmp_path / "images")[:3]
    bad = tmp_path / "images" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = run_tiny([*paths, bad], tiny_model, tmp_path / "work")
    assert (out["done"], out["failed"], out["points"]) == (3, 1, 3)
    assert len(out["errors"]) == 1 and "raylens.errors." in out["errors"][0]


def test_rq_failure_drill_kills_the_worker_and_its_horse_at_half_way_and_counts(
    tiny_model, tmp_path
) -> None:
    import failure_drills

    d = failure_drills.drill_peer("rq", tmp_path / "drill", tiny_model, 8, 2, settle_s=5)
    assert d.corrupt == "finished+reported", d
    assert d.images == 8 and d.stored_at_kill is not None and d.stored_at_kill >= 4, d
    assert "worker + work-horse" in d.killed
    # A killed horse's job stays "started" in RQ: lost, not redone (no Retry policy).
    assert d.redone == 0 and d.dup == 0 and d.lost is not None and 0 <= d.lost <= 1, d
