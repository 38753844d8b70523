"""Unit: the queue's lanes and leases (no Ray, no store)."""

from __future__ import annotations

from raylens.cluster.jobs import Lane
from raylens.cluster.lanes import Lanes, Queued


def _lanes(*entries: tuple[str, Lane]) -> Lanes:
    lanes = Lanes()
    for i, (job_id, lane) in enumerate(entries):
        lanes.push(job_id, lane, queued_at=100.0 + i)
    return lanes


def test_lanes_pop_serves_interactive_then_normal_then_bulk_when_every_lane_holds_jobs() -> None:
    lanes = _lanes(("b1", Lane.BULK), ("n1", Lane.NORMAL), ("i1", Lane.INTERACTIVE))
    lanes.push("n2", Lane.NORMAL, 110.0)

    taken = lanes.pop(3)

    assert [t.job_id for t in taken] == ["i1", "n1", "n2"]
    assert lanes.queued_ids(Lane.BULK) == ["b1"] and lanes.depth() == 1


def test_lanes_pop_returns_fewer_when_the_lanes_hold_fewer_than_asked() -> None:
    lanes = _lanes(("n1", Lane.NORMAL))

    assert [t.job_id for t in lanes.pop(5)] == ["n1"]
    assert lanes.pop(5) == [] and lanes.depth() == 0


def test_lanes_push_front_puts_the_job_at_the_head_when_its_lane_holds_others() -> None:
    lanes = _lanes(("n1", Lane.NORMAL), ("n2", Lane.NORMAL))

    lanes.push_front("n0", Lane.NORMAL, 50.0)

    assert lanes.queued_ids(Lane.NORMAL) == ["n0", "n1", "n2"]


def test_lanes_push_keeps_one_entry_at_the_tail_when_an_id_is_queued_again() -> None:
    lanes = _lanes(("n1", Lane.NORMAL), ("n2", Lane.NORMAL))

    lanes.push("n1", Lane.NORMAL, 200.0)

    assert lanes.queued_ids(Lane.NORMAL) == ["n2", "n1"] and lanes.depth() == 2


def test_lanes_discard_removes_the_job_from_the_middle_when_it_is_queued() -> None:
    lanes = _lanes(("n1", Lane.NORMAL), ("n2", Lane.NORMAL), ("n3", Lane.NORMAL))

    lanes.discard("n2")
    lanes.discard("unknown")  # not queued: nothing to do

    assert lanes.queued_ids(Lane.NORMAL) == ["n1", "n3"]
    assert not lanes.is_queued("n2") and lanes.is_queued("n3")


def test_lanes_depths_count_each_lane_when_jobs_are_queued() -> None:
    lanes = _lanes(("b1", Lane.BULK), ("b2", Lane.BULK), ("i1", Lane.INTERACTIVE))

    assert lanes.depths() == {Lane.INTERACTIVE: 1, Lane.NORMAL: 0, Lane.BULK: 2}


def test_lanes_oldest_ages_report_the_head_wait_when_lanes_hold_jobs() -> None:
    lanes = _lanes(("n1", Lane.NORMAL), ("n2", Lane.NORMAL))  # queued at 100 and 101
    lanes.push_front("n0", Lane.NORMAL, 90.0)

    assert lanes.oldest_ages(now=120.0) == {"interactive": 0.0, "normal": 30.0, "bulk": 0.0}
    assert lanes.oldest_ages(now=80.0)["normal"] == 0.0  # clock behind: never negative


def test_lanes_lease_records_the_worker_and_deadline_when_jobs_are_taken() -> None:
    lanes = _lanes(("n1", Lane.NORMAL), ("n2", Lane.NORMAL))

    taken = lanes.lease(1, "w1", deadline=500.0)

    assert taken == [Queued("n1", Lane.NORMAL, 100.0)]
    lease = lanes.lease_of("n1")
    assert lease is not None and (lease.worker_id, lease.deadline) == ("w1", 500.0)
    assert lanes.leased() == 1 and lanes.held_by("w1") == ["n1"] and lanes.held_by("w2") == []


