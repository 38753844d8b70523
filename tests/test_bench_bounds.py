"""bench/bounds.py (pure): which stage bounds a row, from its stage seconds and its images/s."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bounds import bounds  # noqa: E402


def run_of(**rows: float) -> dict:
    return {
        "images": 100,
        "rows": [{"name": n, "images_per_s": ips} for n, ips in rows.items()],
        "core": {
            "raw": {"stage_seconds": {"decode": 3.0, "infer": 6.0}},
            # two workers, 10 s of wall each at 10 img/s
            "raylens_ingest": {
                "stage_seconds": [
                    {"decode": 2.0, "infer": 3.0, "faces": None, "write": 0.5},
                    {"decode": 2.0, "infer": 3.0, "faces": None, "write": 0.5},
                ]
            },
        },
        "http_upload": {"stage_seconds": []},
        "peers": {"ray_data": {"stage_seconds": {"decode": 1.0, "infer": 9.0, "write": 0.2}}},
    }


def test_a_row_is_bound_by_its_busiest_stage_when_it_fills_half_the_wall_time() -> None:
    found = bounds(run_of(raw=10.0, ray_data=10.0, raylens_bulk=10.0, raylens_http=5.0))
    assert found["raw"]["bound"] == "infer" and found["raw"]["busy_fraction"] == 0.6
    assert found["ray_data"]["bound"] == "infer"
    # 3 s of inference per worker in its 10 s of wall: 30% busy
    assert found["raylens_bulk"]["bound"].startswith("queue/ingress/hand-offs (infer busy 30%")
    assert found["raylens_bulk"]["stages_s"] == {"decode": 4.0, "infer": 6.0, "write": 1.0}
    assert found["raylens_http"]["bound"].startswith("unknown")
