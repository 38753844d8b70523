"""S3 ingest vs disk ingest: the same JPEGs, from a folder and from an S3-compatible server.

One local Ray cluster, the tests' tiny OpenCLIP (tests/_tiny_clip.py) and moto's S3 server in
its own process (auth off) on a loopback port. Each run gets a fresh raylens system (its own
data dir and namespace, so nothing is skipped as already done) with the same settings, and
ingests the same --images files with `raylens.actors.ingest.ingest` (what `raylens ingest`
runs): PATH from disk, then s3://bench/imgs, in the order disk, s3, s3, disk per round (ABBA,
so warm-up and drift fall on both). images/s = done / the ingest's own seconds.

    uv run python bench/bench_s3_ingest.py [--images 400] [--rounds 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from _images import image_bytes  # noqa: E402
from _ports import free_port  # noqa: E402
from _tiny_clip import write_tiny_model  # noqa: E402

BUCKET = "bench"


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import requests

    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raylens-bench-s3-"))
    port = free_port()
    moto = start_moto(port)
    try:
        return run(args, work, f"http://127.0.0.1:{port}")
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def run(args: argparse.Namespace, work: Path, endpoint: str) -> int:
    # Before Ray starts: its workers inherit these and read the objects with them.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ALLOW_HTTP="true",
    )
    import boto3
    import ray

    from raylens.actors import ingest, launch
    from raylens.cluster.jobs import Pipeline
    from raylens.cluster.settings import Settings

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    folder = work / "imgs"
    folder.mkdir()
    total_bytes = 0
    for i in range(args.images):
        data = image_bytes(i, (96, 64))
        total_bytes += len(data)
        (folder / f"img_{i:05d}.jpg").write_bytes(data)
        s3.put_object(Bucket=BUCKET, Key=f"imgs/img_{i:05d}.jpg", Body=data)
    tiny = write_tiny_model(work / "tiny")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for kind in ("disk", "s3", "s3", "disk"):
                settings = Settings(
                    data_dir=work / f"data-{r}-{len(rows)}",
                    namespace=f"raylens-bench-s3-{uuid.uuid4().hex[:8]}",
                    clip_model=tiny.name,
                    clip_pretrained=str(tiny.checkpoint_path),
                    clip_model_config=tiny.config_path,
                    faces_enabled=False,
                    num_workers=1,
                    worker_num_cpus=1,
                    ingest_poll_s=0.05,
                    worker_start_timeout_s=300,
                )
                launch.start(settings)
                try:
                    queue = launch.queue_handle(settings)
                    source = str(folder) if kind == "disk" else f"s3://{BUCKET}/imgs"
                    summary = ingest.ingest(
                        settings, source, queue, progress=False, pipeline=Pipeline.EMBED
                    )
                finally:
                    launch.stop(settings, timeout_s=10)
                assert summary.done == args.images, summary
                rows.append(
                    {
                        "source": kind,
                        "round": r,
                        "images": summary.done,
                        "seconds": summary.seconds,
                        "images_per_s": summary.images_per_s,
                    }
                )
                if not args.json:
                    print(
                        f"{kind:5s} {summary.done} images in {summary.seconds:.2f}s: "
                        f"{summary.images_per_s} images/s",
                        flush=True,
                    )
    finally:
        ray.shutdown()
    mean = {
        kind: sum(x["images_per_s"] for x in rows if x["source"] == kind)
        / max(1, sum(1 for x in rows if x["source"] == kind))
        for kind in ("disk", "s3")
    }
    out = {
        "images": args.images,
        "mean_jpeg_bytes": round(total_bytes / args.images),
        "runs": rows,
        "mean_images_per_s": {k: round(v, 1) for k, v in mean.items()},
        "s3_over_disk": round(mean["s3"] / mean["disk"], 2) if mean["disk"] else None,
    }
    print(
        json.dumps(out)
        if args.json
        else f"mean images/s {out['mean_images_per_s']}, s3/disk {out['s3_over_disk']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
