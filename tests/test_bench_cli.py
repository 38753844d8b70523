"""`raylens bench` reaches the benchmark, and its JSON rows carry the documented fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_raylens_bench_passes_its_options_to_the_benchmark_and_refuses_unknown_peers() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "raylens.cli.main", "bench", "--peers", "rq,nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "unknown peer(s) ['nope']" in res.stderr


def test_bench_rows_have_the_documented_names_fields_and_ratios(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_http

    fig = {"images_per_s": 5.0, "p50_ms": 1.0, "p99_ms": 2.0, "peak_rss_mb": 3.0}
    raw = {**fig, "images_per_s": 20.0, "batch_size": 16, "peak_pss_mb": 2.5}
    http = {
        "clients": 32,
        "upload": {
            "done": 10,
            "seconds": 1.0,
            "submit_to_done": {"p50_ms": 4.0, "p99_ms": 9.0},
            "peak_rss_mb": 7.0,
            "peak_pss_mb": 6.0,
        },
    }
    peers = {name: dict(fig) for name in bench_http.PEERS}
    rows = bench_http.rows_of({"raylens_ingest": {**fig, "images_per_s": 17.0}}, raw, http, peers)
    assert [r["name"] for r in rows] == [
        "raw",
        "raylens_bulk",
        "raylens_http",
        "rq",
        "serve_task_consumer",
        "serve_naive",
        "ray_data",
        "serve_batch",
    ]
    for r in rows:
        assert {"name", "images_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "ratio_to_raw"} <= set(r)
    ratios = [round(r["ratio_to_raw"], 3) for r in rows]
    assert ratios == [1.0, 0.85, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert rows[2]["p99_ms"] == 9.0  # raylens_http latency: submission -> stored
