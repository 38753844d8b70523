"""Peak memory of the `raylens ingest` client over a large folder (issue 13: bounded memory).

Runs `raylens.actors.ingest.ingest` in this process against an in-memory stand-in for the queue
(tests/test_ingest_unit.FakeQueue, with finished jobs dropped so only the client's memory
counts), over N tiny files it creates once in FOLDER. Hashing and listing are the real code.

    uv run python bench/bench_ingest_memory.py FOLDER [N=1000000]

The first call creates the files and exits; the second measures. Prints the peak RSS and the RSS
before the ingest started.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from raylens.actors import ingest  # noqa: E402
from raylens.cluster.settings import Settings  # noqa: E402

from test_ingest_unit import FakeQueue, _Remote  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    root = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    if not (root / f"{n - 1:07d}.jpg").exists():
        root.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / f"{i:07d}.jpg").write_bytes(i.to_bytes(4, "big"))
        print(f"made {n} files in {root}; run again to measure")
        return 0
    queue = FakeQueue()
    ask = queue._states

    def states(ids: list[str]) -> list:
        out = ask(ids)
        for job in out:  # a real queue keeps finished jobs in its store, not in this process
            if job is not None and job.state.terminal:
                queue.by_id.pop(job.id, None)
                queue.by_key.pop(job.content_key, None)
                queue.asked.pop(job.id, None)
        return out

    queue._states = states  # type: ignore[method-assign]
    queue.states = _Remote(states)
    ingest.ray.get = lambda value: value  # the stand-in answers directly, not through Ray
    before = rss_mb()
    t0 = time.time()
    summary = ingest.ingest(Settings(ingest_poll_s=0.01), root, queue, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"files {summary.files} done {summary.done} in {time.time() - t0:.1f}s; "
        f"peak RSS {peak:.0f} MB (before the ingest {before:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
