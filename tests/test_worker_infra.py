"""Unit: the worker's side of infrastructure faults (invariant 10), without a Ray cluster.

The worker's methods run on a stand-in object holding only what they touch, as in
tests/test_queue_rules.py's ack test: the queue and the pipeline are recorded, not run.
"""

from __future__ import annotations

import hashlib
import threading
from types import MethodType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from raylens.actors import worker as worker_module
from raylens.actors.handles import Backoff, Pause
from raylens.cluster.jobs import Failure, Job, JobSpec, JobState, SourceKind
from raylens.cluster.lease_size import LeaseSize
from raylens.cluster.pipeline import Batch, BatchOutcome
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, IndexUnavailable

from _ports import free_port

Worker = worker_module.Worker


def leased(n: int) -> Job:
    sha = hashlib.sha256(f"w-{n}".encode()).hexdigest()
    spec = JobSpec(source_kind=SourceKind.UPLOAD, source=sha, sha256=sha, size_bytes=1)
    return Job.new(spec, "m").moved(JobState.RUNNING, attempts=1, leases=1)


def outcome(done: list[Any], failures: list[Failure]) -> BatchOutcome:
    return BatchOutcome(done, failures, 0.0, 0.0, 0.0, True, False, True, 0, 0)


class RecordingPipeline:
    def __init__(self, *outcomes: BatchOutcome) -> None:
        self.outcomes = list(outcomes)
        self.ran: list[list[str]] = []

    def compute(self, batch: Batch) -> Any:
        self.ran.append([j.id for j in batch.jobs])
        return SimpleNamespace(infer_s=0.0, faces_s=0.0)  # what write() reads of a Computed

    def write(self, computed: Any) -> BatchOutcome:
        return self.outcomes.pop(0)


def stub_worker(pipeline: RecordingPipeline, probe: Any) -> Any:
    acks: list[tuple[Any, ...]] = []
    w = SimpleNamespace(
        pipeline=pipeline,
        pause=Pause(Backoff(first_s=0.01, cap_s=0.01)),
        stats=worker_module.WorkerStats(),
        index=SimpleNamespace(probe=probe),
        payloads=SimpleNamespace(exists=lambda key: False),
        _held=set(),
        _leases=0,
        _held_changed=threading.Condition(),
        _ack=lambda done, failures, tokens: acks.append((done, failures, tokens)) or {},
        _record=lambda batch, out: None,
        overlap=True,
        lease_size=LeaseSize(Settings()),
        acks=acks,
    )
    for name in ("_process", "_compute", "_write", "_release_held", "_probe_for"):
        setattr(w, name, MethodType(getattr(Worker, name), w))
    return w


def test_worker_acks_index_failures_as_infra_and_pauses_when_the_index_is_down() -> None:
    a, b = leased(1), leased(2)
    down = [Failure(j.id, ErrorCode.INDEX_UNAVAILABLE, "index actor unavailable", True, infra=True)
            for j in (a, b)]  # fmt: skip
    pipeline = RecordingPipeline(outcome([], down))
    probes: list[int] = []
    w = stub_worker(pipeline, probe=lambda: probes.append(1))
    w._held, w._leases = {a.id, b.id}, 1

    w._process(Batch([a, b], [], 0.0))

    ((done, failures, tokens),) = w.acks
    assert done == [] and all(f.infra for f in failures)
    assert tokens == {a.id: a.lease_token, b.id: b.lease_token}
    assert w.pause.down == (ErrorCode.INDEX_UNAVAILABLE, "index actor unavailable")
    assert w._held == set()
    # The next batch comes while paused: given back unstarted, the pipeline never runs it.
    c = leased(3)
    w._leases = 1
    w._process(Batch([c], [], 0.0))
    assert pipeline.ran == [[a.id, b.id]]
    (_, back, _) = w.acks[1]
    assert [(f.job_id, f.code, f.infra) for f in back] == [
        (c.id, ErrorCode.INDEX_UNAVAILABLE, True)
    ]
    assert w.stats.infra_released == 1
    # The probe answers: the pause lifts and work resumes.
    w.pause.wait(lambda delay: False)
    assert probes == [1] and w.pause.down is None


def test_worker_probes_the_payload_store_when_a_store_failure_paused_it() -> None:
    w = stub_worker(RecordingPipeline(), probe=lambda: None)

    probe = w._probe_for(ErrorCode.STORE_UNAVAILABLE)

    assert probe() is False  # a read of the payload store, not of the index


def test_server_index_lets_the_worker_start_when_the_qdrant_server_is_down(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path, redis_url=None, qdrant_url=f"http://127.0.0.1:{free_port()}",
        qdrant_timeout_s=1,
    )  # fmt: skip

    index = worker_module.ServerIndex(settings, dim=8)  # the worker's constructor builds this

    with pytest.raises(IndexUnavailable):
        index.upsert(["00000000-0000-0000-0000-000000000001"], np.ones((1, 8)), [{}])
    with pytest.raises(IndexUnavailable):
        index.probe()


def test_worker_removes_the_points_of_jobs_deleted_while_it_ran_when_its_ack_says_so() -> None:
    a = leased(1)
    w = stub_worker(RecordingPipeline(outcome([(a.id, {})], [])), probe=lambda: None)
    removed: list[list[str]] = []
    w.index = SimpleNamespace(delete_content=lambda shas: removed.append(list(shas)) or {})
    w._ack = lambda done, failures, tokens: {"done": 0, "purge": [a.sha256]}
    w._purge = MethodType(Worker._purge, w)
    w._held = {a.id}

    w._process(Batch([a], [], 0.0))

    assert removed == [[a.sha256]] and w._held == set()
    # An index that fails the removal only logs: the batch is settled all the same.
    w.index = SimpleNamespace(
        delete_content=lambda shas: (_ for _ in ()).throw(IndexUnavailable("x"))
    )
    w.pipeline = RecordingPipeline(outcome([(a.id, {})], []))
    w._held = {a.id}
    w._process(Batch([a], [], 0.0))
    assert w._held == set()


