"""Peer "ray_data": the Ray Data pipeline a good Ray user would write for bulk embedding.

    read_binary_files(paths)                                one read task per file group
      -> map_batches(Embedder, concurrency=N, batch_size=B)  actor pool: the model loaded once
      -> map_batches(Writer, concurrency=1)                  one actor owns the Qdrant Edge folder
      -> iter_batches()                                      the driver counts what was stored

- Reader: `read_binary_files` + the same decode raylens uses (reduced-scale JPEG decode, then
  the model's resize and crop), in the Embedder. `ray.data.read_images` decodes every file at
  full resolution in the read task and ships the whole raster through the object store, where
  raylens's decode reads a 2-12 MP camera JPEG at a reduced scale; read_images is not timed
  here (chosen by that reasoning, not by a measurement).
- Embedder: an actor pool of one actor per GPU, or without GPUs one per thread of `threads`
  with 1 torch thread each (the same threads in all; tuned on this machine, see run()),
  `batch_size` = raylens's RAYLENS_MAX_BATCH_SIZE default (32). An image that
  does not decode gets an error row, not a failed pipeline (a Ray Data batch that raises fails
  the whole dataset), so the row can report it.
- Writer: Qdrant Edge, the engine raylens embeds (raylens's own VectorIndex over it, in one
  actor: one process owns the folder), one upsert per batch, point ids from the image path.

Images/s = images / (clock start -> last batch stored); an image's latency is its batch's
store time minus the clock start (every image is "submitted" at the start, as in the raw row).
Each dataset starts its own actor pool, so the clock starts when the last Embedder actor has
loaded its model (raylens's workers load theirs before its clock too); reads may run ahead
while the models load. A one-image run before it starts Ray Data and warms the file cache.

    uv run python bench/peer_ray_data.py --images 24 --model ViT-B-32 [--threads 2] [--json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_common import (  # noqa: E402
    DEFAULT_TIMEOUT_S,
    Journal,
    PeerMemory,
    decode_like_raw,
    image_keys,
    local_ray,
    main,
    peer_row,
    point_id,
)

NAME = "ray_data"
BATCH_SIZE = 32
COLLECTION = "peer"


def index_settings(qdrant_dir: Path) -> Any:
    """raylens settings whose only use here is the embedded engine's folder and collection."""
    from raylens.cluster.settings import Settings

    return Settings(data_dir=qdrant_dir, qdrant_collection=COLLECTION, index_build_points=0)


class Embedder:
    """The actor-pool stage: the model loaded once per actor; bytes -> vectors, per batch."""

    def __init__(
        self,
        model: str,
        pretrained: str,
        model_config: str | None,
        threads: int,
        journal: str | None = None,
    ):
        from raylens.models.clip import ClipEmbedder

        self.journal = Journal(journal)
        self.emb = ClipEmbedder(
            model,
            pretrained,
            model_config=Path(model_config) if model_config else None,
            device="auto",
            threads=threads,
        )
        self.ready_at = time.time()  # the clock starts once every actor has its model

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.journal.began(*(str(p) for p in batch["path"]))
        pixels, ok, errors = [], [], []
        for data in batch["bytes"]:
            try:
                pixels.append(decode_like_raw(self.emb, bytes(data)))
                ok.append(True)
                errors.append("")
            except Exception as exc:  # one bad image must not fail the dataset
                ok.append(False)
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        t1 = time.perf_counter()
        vectors = np.zeros((len(ok), self.emb.dim), dtype=np.float32)
        if pixels:
            vectors[np.array(ok)] = self.emb.embed_images(np.stack(pixels))
        self.journal.embedded(*(str(p) for p in batch["path"]))
        t2 = time.perf_counter()
        n = len(ok)
        return {
            "path": batch["path"],
            "vector": vectors,
            "ok": np.array(ok),
            "error": errors,
            # This batch's stage seconds, spread over its rows (the driver sums them).
            "ready_at": np.full(n, self.ready_at),
            "decode_s": np.full(n, (t1 - t0) / max(1, n)),
            "infer_s": np.full(n, (t2 - t1) / max(1, n)),
        }


class Writer:
    """One actor owns the Qdrant Edge folder (as raylens's index actor does)."""

    def __init__(self, qdrant_dir: str, journal: str | None = None) -> None:
        from raylens.cluster.index import VectorIndex

        self.journal = Journal(journal)
        # The collection is made on the first upsert, at the model's vector size.
        self.index = VectorIndex(index_settings(Path(qdrant_dir)))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        ok = np.asarray(batch["ok"], dtype=bool)
        paths = [str(p) for p in batch["path"]]
        good = [p for p, k in zip(paths, ok) if k]
        if good:
            self.index.upsert(
                [point_id(p) for p in good],
                np.asarray(batch["vector"])[ok],
                [{"key": p} for p in good],
            )
            self.journal.stored(*good)
        n = len(paths)
        return {
            "path": paths,
            "ok": ok,
            "error": list(batch["error"]),
            "stored_at": np.full(n, time.time()),
            "ready_at": batch["ready_at"],
            "decode_s": batch["decode_s"],
            "infer_s": batch["infer_s"],
            "write_s": np.full(n, (time.perf_counter() - t0) / max(1, n)),
        }


