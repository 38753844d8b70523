"""Integration: two Ray nodes on this machine (`ray start --head` + `ray start --address`); the
worker is placed on the second node by a custom resource, uploads go in at the head's ingress,
and their bytes travel to the worker through the Redis payload store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylens.client import Client

from _images import image_bytes
from _ports import free_port
from _system_fixtures import long_test

pytestmark = pytest.mark.integration
RAYLENS = [sys.executable, "-m", "raylens.cli.main"]
RAY = str(Path(sys.executable).parent / "ray")


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd[:3]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


NODES = """
import json, ray
ray.init(address="{address}", log_to_driver=False)
print(json.dumps([{{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}}
                  for n in ray.nodes()]))
"""


@long_test
def test_a_worker_on_a_second_node_processes_jobs_submitted_at_the_head(
    tmp_path: Path, tiny_model, redis_url: str
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))}
    if Path.home().joinpath(".ray", "auth_token").is_file():
        env["RAY_AUTH_MODE"] = "token"  # Ray 2.60: the head turns token auth on when it exists
    http_port = free_port()
    env.update(
        RAYLENS_DATA_DIR=str(tmp_path / "data"),
        RAYLENS_CLIP_MODEL=tiny_model.name,
        RAYLENS_CLIP_PRETRAINED=str(tiny_model.checkpoint_path),
        RAYLENS_CLIP_MODEL_CONFIG=str(tiny_model.config_path),
        RAYLENS_REDIS_URL=redis_url,
        RAYLENS_REDIS_PREFIX=f"multinode-{port}",
        RAYLENS_PAYLOAD_STORE="redis",
        RAYLENS_HTTP_PORT=str(http_port),
        RAYLENS_WORKER_NUM_CPUS="1",
        RAYLENS_WORKER_RESOURCES='{"second_node": 1}',
        RAYLENS_FACES_ENABLED="false",
    )
    common = ["--disable-usage-stats", "--include-dashboard=false"]
    try:
        _run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", *common], env)
        _run(
            [
                RAY,
                "start",
                "--address",
                address,
                "--num-cpus",
                "2",
                "--resources",
                '{"second_node": 1}',
                "--disable-usage-stats",
            ],
            env,
        )
        nodes = json.loads(
            _run([sys.executable, "-c", NODES.format(address=address)], env).splitlines()[-1]
        )
        nodes = [n for n in nodes if n["alive"]]
        assert len(nodes) == 2, nodes
        second = next(n["id"] for n in nodes if "second_node" in n["resources"])
        head = next(n["id"] for n in nodes if "second_node" not in n["resources"])

        _run([*RAYLENS, "up", "--address", address, "--detach"], env)
        url = f"http://127.0.0.1:{http_port}"
        images = [image_bytes(700 + i, (96, 64)) for i in range(24)]
        t0 = time.time()
        with Client(url) as client:
            ids = [job_id for data in images for job_id in client.submit(data)]
            jobs = client.wait(ids, timeout_s=240, progress=False)
        assert [j["state"] for j in jobs] == ["done"] * 24, [j.get("error") for j in jobs]
        seconds = max(j["timestamps"]["done"] for j in jobs) - t0

        status = json.loads(_run([*RAYLENS, "status", "--json", "--address", address], env))
        workers = status["workers"]
        assert [w["node_id"] for w in workers] == [second], (workers, head)
        assert workers[0]["images"] == 24
        # Uploaded at the head, read by the worker from Redis: payload jobs, not file paths.
        assert {j["source_kind"] for j in jobs} == {"upload"}
        print(f"\nsecond node: 24 jobs in {seconds:.1f}s ({24 / seconds:.1f} jobs/s)")
    finally:
        subprocess.run([*RAYLENS, "down", "--address", address], env=env, capture_output=True)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
