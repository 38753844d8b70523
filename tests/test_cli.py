"""End to end through the console script, as a user runs it: up --detach, ingest, status, search."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from raylens.cli.ray_session import RaySession

from _images import write_images
from _ports import free_port

pytestmark = pytest.mark.integration
RAYLENS = [sys.executable, "-m", "raylens.cli.main"]
SERVE_CONFIG = Path(__file__).parents[1] / "raylens" / "serve_app" / "serve_config.yaml"


@pytest.fixture
def cli_env(tmp_path: Path, tiny_model) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))}
    env.update(
        RAYLENS_DATA_DIR=str(tmp_path / "data"),
        RAYLENS_CLIP_MODEL=tiny_model.name,
        RAYLENS_CLIP_PRETRAINED=str(tiny_model.checkpoint_path),
        RAYLENS_CLIP_MODEL_CONFIG=str(tiny_model.config_path),
        RAYLENS_RAY_PORT=str(free_port()),
        RAYLENS_DASHBOARD_PORT=str(free_port()),
        RAYLENS_HTTP_PORT=str(free_port()),
        RAYLENS_WORKER_NUM_CPUS="1",
        RAYLENS_INGEST_POLL_S="0.2",
    )
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(RAYLENS + args, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_ingests_reports_and_searches_when_run_like_a_user(tmp_path: Path, cli_env) -> None:
    write_images(tmp_path / "photos", 20)
    up = _run(["up", "--detach", "--no-http"], cli_env)
    try:
        assert up.returncode == 0, up.stderr
        assert "raylens is up" in up.stderr and "HTTP API" not in up.stderr
        dashboard = f"http://127.0.0.1:{cli_env['RAYLENS_DASHBOARD_PORT']}"
        job_env = (
            {**cli_env, "RAY_AUTH_MODE": "token"}
            if Path.home().joinpath(".ray", "auth_token").is_file()
            else cli_env
        )

        # The documented Serve path: `serve deploy` of the shipped config (on a free port).
        config = yaml.safe_load(SERVE_CONFIG.read_text())
        config["http_options"]["port"] = int(cli_env["RAYLENS_HTTP_PORT"])
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
        deployed = subprocess.run(
            [
                str(Path(sys.executable).parent / "serve"),
                "deploy",
                str(tmp_path / "serve.yaml"),
                "--address",
                dashboard,
            ],
            env=job_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        api = f"http://127.0.0.1:{cli_env['RAYLENS_HTTP_PORT']}"
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"{api}/v1/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve deploy never became ready"
            time.sleep(1)
        assert ready.json()["ready"] is True and ready.json()["workers"][0]["load_count"] == 1

        ingest = _run(["ingest", str(tmp_path / "photos"), "--json", "--no-progress"], cli_env)
        assert ingest.returncode == 0, ingest.stderr
        summary = json.loads(ingest.stdout.strip().splitlines()[-1])
        assert {k: summary[k] for k in ("submitted", "done", "failed", "skipped")} == {
            "submitted": 20,
            "done": 20,
            "failed": 0,
            "skipped": 0,
        }

        again = _run(["ingest", str(tmp_path / "photos"), "--json", "--no-progress"], cli_env)
        second = json.loads(again.stdout.strip().splitlines()[-1])
        assert second["skipped"] == 20
        # Each ingest is a run: the first finished, so the second is a new one.
        listed = _run(["runs", "--json"], cli_env)
        assert listed.returncode == 0, listed.stderr
        shown = json.loads(listed.stdout.strip().splitlines()[-1])
        assert [r["id"] for r in shown[:2]] == [second["run_id"], summary["run_id"]]
        assert shown[0]["status"] == "complete" and shown[0]["counts"]["done"] == 20
        one = httpx.get(f"{api}/v1/runs/{summary['run_id']}", timeout=30).json()
        assert one["counts"]["submitted"] == 20 and one["source"] == str(tmp_path / "photos")
        assert httpx.get(f"{api}/v1/runs/nope", timeout=30).status_code == 404

        # The cluster path: a Ray job whose entrypoint is the same CLI.
        write_images(tmp_path / "more", 6, start=100)
        for _ in range(24):  # up to 2 minutes: the agent is slow to come up on a loaded machine
            submitted = subprocess.run(
                [
                    str(Path(sys.executable).parent / "ray"),
                    "job",
                    "submit",
                    "--address",
                    dashboard,
                    "--",
                    "raylens",
                    "ingest",
                    str(tmp_path / "more"),
                    "--json",
                    "--no-progress",
                ],
                env=job_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            # Ray's job agent can be briefly unavailable right after `serve deploy`; Ray's own
            # message says to try again.
            if "No available agent to submit job" not in submitted.stderr:
                break
            time.sleep(5)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        job_summary = json.loads(
            next(line for line in submitted.stdout.splitlines() if line.startswith('{"path"'))
        )
        assert (job_summary["submitted"], job_summary["done"]) == (6, 6)

        status = _run(["status", "--json"], cli_env)
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["queue"]["jobs"]["done"] == 26
        assert st["queue"]["depth"] == {"interactive": 0, "normal": 0, "bulk": 0}
        assert st["index"]["points"] == 26
        (worker,) = st["workers"]
        assert worker["load_count"] == 1 and worker["device"] == "cpu" and worker["dim"] > 0

        search = _run(["search", "a colourful pattern", "--top-k", "5", "--json"], cli_env)
        assert search.returncode == 0, search.stderr
        hits = json.loads(search.stdout)["hits"]
        assert len(hits) == 5
        ingested = {str(p) for p in tmp_path.rglob("*.*") if p.parent.name != "data"}
        assert all(h["payload"]["source"] in ingested for h in hits)
        assert all(h["payload"]["job_id"] and h["payload"]["model_id"] for h in hits)
        assert hits == sorted(hits, key=lambda h: -h["score"])

        # Faces from the command line, on a real photo.
        people = tmp_path / "people"
        people.mkdir()
        Image.fromarray(skdata.astronaut()).save(people / "astronaut.jpg", quality=92)
        Image.fromarray(skdata.astronaut()[:, ::-1]).save(tmp_path / "flipped.jpg", quality=92)
        ingest = _run(["ingest", str(people), "--json", "--no-progress"], cli_env)
        assert json.loads(ingest.stdout.strip().splitlines()[-1])["done"] == 1, ingest.stderr
        faces = _run(["faces", str(people / "astronaut.jpg"), "--json"], cli_env)
        assert faces.returncode == 0, faces.stderr
        found = json.loads(faces.stdout)["faces"]
        assert found and found[0]["face_index"] == 0 and len(found[0]["box"]) == 4
        like = _run(["search", "--face", str(tmp_path / "flipped.jpg"), "--json"], cli_env)
        assert like.returncode == 0, like.stderr
        top = json.loads(like.stdout)["hits"][0]
        assert top["name"] == "astronaut.jpg" and top["distance"] < 0.6
        no_face = _run(["search", "--face", str(tmp_path / "more" / "img_00100.jpg")], cli_env)
        assert no_face.returncode == 1 and "no face found" in no_face.stderr
    finally:
        # Another Ray on the same machine (a notebook's, another test run's): `raylens down`
        # must stop only the head `raylens up` started (`ray stop` would stop this one too).
        bystander = _start_bystander_ray()
        try:
            down = _run(["down"], cli_env)
            bystander_alive = _listening(bystander)
        finally:
            session = RaySession(bystander)
            if session.find():
                session.terminate()
    assert down.returncode == 0, down.stderr
    assert bystander_alive, "raylens down stopped another Ray head on this machine"
    assert not _listening(int(cli_env["RAYLENS_RAY_PORT"]))  # its own head is gone


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_bystander_ray() -> int:
    """A second Ray head on free ports (its agents too: two heads on one machine would
    otherwise both want Ray's default agent ports). Returns its GCS port."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=0",
        "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return port


def test_cli_up_fails_at_once_naming_the_setting_when_the_checkpoint_is_missing(
    tmp_path: Path, cli_env
) -> None:
    cli_env["RAYLENS_CLIP_PRETRAINED"] = str(tmp_path / "missing.pt")

    up = _run(["up", "--detach"], cli_env, timeout=180)

    assert up.returncode == 1
    assert "RAYLENS_CLIP_PRETRAINED" in up.stderr
    assert "Traceback" not in up.stderr


def test_cli_exits_2_naming_the_variable_when_a_setting_is_invalid(cli_env) -> None:
    cli_env["RAYLENS_MAX_BATCH_SIZE"] = "0"

    res = _run(["status"], cli_env, timeout=60)

    assert res.returncode == 2
    assert "RAYLENS_MAX_BATCH_SIZE" in res.stderr and "Traceback" not in res.stderr


def test_cli_down_stops_a_head_whose_up_was_killed_while_ray_started(cli_env) -> None:
    """`raylens up --detach` gets SIGKILL while its `ray start --head` is finishing: the GCS
    already listens, and `ray start` (in its own session) goes on and leaves the head up.
    `raylens down` must still stop that head. Before, the marker that lets it stop a head was
    written only once `ray start` returned, so it said "stopped 0 worker(s)" and left it."""
    import psutil

    port = int(cli_env["RAYLENS_RAY_PORT"])
    up = subprocess.Popen(
        [*RAYLENS, "up", "--detach", "--no-http"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ray_start: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and up.poll() is None and not _listening(port):
            for child in psutil.Process(up.pid).children(recursive=True):
                try:
                    if "start" in child.cmdline() and f"--port={port}" in child.cmdline():
                        ray_start = child
                except psutil.Error:
                    continue
            time.sleep(0.05)
        assert ray_start is not None and ray_start.is_running(), "ray start was not caught"
        up.kill()  # the GCS listens, ray start has not returned
        up.wait(timeout=30)
        ray_start.wait(timeout=180)
        assert RaySession(port).find(), "the head did not stay up after its raylens up died"
        down = _run(["down"], cli_env)
        assert down.returncode == 0, down.stderr
        assert not RaySession(port).find() and not _listening(port), (
            f"raylens down left the head running: {down.stderr}"
        )
    finally:
        if up.poll() is None:
            up.kill()
        session = RaySession(port)
        if session.find():
            session.terminate()
