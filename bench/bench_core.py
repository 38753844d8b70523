"""Core benchmark: the raw limit (decode + forward, no queue, no Ray) vs `raylens ingest`.

Both run in one invocation, on the same generated images, the same architecture (ViT-B-32 by
default, random weights: RAYLENS_CLIP_PRETRAINED=none) and the same number of torch threads.

    uv run python bench/bench_core.py [--images 192] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height) mix: small web images and 2-12 megapixel camera photos.
SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1600, 1200), (3000, 2000), (4000, 3000)]


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct JPEGs (camera-like noise + gradients so they do not compress to nothing)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        p = folder / f"photo_{i:05d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def raw_limit(
    paths: list[Path],
    model: str,
    threads: int,
    batch_sizes: list[int],
    pretrained: str = "none",
    model_config: Path | None = None,
) -> dict:
    """Decode + preprocess + forward in one process, sequentially, at each batch size."""
    from _peer_common import decode_like_raw

    from raylens.models.clip import ClipEmbedder

    emb = ClipEmbedder(model, pretrained, model_config=model_config, device="auto", threads=threads)
    data = [p.read_bytes() for p in paths]  # file reads are not what we measure
    rows = {}
    # Each image's latency is its batch's: all of a batch is "submitted" when the batch starts.
    latencies: dict[int, list[float]] = {}
    stages: dict[int, dict[str, float]] = {}
    for bs in batch_sizes:
        t0 = time.perf_counter()
        latencies[bs] = []
        stages[bs] = {"decode": 0.0, "infer": 0.0}
        for i in range(0, len(data), bs):
            tb = time.perf_counter()
            pix = np.stack([decode_like_raw(emb, d) for d in data[i : i + bs]])
            td = time.perf_counter()
            emb.embed_images(pix)
            te = time.perf_counter()
            stages[bs]["decode"] += td - tb
            stages[bs]["infer"] += te - td
            latencies[bs] += [te - tb] * len(pix)
        rows[bs] = len(data) / (time.perf_counter() - t0)
    best = max(rows, key=lambda b: rows[b])
    return {
        "images_per_s": rows[best],
        "p50_ms": float(np.percentile(latencies[best], 50)) * 1000,
        "p99_ms": float(np.percentile(latencies[best], 99)) * 1000,
        "batch_size": best,
        "by_batch_size": rows,
        # Seconds in each stage at the best batch size (embed_images returns its vectors on
        # the CPU, so "infer" includes the copy to the device and back).
        "stage_seconds": {k: round(v, 3) for k, v in stages[best].items()},
        "device": emb.device,
        "dtype": str(emb.dtype),
    }


def raw_limit_isolated(folder: Path, model: str, threads: int, batch_sizes: list[int]) -> dict:
    """raw_limit in its own process (so its peak memory is its own), with that peak added."""
    from _rss import RowMemory

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--raw-only",
        str(folder),
        "--model",
        model,
        "--threads",
        str(threads),
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
    ]
    with RowMemory() as mem:
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"the raw-limit run failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(peak_rss_mb=mem.peak_rss_mb, peak_pss_mb=mem.peak_pss_mb)
    return out


def worker_layout(threads: int, workers: int | None) -> tuple[int, int]:
    """(workers, CPUs and torch threads each) for the raylens rows. By default the layout the
    ray_data peer is tuned to: one worker per GPU, or without GPUs one worker per thread with one
    torch thread each (on CPUs, processes that each decode and run the model beat one process
    whose torch threads share the model: see bench/peer_ray_data.py)."""
    if workers is None:
        import torch

        workers = torch.cuda.device_count() or threads
    workers = max(1, min(workers, threads))
    return workers, max(1, threads // workers)


WORKERS_HELP = (
    "raylens workers, the threads shared among them (default: one per GPU, or one per thread "
    "with one torch thread each, as the ray_data peer)"
)


def raylens_ingest(
    folder: Path,
    model: str,
    threads: int,
    batch: int,
    data_dir: Path,
    decode_threads: int,
    workers: int | None = None,
) -> dict:
    from _peer_common import free_port

    n_workers, per_worker = worker_layout(threads, workers)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYLENS_")}
    env.update(
        RAYLENS_DATA_DIR=str(data_dir),
        RAYLENS_CLIP_MODEL=model,
        RAYLENS_CLIP_PRETRAINED="none",
        RAYLENS_NUM_WORKERS=str(n_workers),
        RAYLENS_WORKER_NUM_CPUS=str(per_worker),
        RAYLENS_TORCH_THREADS=str(per_worker),
        RAYLENS_MAX_BATCH_SIZE=str(batch),
        RAYLENS_DECODE_THREADS=str(decode_threads),
        RAYLENS_RAY_PORT=str(free_port()),
        RAYLENS_DASHBOARD_PORT=str(free_port()),
    )
    from _rss import RowMemory

    cli = [sys.executable, "-m", "raylens.cli.main"]
    mem = RowMemory().__enter__()  # the Ray processes `up` starts, and the ingest CLI
    # --no-http: the core figure is the CLI ingest path; bench_http measures the ingress itself.
    up = subprocess.run(
        [*cli, "up", "--detach", "--no-http"], env=env, capture_output=True, text=True
    )
    if up.returncode != 0:
        raise SystemExit(f"raylens up failed:\n{up.stderr}")
    try:
        t0 = time.perf_counter()
        res = subprocess.run(
            [*cli, "ingest", str(folder), "--pipeline", "embed", "--json", "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"raylens ingest failed:\n{res.stderr}")
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        st = subprocess.run([*cli, "status", "--json"], env=env, capture_output=True, text=True)
        workers = json.loads(st.stdout)["workers"] if st.returncode == 0 else []
    finally:
        mem.__exit__(None, None, None)
        subprocess.run([*cli, "down"], env=env, capture_output=True, text=True)
    n = summary["done"]
    return {
        "images_per_s": n / summary["seconds"],
        "p50_ms": summary["latency_p50_s"] * 1000,
        "p99_ms": summary["latency_p99_s"] * 1000,
        "peak_rss_mb": mem.peak_rss_mb,
        "peak_pss_mb": mem.peak_pss_mb,
        "seconds": summary["seconds"],
        "process_wall_s": wall,
        "images_per_s_incl_process_start": n / wall,
        "done": n,
        "failed": summary["failed"],
        "workers": n_workers,
        "worker_threads": per_worker,
        "stage_seconds": [w.get("seconds") for w in workers],
        "batches": sum(w.get("batches", 0) for w in workers),
    }


def run_core(
    folder: Path,
    paths: list[Path],
    data_dir: Path,
    model: str,
    threads: int,
    batch_sizes: list[int],
    decode_threads: int | None = None,
    workers: int | None = None,
) -> dict:
    """The whole core benchmark on images already made in `folder` (also used by bench_http)."""
    from raylens.cluster.settings import Settings

    mp = sum(Image.open(p).width * Image.open(p).height for p in paths) / len(paths) / 1e6
    raw = raw_limit_isolated(folder, model, threads, batch_sizes)
    decode_threads = decode_threads or Settings.model_fields["decode_threads"].default
    ours = raylens_ingest(
        folder, model, threads, raw["batch_size"], data_dir, decode_threads, workers
    )
    return {
        "model": model,
        "device": raw["device"],
        "dtype": raw["dtype"],
        "images": len(paths),
        "mean_megapixels": round(mp, 2),
        "threads": threads,
        "raw": raw,
        "raylens_ingest": ours,
        "ratio": ours["images_per_s"] / raw["images_per_s"],
    }


def print_core(out: dict) -> None:
    raw, ours, ratio = out["raw"], out["raylens_ingest"], out["ratio"]
    print(
        f"{out['images']} JPEGs (mean {out['mean_megapixels']:.1f} MP), {out['model']} random "
        f"weights, {raw['device']} {raw['dtype']}, {out['threads']} threads"
    )
    for bs, v in raw["by_batch_size"].items():
        print(f"  raw limit  batch {bs:>3}: {v:8.2f} images/s")
    print(f"  raw limit (best, batch {raw['batch_size']}): {raw['images_per_s']:8.2f} images/s")
    print(
        f"  raylens ingest:                {ours['images_per_s']:8.2f} images/s "
        f"({ours['seconds']:.1f}s; {ours['images_per_s_incl_process_start']:.2f} images/s "
        "counting the CLI's own start-up)"
    )
    for st in ours["stage_seconds"]:
        print(
            "  raylens worker stage seconds:  "
            + ", ".join(f"{k} {v:.1f}" for k, v in (st or {}).items())
            + f" ({ours['batches']} batches)"
        )
    print(f"  ratio raylens / raw:           {ratio:8.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="raylens decode threads per worker (default: the setting's default)",
    )
    ap.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--raw-only",
        metavar="FOLDER",
        type=Path,
        help="only the raw limit, on the JPEGs in FOLDER; prints one JSON line",
    )
    args = ap.parse_args()
    if args.raw_only:
        paths = sorted(args.raw_only.glob("*.jpg"))
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        print(json.dumps(raw_limit(paths, args.model, args.threads, sizes)))
        return 0
    with tempfile.TemporaryDirectory(prefix="raylens-bench-") as tmp:
        folder = Path(tmp) / "images"
        paths = make_images(folder, args.images)
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        out = run_core(
            folder,
            paths,
            Path(tmp) / "data",
            args.model,
            args.threads,
            sizes,
            args.decode_threads,
            args.workers,
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_core(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
