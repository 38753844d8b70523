"""What bounds each row of a `bench_http.py --json` run (used by bench/gpu.sh).

A row's stages are the seconds it spent decoding, in the model (its copies to and from the
device included: they are not timed apart), and writing vectors, summed over its workers. The
row is bound by its busiest stage when that stage was busy at least half of the row's wall
time per worker; otherwise by what lies between the stages (queue, ingress, hand-offs),
named with how busy the busiest stage was.

    uv run python bench/bounds.py RESULT.json      # prints one line per row, then the JSON
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _sum(stages: list[dict[str, Any]] | dict[str, Any] | None) -> tuple[dict[str, float], int]:
    """Stage seconds summed over workers, and how many workers they came from."""
    if not stages:
        return {}, 0
    if isinstance(stages, dict):
        stages = [stages]
    total: dict[str, float] = {}
    for st in stages:
        for k, v in (st or {}).items():
            if v is not None:
                total[k] = total.get(k, 0.0) + float(v)
    return total, len(stages)


def stages_of(out: dict[str, Any], name: str) -> tuple[dict[str, float], int]:
    if name == "raw":
        return _sum(out["core"]["raw"].get("stage_seconds"))
    if name == "raylens_bulk":
        return _sum(out["core"]["raylens_ingest"].get("stage_seconds"))
    if name == "raylens_http":
        return _sum(out["http_upload"].get("stage_seconds"))
    return _sum((out.get("peers", {}).get(name) or {}).get("stage_seconds"))


def bounds(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = {}
    for row in out["rows"]:
        stages, workers = stages_of(out, row["name"])
        ips = row.get("images_per_s") or 0.0
        if not stages or ips <= 0:
            result[row["name"]] = {"bound": "unknown (no stage timings)", "stages_s": stages}
            continue
        wall = out["images"] / ips * max(1, workers)
        busiest = max(stages, key=lambda k: stages[k])
        busy = stages[busiest] / wall if wall > 0 else 0.0
        bound = busiest if busy >= 0.5 else f"queue/ingress/hand-offs ({busiest} busy {busy:.0%})"
        result[row["name"]] = {
            "bound": bound,
            "busiest": busiest,
            "busy_fraction": round(busy, 3),
            "stages_s": {k: round(v, 3) for k, v in stages.items()},
        }
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        out = json.load(f)
    found = bounds(out)
    for row in out["rows"]:
        b = found[row["name"]]
        print(f"{row['name']:22} {row['images_per_s']:9.1f} img/s  bound: {b['bound']}")
    print(json.dumps({"bounds": found}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