def test_remote_index_passes_the_index_actors_own_errors_through_and_an_outage_as_such() -> None:
    from raylens.errors import ModelMismatch

    def raising(exc: BaseException) -> Any:
        def call(make: Any, **kw: Any) -> Any:
            raise exc

        return SimpleNamespace(call=call)

    index = worker_module.RemoteIndex.__new__(worker_module.RemoteIndex)
    index.settings = SimpleNamespace(qdrant_collection="images")
    index.actor = raising(ModelMismatch("collection of another model"))
    with pytest.raises(ModelMismatch):  # a setting to fix, not an outage to wait out
        index.upsert(["p"], np.zeros((1, 2), np.float32), [{}])
    index.actor = raising(ConnectionError("actor gone"))
    with pytest.raises(IndexUnavailable, match="actor gone"):
        index.delete_content(["a" * 64])


def test_a_worker_measures_each_batch_so_its_leases_follow_its_speed() -> None:
    """_process feeds the lease sizer: a batch of 4 jobs in (near) no time is a fast worker,
    whose next lease asks for lease_max_jobs, not one model batch."""
    jobs = [leased(i) for i in range(4)]
    pipeline = RecordingPipeline(outcome([(j.id, {}) for j in jobs], []))
    w = stub_worker(pipeline, probe=lambda: None)
    w.lease_size = LeaseSize(Settings(max_batch_size=4, lease_max_jobs=64, lease_target_s=1.0))
    assert w.lease_size.next() == 4  # nothing measured yet: one model batch
    w._process(Batch(jobs, [None] * 4, decode_s=0.001))
    assert w.lease_size.next() == 64


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_a_worker_holds_at_most_prefetch_plus_two_leases_and_writes_while_the_model_runs(
    prefetch: int,
) -> None:
    """What a killed worker leaves to redo is what it holds. The fetch loop leases the next
    batch only when it can go straight into a free ready slot and fewer than prefetch + 2
    leases are held (decoded ahead, one in the model, one being written); with prefetch 0 only
    when nothing is held. The writer upserts and acks one batch while the model computes the
    next, so the model never waits for those round trips (issue 13): with a model and a write
    equally slow, the two overlap and the bound is reached."""
    import queue as queue_module
    import time

    per_lease, leases_wanted = 4, 12
    lock = threading.Lock()
    held_at_lease: list[int] = []
    spans: list[tuple[str, float, float]] = []
    counter = iter(range(1_000_000))
    w: Any = SimpleNamespace(
        settings=Settings(prefetch_batches=prefetch),
        pause=Pause(Backoff(first_s=0.01, cap_s=0.01)),
        stats=worker_module.WorkerStats(),
        _stop=threading.Event(),
        _draining=threading.Event(),
        _infer_done=threading.Event(),
        _held=set(),
        _leases=0,
        _held_lock=lock,
        _held_changed=threading.Condition(lock),
        _ready=queue_module.Queue(maxsize=max(1, prefetch)),
        _computed=queue_module.Queue(maxsize=1),
        _decode_map=None,
        pipeline=SimpleNamespace(decode_batch=lambda jobs, _map: Batch(jobs, [], 0.0)),
    )

    def lease() -> list[Job]:
        if len(held_at_lease) >= leases_wanted:
            w._draining.set()
            return []
        with lock:
            held_at_lease.append(len(w._held) + per_lease)  # held once this lease lands
        return [leased(next(counter)) for _ in range(per_lease)]

    def timed(stage: str) -> None:
        t0 = time.monotonic()
        time.sleep(0.03)  # slower than leasing and decoding
        spans.append((stage, t0, time.monotonic()))

    def compute(batch: Batch) -> Any:
        timed("model")
        return batch

    def write(batch: Batch, computed: Any) -> None:
        timed("write")
        w._release_held(batch)

    w._lease, w._compute, w._write = lease, compute, write
    for name in (
        "_fetch_loop", "_infer_loop", "_write_loop", "_wait_held", "_room_for_next",
        "_release_held",
    ):  # fmt: skip
        setattr(w, name, MethodType(getattr(Worker, name), w))
    loops = [threading.Thread(target=f, daemon=True) for f in (w._infer_loop, w._write_loop)]
    fetch = threading.Thread(target=w._fetch_loop, daemon=True)
    for t in [fetch, *loops]:
        t.start()
    fetch.join(timeout=30)
    deadline = time.monotonic() + 30
    while (w._held or not w._ready.empty()) and time.monotonic() < deadline:
        time.sleep(0.01)
    w._stop.set()
    for t in loops:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in [fetch, *loops]), "a loop did not end after stop()"
    assert not w._held and w._leases == 0, "the loops did not get through the leases"
    assert len(held_at_lease) == leases_wanted
    bound = 1 if prefetch == 0 else prefetch + 2
    assert max(held_at_lease) == bound * per_lease  # the overlap is still there
    models = [(a, b) for stage, a, b in spans if stage == "model"]
    writes = [(a, b) for stage, a, b in spans if stage == "write"]
    overlapped = any(m0 < w1 and w0 < m1 for m0, m1 in models for w0, w1 in writes)
    assert overlapped is (prefetch > 0)  # prefetch 0: one lease at a time, nothing overlaps
