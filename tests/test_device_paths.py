"""Unit: which device a worker runs on and what it asks Ray for, per machine kind.

macOS (Apple silicon): Ray schedules no MPS "GPU", so a worker asks for 0 GPUs and still runs
on mps. CUDA machines: N GPUs -> N workers (notebook `launch()`), each asking for one GPU.
torch's availability checks and Ray's resource view are replaced; no cluster is started.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import ray
import torch

from raylens.actors import launch
from raylens.cluster.settings import ENV_PREFIX, Settings
from raylens.errors import ModelLoadError
from raylens.models.device import select_device, select_dtype


@pytest.fixture(autouse=True)
def _no_raylens_env(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def _machine(monkeypatch, *, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _cluster(monkeypatch, resources: dict[str, float]) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))


class _ActorClassStandIn:
    """What `ray.remote(Worker)` returns, reduced to recording the options it is given."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    def options(self, **options: Any) -> _ActorClassStandIn:
        self.calls.append(options)
        return self

    def remote(self, *args: Any, **kwargs: Any) -> object:
        return object()


def _record_worker_options(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "remote", lambda cls: _ActorClassStandIn(calls))
    monkeypatch.setattr(launch, "wait_for_workers", lambda settings, workers: [{}] * len(workers))
    return calls


# --- device selection in the worker process ------------------------------------------------


def test_select_device_picks_mps_when_there_is_no_cuda_but_mps(monkeypatch) -> None:
    _machine(monkeypatch, cuda=False, mps=True)
    assert select_device("auto") == "mps"
    assert select_device("mps") == "mps"


def test_select_dtype_keeps_fp32_when_the_device_is_mps_and_precision_auto() -> None:
    assert select_dtype("mps", "auto") == torch.float32
    assert select_dtype("mps", "fp16") == torch.float16  # allowed on mps, unlike on cpu


def test_select_device_prefers_cuda_when_cuda_and_mps_are_both_available(monkeypatch) -> None:
    _machine(monkeypatch, cuda=True, mps=True)
    assert select_device("auto") == "cuda"


def test_select_device_falls_back_to_cpu_when_neither_cuda_nor_mps(monkeypatch) -> None:
    _machine(monkeypatch, cuda=False, mps=False)
    assert select_device("auto") == "cpu"


def test_select_device_fails_naming_the_setting_when_mps_is_asked_for_but_missing(
    monkeypatch,
) -> None:
    _machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ModelLoadError, match="RAYLENS_CLIP_DEVICE=mps"):
        select_device("mps")


# --- the GPU share each worker asks Ray for --------------------------------------------------


def test_worker_gpus_is_zero_when_the_cluster_has_no_gpu_as_on_apple_silicon(monkeypatch) -> None:
    _cluster(monkeypatch, {"CPU": 10.0, "memory": 8e9})  # Ray reports no GPU for MPS
    assert launch.worker_gpus(Settings()) == 0.0


def test_worker_gpus_is_one_when_the_cluster_has_gpus_and_the_setting_is_unset(
    monkeypatch,
) -> None:
    _cluster(monkeypatch, {"CPU": 8.0, "GPU": 2.0})
    assert launch.worker_gpus(Settings()) == 1.0


@pytest.mark.parametrize("share", [0.0, 0.5, 2.0])
def test_worker_gpus_follows_the_setting_when_it_is_set(monkeypatch, share) -> None:
    _cluster(monkeypatch, {"CPU": 8.0, "GPU": 2.0})
    assert launch.worker_gpus(Settings(worker_num_gpus=share)) == share


def test_worker_options_ask_for_zero_gpus_when_the_machine_has_only_mps(monkeypatch) -> None:
    _machine(monkeypatch, cuda=False, mps=True)
    _cluster(monkeypatch, {"CPU": 10.0})
    settings = Settings(num_workers=2)
    gpus = launch.worker_gpus(settings)
    opts = [launch.worker_options(settings, settings.worker_name(i), gpus) for i in range(2)]
    assert [o["num_gpus"] for o in opts] == [0.0, 0.0]
    assert Settings().clip_device == "auto" and select_device("auto") == "mps"


def test_worker_options_ask_for_one_gpu_each_when_the_cluster_has_gpus(monkeypatch) -> None:
    _cluster(monkeypatch, {"CPU": 8.0, "GPU": 3.0})
    settings = Settings(num_workers=3, worker_num_cpus=2.0)
    gpus = launch.worker_gpus(settings)
    opts = [launch.worker_options(settings, settings.worker_name(i), gpus) for i in range(3)]
    assert [o["num_gpus"] for o in opts] == [1.0, 1.0, 1.0]
    assert [o["num_cpus"] for o in opts] == [2.0, 2.0, 2.0]
    assert [o["name"] for o in opts] == [f"raylens-worker-{i}" for i in range(3)]


# --- notebook launch(): one worker per GPU ------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "given", "workers"),
    [
        (2.0, {}, 2),  # Kaggle T4 x2: two workers
        (1.0, {}, 1),  # one GPU: the default single worker
        (0.0, {}, 1),  # CPU or Apple silicon: one worker
        (2.0, {"num_workers": 1}, 1),  # RAYLENS_NUM_WORKERS wins when set
    ],
)
def test_launch_starts_one_worker_per_gpu_each_asking_one_gpu_when_workers_are_not_set(
    monkeypatch, gpus, given, workers
) -> None:
    from raylens.serve_app import deploy

    resources = {"CPU": 4.0, **({"GPU": gpus} if gpus else {})}
    _cluster(monkeypatch, resources)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    calls = _record_worker_options(monkeypatch)
    monkeypatch.setattr(launch, "start", lambda settings: launch.start_workers(settings))
    monkeypatch.setattr(deploy, "deploy", lambda settings: "http://127.0.0.1:8000")
    monkeypatch.setattr(deploy, "_launched", [])

    deploy.launch(Settings(**given))

    assert len(calls) == workers
    assert all(c["num_gpus"] == (1.0 if gpus else 0.0) for c in calls)
