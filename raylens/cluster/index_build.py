"""One HNSW build of an embedded-engine collection, in a process of its own.

`EdgeShard.optimize()` (the HNSW build) holds the Python GIL for its whole run: minutes for
100,000 points on 2 cores. Run on a thread of the index actor it would stall every upsert and
search of that actor until it ends. So the index actor copies the collection's folder and runs
this module on the copy, at low CPU priority:

    python -m raylens.cluster.index_build COPY_FOLDER PARENT_PID

It loads the copy, builds, flushes and closes it, and writes `build.json` (seconds, points,
indexed vectors) into the copy. Exit code 0 means the copy is built; the actor then replays
onto it what was written meanwhile and swaps it in (raylens/cluster/index_edge.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

RESULT_FILE = "build.json"


def build(folder: str) -> dict[str, float | int]:
    from qdrant_edge import EdgeShard

    started = time.perf_counter()
    shard = EdgeShard.load(folder)
    try:
        shard.optimize()
        shard.flush()
        info = shard.info()
        out: dict[str, float | int] = {
            "seconds": round(time.perf_counter() - started, 3),
            "points": info.points_count,
            "indexed": info.indexed_vectors_count,
            "segments": info.segments_count,
        }
    finally:
        shard.close()
    return out


def _die_with_parent(parent: int) -> None:
    """A build outliving its index actor (kill -9) would go on writing into a folder the next
    owner removes: on Linux the kernel kills it with its parent (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before that took effect
        sys.exit(3)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m raylens.cluster.index_build COPY_FOLDER PARENT_PID", file=sys.stderr
        )
        return 2
    folder = argv[0]
    _die_with_parent(int(argv[1]))
    with contextlib.suppress(OSError):
        os.nice(10)  # the workers come first; a build only makes later searches faster
    result = build(folder)
    with open(os.path.join(folder, RESULT_FILE), "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