def pipeline(
    paths: list[str],
    model: str,
    pretrained: str,
    model_config: Path | None,
    threads: int,
    qdrant_dir: Path,
    *,
    batch_size: int,
    concurrency: int,
    gpus: int = 0,
    journal: Path | None = None,
) -> Any:
    import ray.data

    log = journal and str(journal)
    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(model, pretrained, model_config and str(model_config), threads, log),
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=threads,
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    return ds.map_batches(
        Writer,
        fn_constructor_args=(str(qdrant_dir), log),
        batch_size=batch_size,
        concurrency=1,
        num_cpus=0,
        batch_format="numpy",
    )


def run(
    paths: list[Path],
    model: str,
    threads: int,
    work_dir: Path,
    pretrained: str = "none",
    model_config: Path | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_size: int = BATCH_SIZE,
    concurrency: int | None = None,
    journal: Path | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Embed `paths` with a Ray Data pipeline into a Qdrant Edge collection; the row.

    `journal` and strict=False are for the failure drills: every image's start and store
    appended to that file, and a collection that disagrees with the rows the driver saw
    reported, not raised."""
    keys = image_keys(NAME, paths)
    work_dir.mkdir(parents=True, exist_ok=True)
    import torch

    gpus = torch.cuda.device_count()
    # Tuned here (2 cores, ViT-B-32, 96 images): 2 actors of 1 torch thread ran 13.8 img/s,
    # 1 actor of 2 threads 9.5-11.7 (batch 16, 32): one actor per thread on CPUs, so one
    # decodes while the other runs the model; one actor per GPU on GPUs.
    concurrency = concurrency or (gpus or max(1, threads))
    actor_threads = max(1, threads // concurrency)
    with PeerMemory() as mem:
        # A logical CPU beside the actor pool for the read tasks (and the driver's iteration).
        with local_ray(NAME, concurrency * actor_threads + 1):
            import ray
            import ray.data

            # bench/ is not a package the Ray workers can import: its classes travel by value.
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            t_setup = time.perf_counter()
            # Warm-up: the same pipeline on one image, into a folder of its own (not counted).
            warm = pipeline(
                keys[:1], model, pretrained, model_config, actor_threads, work_dir / "warmup",
                batch_size=batch_size, concurrency=concurrency, gpus=gpus,
            )  # fmt: skip
            warm.take_all()
            setup_s = time.perf_counter() - t_setup
            # ---- the clock starts
            ds = pipeline(
                keys, model, pretrained, model_config, actor_threads, work_dir / "qdrant",
                batch_size=batch_size, concurrency=concurrency, gpus=gpus, journal=journal,
            )  # fmt: skip
            started = time.time()
            stored: list[float] = []
            errors: list[str] = []
            failed_keys: list[str] = []
            seconds = {"decode": 0.0, "infer": 0.0, "write": 0.0}
            ready = started
            deadline = time.monotonic() + timeout_s
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for p, ok, err, at in zip(
                    batch["path"], batch["ok"], batch["error"], batch["stored_at"]
                ):
                    if ok:
                        stored.append(float(at))
                    else:
                        errors.append(f"{p}: {err}")
                        failed_keys.append(str(p))
                ready = max(ready, float(np.max(batch["ready_at"])))
                for stage in seconds:
                    seconds[stage] += float(np.sum(batch[f"{stage}_s"]))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{NAME}: not finished within {timeout_s:.0f}s")
            stats = ds.stats()
    # A dataset starts its own actor pool: their model loads are not the pipeline's
    # throughput (raylens's workers load theirs before its clock starts too).
    load_s, started = ready - started, ready
    stored = [max(t, started) for t in stored]
    points = _count(work_dir / "qdrant")
    if strict and points != len(stored):
        raise RuntimeError(f"{NAME}: {len(stored)} images stored but the collection has {points}")
    return peer_row(
        NAME,
        images=len(paths),
        done=len(stored),
        failed=len(errors),
        first_submit=started,
        last_stored=max(stored, default=started),
        latencies_s=[t - started for t in stored],
        mem=mem,
        notes=(
            "Ray Data: read_binary_files -> "
            f"map_batches(actor pool of {concurrency}, {actor_threads} CPUs and torch threads "
            f"each{', 1 GPU each' if gpus else ''}, "
            f"batch_size {batch_size}) -> one writer actor on Qdrant Edge; the same decode "
            "as raylens"
        ),
        points=points,
        concurrency=concurrency,
        batch_size=batch_size,
        torch_threads=actor_threads,
        gpus=gpus,
        setup_s=setup_s,
        model_load_s=round(load_s, 3),
        errors=errors[:5],
        failed_keys=failed_keys,
        stage_seconds={k: round(v, 3) for k, v in seconds.items()},
        stats=str(stats)[-2000:],
    )


def _count(qdrant_dir: Path) -> int:
    from raylens.cluster.index import VectorIndex

    ix = VectorIndex(index_settings(qdrant_dir))
    try:
        return ix.count()
    finally:
        ix.close()


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
