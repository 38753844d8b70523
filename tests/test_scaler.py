"""Scaling decisions (pure): bounds, backlog, oldest age, idle cool-down, one step at a time."""

from __future__ import annotations

import pytest

from raylens.cluster.scaler import ScalerState, WorkerView, decide, idle_seconds
from raylens.cluster.settings import Settings
from raylens.errors import SettingsError

NOW = 1_000_000.0


def _settings(**kw) -> Settings:
    base = dict(num_workers=1, min_workers=1, max_workers=3, scale_cooldown_s=30)
    return Settings(**{**base, **kw})


def _workers(*idle: float, ready: bool = True) -> list[WorkerView]:
    return [WorkerView(f"raylens-worker-{i}", ready, 0, s) for i, s in enumerate(idle)]


def test_scaling_is_off_and_bounds_follow_num_workers_when_unset() -> None:
    s = Settings(num_workers=2)
    assert (s.worker_min, s.worker_max, s.scaling) == (2, 2, False)
    assert decide(s, _workers(0, 0), 10_000, 999, ScalerState(), NOW).action == "hold"


def test_settings_refuse_min_workers_above_max_workers() -> None:
    with pytest.raises(SettingsError, match="RAYLENS_MIN_WORKERS"):
        from raylens.cluster.settings import load_settings

        load_settings(min_workers=4, max_workers=2)


def test_scaler_adds_a_worker_when_the_backlog_per_worker_is_over_the_threshold() -> None:
    d = decide(_settings(scale_up_backlog=64), _workers(0), 65, 1.0, ScalerState(), NOW)
    assert (d.action, d.name) == ("up", "raylens-worker-1")
    assert "65 queued" in d.reason
    d = decide(_settings(scale_up_backlog=64), _workers(0), 64, 1.0, ScalerState(), NOW)
    assert d.action == "hold"


def test_scaler_adds_a_worker_when_the_oldest_queued_job_is_too_old() -> None:
    d = decide(_settings(scale_up_oldest_s=30), _workers(0), 3, 31.0, ScalerState(), NOW)
    assert d.action == "up" and "oldest" in d.reason


def test_scaler_never_goes_above_max_workers() -> None:
    d = decide(_settings(max_workers=2), _workers(0, 0), 10_000, 999, ScalerState(), NOW)
    assert d.action == "hold"


def test_scaler_waits_for_a_pending_worker_before_adding_another() -> None:
    workers = [*_workers(0), WorkerView("raylens-worker-1", ready=False)]
    assert decide(_settings(), workers, 10_000, 999, ScalerState(), NOW).action == "hold"


def test_scaler_holds_within_the_cool_down_of_its_last_step() -> None:
    state = ScalerState(last_action_at=NOW - 10)
    d = decide(_settings(scale_cooldown_s=30), _workers(0), 10_000, 999, state, NOW)
    assert (d.action, d.reason) == ("hold", "cooling down")


def test_scaler_restores_min_workers_at_once_even_when_cooling_down() -> None:
    state = ScalerState(last_action_at=NOW)
    d = decide(_settings(min_workers=2), _workers(0), 0, 0, state, NOW)
    assert (d.action, d.name) == ("up", "raylens-worker-1")


def test_scaler_removes_the_newest_idle_worker_after_the_idle_time_when_nothing_is_queued():
    s = _settings(scale_down_idle_s=120)
    d = decide(s, _workers(500, 300, 200), 0, 0, ScalerState(), NOW)
    assert (d.action, d.name) == ("down", "raylens-worker-2")
    d = decide(s, _workers(500, 100), 0, 0, ScalerState(), NOW)
    assert (d.action, d.name) == ("down", "raylens-worker-0")  # the only one idle long enough
    assert decide(s, _workers(100, 100), 0, 0, ScalerState(), NOW).action == "hold"
    assert decide(s, _workers(500, 500), 1, 0, ScalerState(), NOW).action == "hold"


def test_scaler_never_removes_a_worker_that_holds_jobs_or_goes_below_min() -> None:
    s = _settings(scale_down_idle_s=1, min_workers=1)
    busy = [WorkerView("raylens-worker-0", True, 2), WorkerView("raylens-worker-1", True, 4)]
    assert decide(s, busy, 0, 0, ScalerState(), NOW).action == "hold"
    assert decide(s, _workers(999), 0, 0, ScalerState(), NOW).action == "hold"


def test_idle_seconds_count_from_the_last_progress_and_are_zero_while_holding_jobs() -> None:
    assert idle_seconds({"held_leases": 0, "last_progress_at": NOW - 42}, NOW) == 42
    assert idle_seconds({"held_leases": 0, "started_at": NOW - 7}, NOW) == 7
    assert idle_seconds({"held_leases": 3, "last_progress_at": NOW - 42}, NOW) == 0


def test_ingress_autoscales_on_ongoing_requests_when_max_replicas_is_above_replicas() -> None:
    from ray import serve

    from raylens.serve_app.deploy import Ingress, deployment_options

    opts = deployment_options(Settings(http_replicas=1, http_max_replicas=4))
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 4)
    assert auto["target_ongoing_requests"] == 16.0
    assert "num_replicas" not in opts
    # Serve's own validation accepts it (building the deployment checks the config).
    dep = serve.deployment(serve.ingress()(Ingress), **opts)
    assert dep._deployment_config.autoscaling_config.max_replicas == 4
    fixed = deployment_options(Settings(http_replicas=2))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed


def test_settings_refuse_http_max_replicas_below_http_replicas() -> None:
    from raylens.cluster.settings import load_settings

    with pytest.raises(SettingsError, match="RAYLENS_HTTP_MAX_REPLICAS"):
        load_settings(http_replicas=3, http_max_replicas=2)


def test_scaler_holds_when_a_worker_is_paused_because_a_dependency_is_down() -> None:
    paused = [WorkerView("raylens-worker-0", True, 0, 0.0, paused=True)]

    d = decide(_settings(scale_up_backlog=64), paused, 10_000, 999.0, ScalerState(), NOW)

    assert d.action == "hold" and "unavailable" in d.reason