def test_lanes_give_back_restores_order_and_age_when_a_lease_is_undone() -> None:
    lanes = _lanes(("i1", Lane.INTERACTIVE), ("n1", Lane.NORMAL), ("n2", Lane.NORMAL))
    lanes.push("n3", Lane.NORMAL, 150.0)
    taken = lanes.lease(3, "w1", deadline=500.0)

    lanes.give_back(taken)

    assert lanes.queued_ids(Lane.INTERACTIVE) == ["i1"]
    assert lanes.queued_ids(Lane.NORMAL) == ["n1", "n2", "n3"]
    assert lanes.leased() == 0
    assert lanes.oldest_ages(now=200.0)["normal"] == 99.0  # n1 keeps its time, 101


def test_lanes_expired_lists_only_the_passed_deadlines_when_checked() -> None:
    lanes = Lanes()
    lanes.hold(["a"], "w1", deadline=10.0)
    lanes.hold(["b"], None, deadline=20.0)
    lanes.hold(["c"], "w2", deadline=30.0)

    assert lanes.expired(now=20.0) == {"a": "w1", "b": None}
    assert lanes.expired(now=5.0) == {}


def test_lanes_extend_claims_an_ownerless_lease_when_a_worker_heartbeats_it() -> None:
    lanes = Lanes()
    lanes.hold(["rebuilt"], None, deadline=10.0)
    lanes.hold(["theirs"], "w2", deadline=10.0)

    extended = lanes.extend("w1", ["rebuilt", "theirs", "unknown"], deadline=99.0)

    assert extended == 1
    rebuilt, theirs = lanes.lease_of("rebuilt"), lanes.lease_of("theirs")
    assert rebuilt is not None and (rebuilt.worker_id, rebuilt.deadline) == ("w1", 99.0)
    assert theirs is not None and (theirs.worker_id, theirs.deadline) == ("w2", 10.0)


def test_lanes_drop_lease_returns_the_lease_when_it_was_held() -> None:
    lanes = Lanes()
    lanes.hold(["a"], "w1", deadline=10.0)

    dropped = lanes.drop_lease("a")

    assert dropped is not None and dropped.worker_id == "w1"
    assert lanes.drop_lease("a") is None and lanes.leased() == 0


def test_lanes_drop_lease_if_keeps_the_lease_when_the_token_is_an_older_one() -> None:
    lanes = Lanes()
    lanes.hold(["a"], "w2", deadline=10.0)
    lanes.set_token("a", 2)

    assert lanes.drop_lease_if("a", 1) is None
    held = lanes.lease_of("a")
    assert held is not None and held.worker_id == "w2" and held.token == 2
    assert lanes.drop_lease_if("a", 2) is not None and lanes.leased() == 0


def test_lanes_pop_takes_a_solo_job_alone_when_it_is_at_the_head() -> None:
    lanes = _lanes(("a", Lane.NORMAL), ("b", Lane.NORMAL))
    lanes.push_front("s", Lane.NORMAL, 99.0, solo=True)

    assert [t.job_id for t in lanes.pop(3)] == ["s"]
    assert [t.job_id for t in lanes.pop(3)] == ["a", "b"]


def test_lanes_pop_stops_before_a_solo_job_when_the_batch_already_holds_others() -> None:
    lanes = _lanes(("i1", Lane.INTERACTIVE))
    lanes.push("s", Lane.NORMAL, 100.0, solo=True)
    lanes.push("n1", Lane.NORMAL, 101.0)

    assert [[t.job_id for t in lanes.pop(5)] for _ in range(3)] == [["i1"], ["s"], ["n1"]]


def test_lanes_give_back_keeps_a_job_solo_when_its_lease_is_undone() -> None:
    lanes = _lanes(("n1", Lane.NORMAL))
    lanes.push_front("s", Lane.NORMAL, 99.0, solo=True)
    taken = lanes.lease(5, "w1", deadline=10.0)
    assert [t.job_id for t in taken] == ["s"]

    lanes.give_back(taken)

    assert [t.job_id for t in lanes.pop(5)] == ["s"]
    assert [t.job_id for t in lanes.pop(5)] == ["n1"]


def test_lanes_forget_the_solo_mark_when_the_job_leaves_the_lanes() -> None:
    lanes = _lanes(("n1", Lane.NORMAL))
    lanes.push("s", Lane.NORMAL, 100.0, solo=True)
    lanes.discard("s")
    lanes.push("s", Lane.NORMAL, 101.0)

    assert [t.job_id for t in lanes.pop(5)] == ["n1", "s"]
