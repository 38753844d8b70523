"""bench/bench_overhead.py (raylens's own CPU per job, tiny model) runs, small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_overhead.py"

# Two raylens systems started and stopped: minutes, not seconds. Checked by `make bench-check`,
# kept out of `make test` to hold CI inside its time budget.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("RAYLENS_BENCH_TESTS") != "1",
        reason="benchmark: run it with `make bench-check`",
    ),
]


def test_bench_overhead_prints_cpu_per_job_by_role_as_json() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))}
    res = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "60,100", "--http-images", "32", "--json"],
        capture_output=True, text=True, timeout=1500, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["model"] == "raylens-tiny" and out["threads"] == 1

    rows = out["ingest"]["sizes"]
    assert [r["jobs"] for r in rows] == [60, 100]
    for r in rows:
        assert (r["done"], r["failed"], r["skipped"]) == (r["jobs"], 0, 0)
        assert r["images_per_s"] > 0 and r["in_process_images_per_s"] > 0 and r["ratio"] > 0
        per_job = r["cpu_ms_per_job"]
        for role in ("ingest_client", "queue", "worker", "index", "raylet", "gcs"):
            assert per_job[role] > 0, (role, per_job)
        assert r["cpu_ms_per_job_total"] >= max(per_job.values())
    assert out["ingest"]["idle_cpu_ms_per_s"]

    modes = out["http"]["modes"]
    assert [m["files_per_request"] for m in modes] == [1, 16]
    assert [m["requests"] for m in modes] == [32, 2]
    for m in modes:
        assert (m["done"], m["failed"], m["created"]) == (32, 0, 32)
        assert m["images_per_s"] > 0
        per_image = m["cpu_ms_per_image"]
        for role in ("serve_proxy", "serve_replica", "queue", "worker", "index"):
            assert per_image[role] > 0, (role, per_image)
        assert m["cpu_ms_per_image_total"] > 0
