"""Unit: the size of a worker's leases (cluster/lease_size.py) and the decode map of a batch
(cluster/pipeline.pooled_map)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from raylens.cluster.lease_size import LeaseSize
from raylens.cluster.pipeline import pooled_map
from raylens.cluster.settings import Settings


def sizer(**kw: object) -> LeaseSize:
    return LeaseSize(Settings(**{"max_batch_size": 32, "lease_max_jobs": 128, **kw}))


def test_a_fresh_worker_leases_one_model_batch() -> None:
    assert sizer().next() == 32


def test_a_fast_worker_leases_up_to_lease_max_jobs() -> None:
    s = sizer(lease_target_s=0.5)
    s.observe(32, 0.01)  # 3,200 jobs/s: half a second of it is 1,600
    assert s.next() == 128


def test_a_slow_worker_keeps_leases_of_one_model_batch() -> None:
    s = sizer(lease_target_s=0.5)
    s.observe(32, 2.7)  # ViT-B-32 on a CPU: about 12 jobs/s
    assert s.next() == 32


def test_the_lease_covers_about_lease_target_s_of_measured_work() -> None:
    s = sizer(lease_target_s=0.5)
    s.observe(100, 1.0)  # 100 jobs/s
    assert s.next() == 50
    for _ in range(30):  # the worker slows to 80 jobs/s: the size follows, smoothed
        s.observe(80, 1.0)
    assert s.next() == 40


def test_lease_max_jobs_below_one_model_batch_caps_the_lease() -> None:
    s = sizer(lease_max_jobs=8)
    assert s.next() == 8
    s.observe(1000, 0.1)
    assert s.next() == 8


@pytest.mark.parametrize("jobs,seconds", [(0, 1.0), (5, 0.0), (-1, 1.0)])
def test_empty_or_timeless_batches_are_not_measured(jobs: int, seconds: float) -> None:
    s = sizer()
    s.observe(jobs, seconds)
    assert s.rate is None and s.next() == 32


def test_lease_settings_are_bounded() -> None:
    with pytest.raises(ValueError):
        Settings(lease_max_jobs=0)
    with pytest.raises(ValueError):
        Settings(lease_target_s=0)


def test_pooled_map_keeps_input_order_with_one_future_per_thread() -> None:
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *a, **kw):  # type: ignore[no-untyped-def, override]
            CountingPool.submitted += 1
            return super().submit(*a, **kw)

    with CountingPool(3) as pool:
        out = pooled_map(pool, 3)(lambda x: x * x, list(range(100)))
    assert out == [x * x for x in range(100)]
    assert CountingPool.submitted == 3


def test_pooled_map_lets_other_threads_go_on_while_one_input_is_slow() -> None:
    """One slow input holds one thread; the other thread decodes everything else meanwhile."""
    seen: dict[int, str] = {}

    def work(x: int) -> int:
        if x == 0:
            time.sleep(0.5)
        seen[x] = threading.current_thread().name
        return x

    with ThreadPoolExecutor(2, "t") as pool:
        t0 = time.monotonic()
        out = pooled_map(pool, 2)(work, list(range(20)))
        elapsed = time.monotonic() - t0
    assert out == list(range(20))
    assert len({seen[x] for x in range(1, 20)} - {seen[0]}) == 1  # all done by the other thread
    assert elapsed < 5  # not 20 slow turns; a loose bound, the machine is shared


def test_pooled_map_with_one_thread_or_one_input_runs_in_the_caller() -> None:
    with ThreadPoolExecutor(1) as pool:
        caller = threading.current_thread().name
        assert pooled_map(pool, 1)(lambda _: threading.current_thread().name, [1, 2]) == [
            caller,
            caller,
        ]
        assert pooled_map(pool, 4)(lambda _: threading.current_thread().name, [1]) == [caller]
