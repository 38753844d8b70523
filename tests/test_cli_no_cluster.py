"""The console script with no Ray cluster at the address: every verb that needs one stops within
seconds with one clear line (the address, and what to do) instead of waiting minutes on Ray's GCS
connection, and `raylens up` with weights it can neither find nor download stops before Ray.

Run as a user runs it (`.venv/bin/raylens`), against a port where nothing listens. No Ray is
started by these tests; were one started anyway (the faults these tests guard against), it is
found by its unique port and stopped, and the test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _ports import free_port

RAYLENS = str(Path(sys.executable).parent / "raylens")
# Generous next to the 5 s goal: a loaded 2-core machine took 10-15 s per run here, mostly
# importing Ray; a hang (minutes in ray.init before the fix) still fails it.
NO_CLUSTER_BOUND_S = 30.0


def _env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))}
    port = free_port()
    env.update(
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAYLENS_DATA_DIR=str(tmp_path / "data"),
        RAYLENS_RAY_PORT=str(port),
        RAYLENS_DASHBOARD_PORT=str(free_port()),
        RAYLENS_HTTP_PORT=str(free_port()),
    )
    env.update(extra)
    return env, port


def _ray_pids_on(port: int) -> list[int]:
    """Processes of a Ray cluster on this (unique, random) port: gcs_server, raylet and the rest."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (
            "ray" in cmd
            and "bin/raylens " not in cmd
            and (f":{port} " in cmd or f"={port} " in cmd or cmd.endswith(f":{port}"))
        ):
            pids.append(int(entry.name))
    return pids


def _run(args: list[str], env: dict[str, str], port: int, bound_s: float) -> tuple[int, str, float]:
    """(exit code, stderr + stdout, seconds). Past bound_s the command is killed and the test
    fails; any Ray it started on `port` is stopped."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [RAYLENS, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started: list[int] = []
    out = err = ""
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            started = _ray_pids_on(port)
            if started or time.monotonic() - t0 > bound_s:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                break
    for _ in range(3):  # stop what it started (found by its port), children included
        for pid in _ray_pids_on(port):
            started.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    seconds = time.monotonic() - t0
    assert not started, f"`raylens {' '.join(args)}` started Ray on port {port}: {err[-2000:]}"
    assert proc.returncode is not None and seconds < bound_s, (
        f"`raylens {' '.join(args)}` still running after {seconds:.0f}s: {err[-2000:]}"
    )
    return proc.returncode, err + out, seconds


def _verbs(tmp_path: Path) -> list[list[str]]:
    image = tmp_path / "one.jpg"
    image.write_bytes(b"not really a jpeg")
    return [
        ["status"],
        ["ingest", str(tmp_path), "--no-progress"],
        ["search", "a cat"],
        ["faces", str(image)],
        ["jobs", "retry", "--failed"],
    ]


@pytest.mark.parametrize("how", ["default", "--address", "RAYLENS_RAY_ADDRESS", "RAY_ADDRESS"])
def test_every_verb_stops_at_once_with_no_cluster(tmp_path: Path, how: str) -> None:
    env, port = _env(tmp_path)
    address = f"127.0.0.1:{port}"
    flag: list[str] = []
    if how == "--address":
        flag = ["--address", address]
    elif how != "default":
        env[how] = address
    verbs = _verbs(tmp_path) if how == "default" else _verbs(tmp_path)[:1]
    for verb in verbs:
        code, text, seconds = _run([*verb, *flag], env, port, NO_CLUSTER_BOUND_S)
        assert code != 0, text
        last = text.strip().splitlines()[-1]
        assert f":{port}" in last and "raylens up" in last, text
        assert "Traceback" not in text, text


def test_down_with_nothing_running_says_so_and_exits_0(tmp_path: Path) -> None:
    env, port = _env(tmp_path)
    code, text, _ = _run(["down"], env, port, NO_CLUSTER_BOUND_S)
    assert code == 0, text
    assert "nothing to stop" in text and f":{port}" in text, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_up_offline_with_uncached_tag_fails_before_starting_ray(
    tmp_path: Path, offline: str
) -> None:
    tag = "commonpool_s_basic_s13m_b4k"  # a real ViT-B-32 tag, and one nobody here downloads
    env, port = _env(tmp_path, RAYLENS_CLIP_MODEL="ViT-B-32", RAYLENS_CLIP_PRETRAINED=tag)
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: surely not cached
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            env.pop(proxy, None)
    # Importing open_clip (torch, torchvision) took 20-60 s on a loaded 2-core machine.
    code, text, _ = _run(["up", "--detach", "--no-http"], env, port, 150.0)
    assert code != 0, text
    assert "RAYLENS_CLIP_PRETRAINED" in text and tag in text, text
    assert "starting a local Ray cluster" not in text, text
    assert "Traceback" not in text, text
    assert not (tmp_path / "data" / "ray-started-by-raylens").exists()
