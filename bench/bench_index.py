"""Search latency of the embedded vector index while ingest writes to it (issue 13).

Writes --points 512-d vectors in batches of --batch through raylens's VectorIndex (the same
class the index actor runs, with its HNSW builds on), interleaving one search per batch, as
the index actor interleaves the workers' upserts and the searches of the ingress. Reports,
per tenth of the load and for the whole run: upsert batches/s and points/s, search p50/p99
and the longest single call. Then, with the load written and the last build swapped in, a
quiet search p50/p99. `--backend client` runs the same on qdrant-client's local mode (the
embedded default before Qdrant Edge) for the before/after ratio.

`--rate` paces the writer like an ingest. `make bench-index` runs it twice: at 2,000 points/s
(about the most `raylens ingest` reaches on a 2-core machine, one point per image), then
unpaced (the index's own write rate: what a faster node could send it).

    uv run python bench/bench_index.py [--points 100000] [--rate 0] [--backend edge|client]
                                       [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.settings import Settings


def open_index(backend: str, data_dir: Path, dim: int) -> VectorIndex:
    settings = Settings(data_dir=data_dir)
    if backend == "edge":
        return VectorIndex(settings, dim, builds=True)
    from qdrant_client import QdrantClient

    from raylens.cluster.index_client import ClientBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = QdrantClient(path=str(data_dir / "client-local"))
        return VectorIndex(settings, dim, backend=ClientBackend(client, "local mode"))


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")


def run(
    backend: str, points: int, batch: int, dim: int, quiet_queries: int, rate: float = 0.0
) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ix = open_index(backend, Path(tmp), dim)
        searches: list[float] = []
        upserts: list[float] = []
        slices = []
        started = time.perf_counter()
        slice_start, slice_searches = started, 0
        for start in range(0, points, batch):
            n = min(batch, points - start)
            vecs = rng.standard_normal((n, dim)).astype(np.float32)
            ids = [point_id(f"b{start + k}", "bench") for k in range(n)]
            payloads = [{"sha256": f"b{start + k}", "job_id": f"j{start + k}"} for k in range(n)]
            t = time.perf_counter()
            ix.upsert(ids, vecs, payloads)
            upserts.append(time.perf_counter() - t)
            t = time.perf_counter()
            ix.search(rng.standard_normal(dim).astype(np.float32), top_k=10)
            searches.append(time.perf_counter() - t)
            slice_searches += 1
            if rate > 0:  # an ingest of `rate` images/s, not a writer as fast as it can
                ahead = started + (start + n) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            done = start + n
            if done % max(batch, points // 10) < batch or done == points:
                now = time.perf_counter()
                recent = searches[-slice_searches:]
                slices.append(
                    {
                        "points": done,
                        "points_per_s": round(
                            slice_searches * batch / max(now - slice_start, 1e-9)
                        ),
                        "search_p50_ms": pct(recent, 50),
                        "search_p99_ms": pct(recent, 99),
                    }
                )
                slice_start, slice_searches = now, 0
        load_s = time.perf_counter() - started
        builds = ix.build_state()
        # let a build under way finish and swap in, as it would between ingests
        deadline = time.monotonic() + 600
        while any(c.get("building") for c in ix.maintain().values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        quiet = []
        for _ in range(quiet_queries):
            t = time.perf_counter()
            ix.search(rng.standard_normal(dim).astype(np.float32), top_k=10)
            quiet.append(time.perf_counter() - t)
        out = {
            "backend": backend,
            "points": ix.count(),
            "dim": dim,
            "batch": batch,
            "rate": rate or None,
            "load_seconds": round(load_s, 1),
            "upserts_per_s": round(points / load_s),
            "during_ingest": {
                "search_p50_ms": pct(searches, 50),
                "search_p99_ms": pct(searches, 99),
                "search_max_ms": pct(searches, 100),
                "upsert_batch_p50_ms": pct(upserts, 50),
                "upsert_batch_p99_ms": pct(upserts, 99),
                "upsert_batch_max_ms": pct(upserts, 100),
            },
            "by_tenth": slices,
            "quiet": {"search_p50_ms": pct(quiet, 50), "search_p99_ms": pct(quiet, 99)},
            "builds_at_end_of_load": builds,
            "builds_after": ix.build_state(),
        }
        ix.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=64, help="points per upsert (a worker batch)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--backend", choices=["edge", "client"], default="edge")
    ap.add_argument("--quiet-queries", type=int, default=300)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="points/s the writer keeps to, as an ingest would (0 = as fast as it can)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = run(args.backend, args.points, args.batch, args.dim, args.quiet_queries, args.rate)
    if args.json:
        print(json.dumps(out))
        return
    d, q = out["during_ingest"], out["quiet"]
    paced = f", paced at {out['rate']}/s" if out["rate"] else ""
    print(
        f"{out['backend']}: {out['points']} points of {out['dim']}-d in {out['load_seconds']}s "
        f"({out['upserts_per_s']}/s, batches of {out['batch']}"
        f"{paced})\n"
        f"  during ingest: search p50 {d['search_p50_ms']} ms, p99 {d['search_p99_ms']} ms, "
        f"max {d['search_max_ms']} ms; upsert batch p50 {d['upsert_batch_p50_ms']} ms, "
        f"p99 {d['upsert_batch_p99_ms']} ms, max {d['upsert_batch_max_ms']} ms\n"
        f"  quiet, after the last build: search p50 {q['search_p50_ms']} ms, "
        f"p99 {q['search_p99_ms']} ms"
    )
    for s in out["by_tenth"]:
        print(
            f"  at {s['points']:>7} points: {s['points_per_s']:>6} points/s, search p50 "
            f"{s['search_p50_ms']} ms, p99 {s['search_p99_ms']} ms"
        )


if __name__ == "__main__":
    main()
