"""Unit: the one retry/backoff policy for reaching actors (no Ray cluster needed)."""

from __future__ import annotations

import pytest
import ray

from raylens.actors.handles import UNAVAILABLE, ActorMissing, Backoff, call_with_retry


class Clock:
    """Sleeps recorded instead of slept."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)


def flaky(failures: list[BaseException], value: str = "ok"):
    def call() -> str:
        if failures:
            raise failures.pop(0)
        return value

    return call


def test_backoff_doubles_up_to_its_cap_when_called_repeatedly() -> None:
    b = Backoff(first_s=0.5, cap_s=3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


def test_backoff_refuses_settings_when_cap_is_below_first() -> None:
    with pytest.raises(ValueError):
        Backoff(first_s=2.0, cap_s=1.0)


def test_call_with_retry_rides_out_unavailable_actors_when_they_come_back() -> None:
    clock = Clock()
    errors: list[BaseException] = [ActorMissing("queue"), ray.exceptions.GetTimeoutError()]
    assert call_with_retry(flaky(errors), what="queue", sleep=clock.sleep) == "ok"
    assert clock.slept == [0.2, 0.4]


def test_call_with_retry_does_not_retry_a_plain_value_error_when_one_is_raised() -> None:
    # The drift this module ended: one copy retried every ValueError forever.
    clock = Clock()
    with pytest.raises(ValueError):
        call_with_retry(flaky([ValueError("bad argument")]), what="queue", sleep=clock.sleep)
    assert clock.slept == []


def test_call_with_retry_gives_up_when_its_deadline_has_passed() -> None:
    clock = Clock()
    errors: list[BaseException] = [ActorMissing("q")] * 100
    with pytest.raises(ActorMissing):
        call_with_retry(flaky(errors), what="queue", deadline_s=0.0, sleep=clock.sleep)
    assert len(clock.slept) <= 1


def test_call_with_retry_keeps_going_past_its_deadline_when_asked_to() -> None:
    clock = Clock()
    errors: list[BaseException] = [ActorMissing("q")] * 5
    got = call_with_retry(
        flaky(errors), what="queue", deadline_s=0.0, keep_going=lambda: True, sleep=clock.sleep
    )
    assert got == "ok" and len(clock.slept) == 5


def test_call_with_retry_stops_when_keep_going_turns_false_without_a_deadline() -> None:
    clock = Clock()
    errors: list[BaseException] = [ActorMissing("q")] * 5
    with pytest.raises(ActorMissing):
        call_with_retry(flaky(errors), what="queue", keep_going=lambda: False, sleep=clock.sleep)


def test_unavailable_set_names_every_actor_outage_when_listed() -> None:
    assert ray.exceptions.RayActorError in UNAVAILABLE
    assert ray.exceptions.ActorUnavailableError in UNAVAILABLE
    assert ActorMissing in UNAVAILABLE
    assert ValueError not in UNAVAILABLE


# ---- Pause: work waits for a dependency that is down (invariant 10) -------------------------
def test_pause_probes_with_growing_delays_until_the_dependency_answers() -> None:
    from raylens.actors.handles import Pause
    from raylens.errors import ErrorCode, IndexUnavailable

    pause = Pause(Backoff(first_s=0.1, cap_s=0.4))
    probe = flaky([IndexUnavailable("down")] * 3)
    waited: list[float] = []

    pause.trip(ErrorCode.INDEX_UNAVAILABLE, "index actor unavailable", probe)
    assert pause.down == (ErrorCode.INDEX_UNAVAILABLE, "index actor unavailable")
    pause.wait(lambda delay: waited.append(delay) or False)

    assert waited == [0.1, 0.2, 0.4, 0.4]  # three failed probes, then one that answered
    assert pause.down is None and pause.trips == 1
    assert pause.wait(lambda delay: pytest.fail("not paused: no wait")) >= 0.0


def test_pause_keeps_the_first_dependency_when_it_is_tripped_again() -> None:
    from raylens.actors.handles import Pause
    from raylens.errors import ErrorCode

    pause = Pause(Backoff(first_s=0.1, cap_s=0.1))
    pause.trip(ErrorCode.INDEX_UNAVAILABLE, "index", lambda: None)
    pause.trip(ErrorCode.STORE_UNAVAILABLE, "store", lambda: None)

    assert pause.down == (ErrorCode.INDEX_UNAVAILABLE, "index") and pause.trips == 1


def test_pause_wait_gives_up_when_the_worker_stops() -> None:
    from raylens.actors.handles import Pause
    from raylens.errors import ErrorCode, IndexUnavailable

    pause = Pause(Backoff(first_s=0.1, cap_s=0.1))
    pause.trip(ErrorCode.INDEX_UNAVAILABLE, "index", flaky([IndexUnavailable("x")] * 100))

    pause.wait(lambda delay: True)  # stopped: returns at once, still paused

    assert pause.down is not None


def test_pause_delays_go_on_growing_across_trips_until_work_was_healthy() -> None:
    from raylens.actors.handles import Pause
    from raylens.errors import ErrorCode

    pause = Pause(Backoff(first_s=0.1, cap_s=1.0))
    waited: list[float] = []
    for _ in range(2):  # the probe answers, yet the real call fails again at once
        pause.trip(ErrorCode.INDEX_UNAVAILABLE, "index", lambda: None)
        pause.wait(lambda delay: waited.append(delay) or False)
    pause.healthy()
    pause.trip(ErrorCode.INDEX_UNAVAILABLE, "index", lambda: None)
    pause.wait(lambda delay: waited.append(delay) or False)

    assert waited == [0.1, 0.2, 0.1]


def test_named_actor_looks_up_once_and_again_only_after_a_failed_call(monkeypatch) -> None:
    from raylens.actors import handles

    looked_up: list[str] = []

    class Handle:
        def __init__(self, n: int) -> None:
            self.n = n

    def fake_lookup(name: str, namespace: str) -> Handle:
        looked_up.append(name)
        return Handle(len(looked_up))

    monkeypatch.setattr(handles, "lookup", fake_lookup)
    monkeypatch.setattr(handles.ray, "get", lambda value, timeout=None: value)
    actor = handles.NamedActor("raylens-queue", "ns")

    assert [actor.call(lambda h: h.n) for _ in range(3)] == [1, 1, 1]
    with pytest.raises(ray.exceptions.RayActorError):
        actor.call(lambda h: (_ for _ in ()).throw(ray.exceptions.RayActorError()))
    assert actor.call(lambda h: h.n) == 2  # re-created under its name: found afresh
    assert looked_up == ["raylens-queue", "raylens-queue"]
