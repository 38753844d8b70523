"""Smoke test of the failure drills of the raw and raylens rows (bench/failure_drills.py,
bench/failure_raylens.py).

A real raylens (queue, index, one worker, supervisor, Serve ingress) on a local Ray cluster
started in this process, the tiny OpenCLIP model, a few small generated JPEGs and one corrupt
file: the worker gets SIGKILL at half-way of `raylens ingest` and of the HTTP uploads. The
peers' drills run in their own smoke tests (test_bench_peer_rq.py, test_bench_peers_*.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import failure_drills  # noqa: E402
import failure_raylens  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("RAYLENS_BENCH_TESTS") != "1",
        reason="benchmark drill: run it with `make bench-check`",
    ),
]
N, BATCH = 16, 4


def test_raw_row_crashes_on_the_corrupt_image_and_has_no_kill_drill(
    tiny_model: Any, tmp_path: Path
) -> None:
    d = failure_drills.drill_raw(tmp_path, tiny_model, N, 1)
    assert d.corrupt == "crashed" and "Truncated" in d.notes
    assert (d.redone, d.lost, d.dup) == (None, None, None)


@pytest.mark.timeout(400)
def test_raylens_rows_lose_nothing_and_redo_at_most_a_batch_when_the_worker_is_killed(
    tiny_model: Any, tmp_path: Path
) -> None:
    drills = failure_raylens.drill_raylens(
        ["raylens_bulk", "raylens_http"], tmp_path, tiny_model, N, 1, BATCH, settle_s=10
    )
    assert [d.name for d in drills] == ["raylens_bulk", "raylens_http"]
    for d in drills:
        assert d.corrupt == "finished+reported", d
        assert d.images == N and "1 worker process(es)" in d.killed, d
        assert d.lost == 0 and d.dup == 0, d
        # The killed worker's batch in the model, the one being written, the one prefetched.
        assert d.redone is not None and d.redone <= 3 * BATCH, d


@pytest.mark.timeout(400)
def test_with_prefetch_0_a_killed_worker_redoes_at_most_its_one_batch(
    tiny_model: Any, tmp_path: Path
) -> None:
    """RAYLENS_PREFETCH_BATCHES=0: a worker holds one lease at a time, so the issue's "redoes
    at most one batch per worker" holds exactly (the default prefetches one batch
    and writes one beside the model: up to three)."""
    (d,) = failure_raylens.drill_raylens(
        ["raylens_bulk"], tmp_path, tiny_model, N, 1, BATCH, settle_s=10, prefetch=0
    )
    assert d.corrupt == "finished+reported", d
    assert d.lost == 0 and d.dup == 0, d
    assert d.redone is not None and 0 < d.redone <= BATCH, d
    assert "RAYLENS_PREFETCH_BATCHES=0" in d.notes, d
