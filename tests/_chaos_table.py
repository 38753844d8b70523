"""The fault-drill table: rows filled by tests/test_chaos.py, printed at the end of the run
(conftest's pytest_terminal_summary; output written during a test is captured)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class Row:
    drill: str
    accepted: int = 0
    done: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicate_points: int = 0
    worker_restarts: int = 0
    recover_s: float | None = None
    seconds: float = 0.0
    notes: str = ""


ROWS: list[Row] = []


def render() -> list[str]:
    size = "full" if os.environ.get("RAYLENS_CHAOS") == "full" else "CI"
    lines = [
        f"fault drills ({size} sizes)",
        f"{'drill':<22}{'accepted':>9}{'done':>7}{'lost':>6}{'dup pts':>8}{'restarts':>9}"
        f"{'recover s':>10}{'secs':>7}  failed by code; notes",
    ]
    for r in ROWS:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r.failed.items())) or "-"
        rec = f"{r.recover_s:.1f}" if r.recover_s is not None else "-"
        lines.append(
            f"{r.drill:<22}{r.accepted:>9}{r.done:>7}{r.lost:>6}{r.duplicate_points:>8}"
            f"{r.worker_restarts:>9}{rec:>10}{r.seconds:>7.1f}  {failed}"
            + (f"; {r.notes}" if r.notes else "")
        )
    return lines
