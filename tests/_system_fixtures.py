"""Fixtures for integration tests: a real local Ray cluster and a running raylens system."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray

from raylens.actors import launch
from raylens.cluster.jobs import Job
from raylens.cluster.settings import Settings

# Integration tests that take minutes (the two-node test, the pending worker): `make test` runs
# them like every other test; `-m "not long"` leaves them out for quick iteration.
long_test = pytest.mark.long


def tiny_settings(data_dir: Path, tiny_model: Any, **overrides: Any) -> Settings:
    """Settings for a small, fast system on the tiny OpenCLIP model, in its own namespace."""
    base: dict[str, Any] = dict(
        data_dir=data_dir,
        clip_model=tiny_model.name,
        clip_pretrained=str(tiny_model.checkpoint_path),
        clip_model_config=tiny_model.config_path,
        namespace=f"raylens-test-{uuid.uuid4().hex[:8]}",
        num_workers=1,
        worker_num_cpus=1,
        max_batch_size=16,
        batch_wait_ms=5,
        lease_timeout_s=6,
        lease_check_interval_s=0.3,
        lease_poll_s=0.5,
        ingest_poll_s=0.2,
        max_image_pixels=4_000_000,
        worker_start_timeout_s=180,
    )
    base.update(overrides)
    return Settings(**base)


def start_ray(num_cpus: int = 4) -> None:
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            namespace="raylens-tests",
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster for one test module (shut down after it)."""
    start_ray()
    yield
    ray.shutdown()


@pytest.fixture
def settings_for(tmp_path: Path, tiny_model: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return tiny_settings(tmp_path / "data", tiny_model, **overrides)

    return make


@pytest.fixture
def running(ray_cluster: None) -> Iterator[Callable[[Settings], dict[str, Any]]]:
    """Start a raylens system for given settings; everything started is stopped afterwards."""
    started: list[Settings] = []

    def run(settings: Settings) -> dict[str, Any]:
        started.append(settings)
        return launch.start(settings)

    yield run
    for s in started:
        launch.stop(s, timeout_s=5)


def wait_terminal(queue: Any, ids: Sequence[str], timeout_s: float = 180) -> list[Job]:
    """Poll until every job is done or failed; fail the test (not hang) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = ray.get(queue.states.remote(list(ids)))
        if all(j is not None and j.state.terminal for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            states = [j.state.value if j else None for j in jobs]
            pytest.fail(
                f"jobs not terminal after {timeout_s}s: "
                f"{ {s: states.count(s) for s in set(states)} }"
            )
        time.sleep(0.2)


@contextmanager
def serving(settings: Settings, ready_timeout_s: float = 120) -> Iterator[str]:
    """A raylens system with its Serve ingress, ready (readyz 200); yields the ingress URL and
    stops both afterwards."""
    import httpx

    from raylens.serve_app.deploy import deploy, undeploy

    launch.start(settings)
    try:
        url = deploy(settings)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/v1/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the ingress never became ready"
            time.sleep(0.5)
        yield url
    finally:
        undeploy()
        launch.stop(settings, timeout_s=5)
