"""Unit: the worker's batch pipeline without Ray, on the tiny OpenCLIP model and real payloads."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from raylens.cluster import model_setup
from raylens.cluster.faults import FaultDrill, NoFaults, fault_injector
from raylens.cluster.index import point_id
from raylens.cluster.jobs import Failure, Job, JobSpec, Pipeline, SourceKind
from raylens.cluster.payloads_fs import FsPayloadStore
from raylens.cluster.pipeline import BatchPipeline
from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, IndexUnavailable
from raylens.models.clip import ClipEmbedder

from _images import image_bytes


class RecordingIndex:
    """An in-memory stand-in for the vector index: remembers every upsert call."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[dict],
        collection: str | None = None,
    ) -> int:
        if self.fail is not None:
            raise self.fail
        self.calls.append(
            {
                "ids": list(ids),
                "vectors": vectors,
                "payloads": list(payloads),
                "collection": collection,
            }
        )
        return len(ids)

    def points(self, collection: str = "raylens_images") -> dict[str, dict]:
        """The points upserted into a collection (default: the image collection, which the
        pipeline names explicitly: its model's own)."""
        return {
            pid: payload
            for call in self.calls
            if call["collection"] == collection
            for pid, payload in zip(call["ids"], call["payloads"])
        }


def _settings(tmp_path: Path, tiny_model: Any, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        clip_model=tiny_model.name,
        clip_pretrained=str(tiny_model.checkpoint_path),
        clip_model_config=tiny_model.config_path,
        worker_num_cpus=1,
        max_batch_size=4,
        faces_enabled=False,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def embedder(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> ClipEmbedder:
    """Built the way a worker builds it, once for the module."""
    settings = _settings(tmp_path_factory.mktemp("embedder"), tiny_model)
    return model_setup.build_embedder(settings, warmup=False)


@pytest.fixture
def payloads(tmp_path: Path) -> FsPayloadStore:
    return FsPayloadStore(tmp_path / "payloads")


def _pipeline(
    tmp_path: Path, tiny_model: Any, embedder: ClipEmbedder, payloads: FsPayloadStore, **kw: Any
) -> tuple[BatchPipeline, RecordingIndex]:
    index: RecordingIndex = kw.pop("index", None) or RecordingIndex()
    settings = _settings(tmp_path, tiny_model, **kw)
    pipe = BatchPipeline(settings, embedder, payloads, index, worker_name="w1", worker_id="w1:1")
    return pipe, index


def _upload(
    payloads: FsPayloadStore,
    embedder: ClipEmbedder,
    data: bytes,
    pipeline: Pipeline = Pipeline.EMBED,
) -> Job:
    sha = hashlib.sha256(data).hexdigest()
    key = payloads.put(data, sha)
    spec = JobSpec(
        source_kind=SourceKind.UPLOAD,
        source=key,
        sha256=sha,
        size_bytes=len(data),
        pipeline=pipeline,
        name=f"{sha[:8]}.jpg",
    )
    return Job.new(spec, embedder.model_id)


def _mp4(frames: int = 20, fps: int = 10) -> bytes:
    """A two-scene clip (black then white), encoded by PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            rgb = np.full((48, 64, 3), 0 if i < frames // 2 else 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


# --- batch isolation ------------------------------------------------------------------------


def test_pipeline_fails_only_the_bad_inputs_when_a_batch_holds_poison(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, index = _pipeline(tmp_path, tiny_model, embedder, payloads)
    good = [_upload(payloads, embedder, image_bytes(seed)) for seed in range(5)]
    truncated = _upload(payloads, embedder, image_bytes(99, (200, 150))[:400])
    garbage = _upload(payloads, embedder, b"<html>not an image</html>\n" * 20)
    jobs = [good[0], truncated, *good[1:3], garbage, *good[3:]]

    out = pipe.run(jobs)

    assert sorted(job_id for job_id, _ in out.done) == sorted(j.id for j in good)
    codes = {f.job_id: f.code for f in out.failures}
    assert codes == {
        truncated.id: ErrorCode.TRUNCATED_IMAGE,
        garbage.id: ErrorCode.UNSUPPORTED_FORMAT,
    }
    assert not any(f.retryable for f in out.failures)  # bad inputs never come back
    assert len(index.points()) == len(good)


def test_pipeline_fails_a_missing_path_alone_when_its_file_is_gone(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(7))
    present = Job.new(
        JobSpec(
            source_kind=SourceKind.PATH,
            source=str(photo),
            sha256=hashlib.sha256(photo.read_bytes()).hexdigest(),
            size_bytes=photo.stat().st_size,
            pipeline=Pipeline.EMBED,
        ),
        embedder.model_id,
    )
    gone = present.model_copy(update={"id": "gone", "source": str(tmp_path / "gone.jpg")})

    out = pipe.run([present, gone])

    assert [job_id for job_id, _ in out.done] == [present.id]
    assert [(f.job_id, f.code) for f in out.failures] == [("gone", ErrorCode.SOURCE_MISSING)]


# --- what is written ------------------------------------------------------------------------


def test_pipeline_writes_idempotent_point_ids_when_a_job_is_done(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, index = _pipeline(tmp_path, tiny_model, embedder, payloads)
    jobs = [_upload(payloads, embedder, image_bytes(seed)) for seed in range(3)]

    first = dict(pipe.run(jobs).done)
    again = dict(pipe.run(jobs).done)  # a retry: the same points, overwritten

    for job in jobs:
        pid = point_id(job.sha256, embedder.model_id, "image")
        assert first[job.id]["point_id"] == again[job.id]["point_id"] == pid
        assert first[job.id] | {"worker": None} == {
            "model_id": embedder.model_id,
            "worker": None,
            "media": "image",
            "width": 96,
            "height": 64,
            "format": "jpeg",
            "point_id": pid,
            "dim": embedder.dim,
        }
    assert [c["ids"] for c in index.calls[:1]] == [c["ids"] for c in index.calls[1:]]
    payload = index.points()[point_id(jobs[0].sha256, embedder.model_id)]
    assert payload == {
        "job_id": jobs[0].id,
        "source": jobs[0].source,
        "source_kind": "upload",
        "name": jobs[0].name,
        "sha256": jobs[0].sha256,
        "model_id": embedder.model_id,
        "created_at": payload["created_at"],
    }
    assert index.calls[0]["vectors"].shape == (3, embedder.dim)


def test_pipeline_writes_one_point_per_sampled_frame_when_the_job_is_a_video(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, index = _pipeline(tmp_path, tiny_model, embedder, payloads)
    video = _upload(payloads, embedder, _mp4())

    out = pipe.run([video])

    assert out.failures == []
    ((job_id, result),) = out.done
    assert result["media"] == "video" and result["frames"] == out.frames >= 1
    points = index.points()
    assert len(points) == result["frames"]
    for pid, payload in points.items():
        assert pid == point_id(video.sha256, embedder.model_id, f"frame:{payload['frame']}")
        assert payload["video_id"] == video.id and payload["media"] == "video"
        assert {"timestamp_s", "sampled_by"} <= payload.keys()


def test_pipeline_fails_faces_only_jobs_when_face_models_are_off(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads)
    faces_only = _upload(payloads, embedder, image_bytes(1), Pipeline.FACES)
    both = _upload(payloads, embedder, image_bytes(2), Pipeline.BOTH)

    out = pipe.run([faces_only, both])

    assert [(f.job_id, f.code, f.retryable) for f in out.failures] == [
        (faces_only.id, ErrorCode.MODEL_LOAD_FAILED, False)
    ]
    ((job_id, result),) = out.done
    assert job_id == both.id and result["faces_found"] is None


def test_pipeline_retries_every_good_job_when_the_index_is_down(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    down = RecordingIndex(fail=IndexUnavailable("index actor unavailable: test"))
    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads, index=down)
    jobs = [_upload(payloads, embedder, image_bytes(seed)) for seed in range(2)]
    bad = _upload(payloads, embedder, b"")

    out = pipe.run([*jobs, bad])

    assert out.done == [] and out.faces == 0
    by_id = {f.job_id: f for f in out.failures}
    assert by_id[bad.id].code is ErrorCode.EMPTY_INPUT and not by_id[bad.id].retryable
    assert not by_id[bad.id].infra
    for job in jobs:
        assert by_id[job.id].code is ErrorCode.INDEX_UNAVAILABLE and by_id[job.id].retryable
        assert by_id[job.id].infra  # not the job's fault: re-queued with no attempt counted


def test_pipeline_reports_no_timing_for_a_stage_when_it_had_no_work(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads)

    out = pipe.run([_upload(payloads, embedder, image_bytes(3))])

    stages = out.stage_seconds()
    assert stages["faces"] is None  # faces are off: the stage did not run
    assert stages["infer"] is not None and stages["write"] is not None


# --- fault drills ---------------------------------------------------------------------------


def test_fault_injector_is_a_no_op_when_unset(tmp_path, tiny_model, embedder, payloads) -> None:
    settings = _settings(tmp_path, tiny_model)
    assert settings.fault_inject is None
    injector = fault_injector(settings, "w1", "w1:1")

    def step(items: list) -> list:
        return items

    assert type(injector) is NoFaults and not injector.active
    assert injector.wrap(step, lambda items: []) is step
    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads)
    assert pipe._embed_step == pipe._embed_items  # the plain bound method: no check per call
    assert injector.wrap_decode(step) is step
    assert pipe._decode_step == pipe.reader.load_and_decode


def test_fault_drill_fails_only_the_poisoned_content_when_poison_is_set(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    jobs = [_upload(payloads, embedder, image_bytes(seed)) for seed in range(4)]
    poisoned = jobs[2]
    pipe, _ = _pipeline(
        tmp_path, tiny_model, embedder, payloads, fault_inject=f"poison:{poisoned.sha256[:16]}"
    )
    assert isinstance(pipe.faults, FaultDrill)

    out = pipe.run(jobs)

    assert sorted(j for j, _ in out.done) == sorted(j.id for j in jobs if j is not poisoned)
    (failure,) = out.failures
    assert isinstance(failure, Failure)
    assert (failure.job_id, failure.code, failure.retryable) == (
        poisoned.id,
        ErrorCode.MODEL_ERROR,
        True,
    )
    assert "injected fault" in failure.message


def test_fault_drill_hangs_once_per_worker_when_hang_once_is_set(tmp_path) -> None:
    drill = FaultDrill("hang_once:0@w1", data_dir=tmp_path, worker_name="w1", worker_id="w1:1")

    drill.before_embed(["ab"])
    drill.before_embed(["ab"])

    assert (tmp_path / "fault-hang-once-w1").read_text() == "w1:1"
    other = FaultDrill("hang_once:0@w2", data_dir=tmp_path, worker_name="w1", worker_id="w1:1")
    other.before_embed(["ab"])
    assert not (tmp_path / "fault-hang-once-w2").exists()  # another worker's drill


def test_fault_drill_kills_the_process_when_it_decodes_the_crash_content(
    tmp_path, tiny_model, embedder, payloads, monkeypatch
) -> None:
    from raylens.cluster import faults

    class Crashed(BaseException):
        pass

    def crash() -> None:
        raise Crashed  # instead of SIGSEGV to this test process

    monkeypatch.setattr(faults, "crash_process", crash)
    jobs = [_upload(payloads, embedder, image_bytes(seed)) for seed in range(3)]
    pipe, _ = _pipeline(
        tmp_path, tiny_model, embedder, payloads, fault_inject=f"crash:{jobs[1].sha256[:16]}"
    )

    assert pipe.run([jobs[0], jobs[2]]).failures == []
    with pytest.raises(Crashed):
        pipe.run(jobs)


def test_pipeline_reports_progress_per_chunk_so_a_long_video_is_not_a_stall(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    """Issue 14, item 5: a long video was one step with no progress between batches, so it
    outlasted the stall timeout and the supervisor replaced the worker in a loop. Now the
    decode reports every 64 frames and each embedding chunk (max_batch_size) reports too."""
    from raylens.media.video import PROGRESS_FRAMES

    frames = 4 * PROGRESS_FRAMES + 10
    settings = _settings(tmp_path, tiny_model, video_every_s=0.1, video_max_frames=1000)
    calls: list[float] = []
    pipe = BatchPipeline(
        settings, embedder, payloads, RecordingIndex(), worker_name="w1", worker_id="w1:1",
        progress=lambda: calls.append(time.perf_counter()),
    )  # fmt: skip
    video = _upload(payloads, embedder, _mp4(frames=frames, fps=10))
    batch = pipe.decode_batch([video])
    decoded = len(calls)
    assert decoded >= frames // PROGRESS_FRAMES  # while frames were decoded, not only after
    out = pipe.process(batch)
    assert out.failures == [] and out.frames == frames
    chunks = -(-frames // settings.max_batch_size)
    assert len(calls) - decoded >= chunks  # one call per embedding chunk of max_batch_size


# --- decode overlap -------------------------------------------------------------------------


class _TimedEmbedder:
    """The real embedder, with each embed_images call's span recorded and stretched."""

    def __init__(self, inner: ClipEmbedder, spans: list[tuple[str, float, float]]) -> None:
        self._inner, self._spans = inner, spans

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_images(self, pixels: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._inner.embed_images(pixels)
        time.sleep(0.15)
        self._spans.append(("infer", t0, time.perf_counter()))
        return out


def _decode_and_infer_at_once(
    tmp_path: Path, tiny_model: Any, embedder: ClipEmbedder, payloads: FsPayloadStore, mode: str
) -> tuple[BatchPipeline, list[tuple[str, float, float]]]:
    """The worker's two threads: one decodes batch 2 while the other processes batch 1."""
    import threading

    spans: list[tuple[str, float, float]] = []
    settings = _settings(tmp_path, tiny_model, overlap_decode=mode)
    pipe = BatchPipeline(
        settings, _TimedEmbedder(embedder, spans), payloads, RecordingIndex(),  # type: ignore[arg-type]
        worker_name="w1", worker_id="w1:1",
    )  # fmt: skip
    first = pipe.decode_batch([_upload(payloads, embedder, image_bytes(1))])
    second = [_upload(payloads, embedder, image_bytes(2))]

    def slow_map(fn: Any, jobs: list[Job]) -> list[Any]:
        t0 = time.perf_counter()
        out = list(map(fn, jobs))
        time.sleep(0.15)
        spans.append(("decode", t0, time.perf_counter()))
        return out

    go = threading.Barrier(2)
    threads = [
        threading.Thread(target=lambda: (go.wait(), pipe.process(first))),
        threading.Thread(target=lambda: (go.wait(), pipe.decode_batch(second, slow_map))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return pipe, spans


def _overlapped(spans: list[tuple[str, float, float]]) -> bool:
    ((_, d0, d1),) = [s for s in spans if s[0] == "decode"]
    ((_, i0, i1),) = [s for s in spans if s[0] == "infer"]
    return d0 < i1 and i0 < d1


def test_pipeline_takes_turns_decoding_and_inferring_when_overlap_is_auto_on_cpu(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    """On a CPU model the default (auto) does not overlap: a decode thread beside the forward
    pass slowed the forward pass more than it saved (issue 16: about 7% on the ViT-B-32 row).
    The two stages take turns, whichever thread runs them."""
    assert Settings.model_fields["overlap_decode"].default == "auto"
    pipe, spans = _decode_and_infer_at_once(tmp_path, tiny_model, embedder, payloads, "auto")
    assert embedder.device == "cpu" and pipe.overlap is False
    assert len(spans) == 2 and not _overlapped(spans)


def test_pipeline_decodes_during_inference_when_overlap_is_on(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    pipe, spans = _decode_and_infer_at_once(tmp_path, tiny_model, embedder, payloads, "on")
    assert pipe.overlap is True
    assert len(spans) == 2 and _overlapped(spans)


def test_pipeline_hands_the_write_step_no_pixels_when_the_model_is_done(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    """The worker writes one batch while the model runs the next: the batch being written
    keeps what each picture was (size, format, part), not the pictures themselves."""
    pipe, index = _pipeline(tmp_path, tiny_model, embedder, payloads)
    jobs = [_upload(payloads, embedder, image_bytes(40 + i, (96, 64))) for i in range(3)]
    computed = pipe.compute(pipe.decode_batch(jobs))
    items = [it for _, d in computed.good for it in d.items]
    assert len(items) == 3 and all(it.image.pixels.size == 0 for it in items)
    assert all(it.image.full is None for it in items)
    out = pipe.write(computed)
    assert out.failures == [] and len(index.points()) == 3
    assert all(r["width"] == 96 and r["height"] == 64 for _, r in out.done)


def test_pipeline_times_the_model_inside_its_cpu_turn_and_takes_none_for_no_faces(
    tmp_path, tiny_model, embedder, payloads
) -> None:
    """With decode and model taking turns (CPU), the wait for a decode's turn is neither model
    time nor face time: the worker sizes its leases from these seconds. A batch that asks for
    no faces takes no turn for them."""
    import threading

    pipe, _ = _pipeline(tmp_path, tiny_model, embedder, payloads)
    assert isinstance(pipe.cpu_turn, type(threading.Lock()))
    batch = pipe.decode_batch([_upload(payloads, embedder, image_bytes(7))])
    pipe.compute(batch)  # warm: the first forward pass is slower
    pipe.cpu_turn.acquire()  # a decode holds the turn for 1 s
    threading.Timer(1.0, pipe.cpu_turn.release).start()
    t0 = time.perf_counter()
    computed = pipe.compute(batch)
    wall = time.perf_counter() - t0
    assert wall >= 1.0
    assert computed.infer_s < wall - 0.5, (computed.infer_s, wall)
    assert computed.faces_s == 0.0
