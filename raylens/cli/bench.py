"""`raylens bench`: runs the benchmark of a source checkout (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def bench_script() -> Path | None:
    """bench/bench_http.py of the source checkout this raylens runs from, if there is one."""
    script = Path(__file__).resolve().parents[2] / "bench" / "bench_http.py"
    return script if script.is_file() else None


def cmd_bench(rest: list[str]) -> int:
    """Run the benchmark (not part of the installed package: its peers are test fixtures)."""
    script = bench_script()
    if script is None:
        print(
            "raylens: `raylens bench` runs bench/bench_http.py from a source checkout, and this "
            "raylens is installed without one; clone the repository and run `make bench` (or "
            "`uv run raylens bench --json`) there",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *rest])
