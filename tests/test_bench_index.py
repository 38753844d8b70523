"""bench/bench_index.py (search latency of the embedded index under ingest) runs, small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_index.py"


@pytest.mark.parametrize("backend", ["edge", "client"])
def test_bench_index_prints_its_figures_as_json(backend: str) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--points", "1500", "--batch", "100", "--dim", "64",
         "--quiet-queries", "20", "--backend", backend, "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend and out["points"] == 1500
    for key in ("search_p50_ms", "search_p99_ms", "upsert_batch_p99_ms"):
        assert out["during_ingest"][key] > 0
    assert out["quiet"]["search_p50_ms"] > 0
    assert out["by_tenth"][-1]["points"] == 1500
