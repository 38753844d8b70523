"""Re-embed with a new model and switch, on the real parts (local Ray, SQLite, the embedded
engine, two tiny OpenCLIP checkpoints of different weights; photos by path, uploads and a
video): an interrupted reindex resumes, images whose bytes are gone are listed, the switch
happens under a running search load with no failed search, and afterwards new images,
searches and deletes all follow the new model."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from test_decode_memory import _video as small_video

from raylens.actors import ingest, launch
from raylens.actors.api import ClusterAPI
from raylens.actors.reindex import reindex
from raylens.cli.commands import cmd_reindex
from raylens.cluster.active_model import collection_for
from raylens.cluster.index import point_id
from raylens.cluster.jobs import JobState, Lane, Pipeline
from raylens.cluster.settings import Settings
from raylens.errors import ModelMismatch
from raylens.models.model_id import model_id_for

from _images import image_bytes
from _system_fixtures import tiny_settings, wait_terminal
from _tiny_clip import write_tiny_model

pytestmark = pytest.mark.integration

N_FILES = 14


@pytest.fixture(scope="module")
def system(
    ray_cluster: None, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Path, Any]]:
    root = tmp_path_factory.mktemp("reindex")
    settings = tiny_settings(root / "data", tiny_model, faces_enabled=False)
    launch.start(settings)
    folder = root / "photos"
    folder.mkdir()
    for i in range(N_FILES):
        (folder / f"p{i:02d}.jpg").write_bytes(image_bytes(9100 + i, (72, 56)))
    model_b = write_tiny_model(root / "model-b", seed=4321)  # same architecture, other weights
    yield settings, folder, model_b
    launch.stop(settings, timeout_s=5)


def index_call(settings: Settings, method: str, *args: Any) -> Any:
    return ray.get(getattr(launch.index_handle(settings), method).remote(*args))


class SearchLoad:
    """Text searches in a loop on a thread of its own (its own event loop and ClusterAPI),
    counting failures and the model ids of the hits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.models: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def loop() -> None:
            api = ClusterAPI(self.settings, io_threads=2)
            try:
                while not self.stop.is_set():
                    try:
                        out = await api.search(text="a photo", top_k=3)
                        self.ok += 1
                        for hit in out["hits"]:
                            self.models[hit["payload"]["model_id"]] += 1
                    except Exception as exc:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
            finally:
                api.close()

        asyncio.run(loop())

    def __enter__(self) -> SearchLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_reindex_resumes_lists_lost_bytes_and_switches_under_search_load(
    system: tuple[Settings, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, folder, model_b = system
    summary = ingest.ingest(
        settings, folder, launch.queue_handle(settings), Lane.BULK, progress=False,
        pipeline=Pipeline.EMBED,
    )  # fmt: skip
    assert summary.done == N_FILES, summary
    api = ClusterAPI(settings)
    uploads = asyncio.run(
        api.submit_uploads([(f"u{i}.jpg", image_bytes(9200 + i, (64, 64))) for i in range(3)])
    )
    [video] = asyncio.run(api.submit_uploads([("clip.mp4", small_video())]))
    jobs = wait_terminal(launch.queue_handle(settings), [u["id"] for u in [*uploads, video]])
    api.close()
    frames = jobs[-1].result["frames"]
    assert jobs[-1].state is JobState.DONE and frames >= 2, jobs[-1]
    gone = folder / "p03.jpg"
    gone.unlink()  # its bytes are no longer anywhere: reindex must list it, not drop it
    old_id = model_id_for(settings.clip_model, settings.clip_pretrained)
    new_id = model_id_for(model_b.name, str(model_b.checkpoint_path))
    new_collection = collection_for(settings, new_id)
    assert new_id != old_id

    first = reindex(
        settings, model_b.name, str(model_b.checkpoint_path), str(model_b.config_path), limit=5
    )

    assert first["embedded"] + len(first["unavailable"]) == 5, first
    assert not first["complete"] and not first["switched"]
    frame_ids = [point_id(video["sha256"], new_id, f"frame:{k}") for k in range(frames)]
    video_first = len(index_call(settings, "existing", frame_ids, new_collection)) == frames
    extra_frames = frames - 1 if video_first else 0  # the video (newest) may be among the 5
    assert index_call(settings, "count", new_collection) == first["embedded"] + extra_frames
    assert launch.active_model(settings).model_id == old_id  # nothing switched yet

    with SearchLoad(settings) as load:
        time.sleep(1.0)
        second = reindex(
            settings, model_b.name, str(model_b.checkpoint_path), str(model_b.config_path)
        )
        seen_before = load.ok
        deadline = time.monotonic() + 30
        while load.models[new_id] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)

    total = N_FILES + len(uploads) + 1  # the video is one job
    assert second["skipped"] == first["embedded"], second
    assert first["embedded"] + second["embedded"] == total - 1, second
    [lost] = first["unavailable"] + second["unavailable"]
    assert lost["source"] == str(gone) and lost["code"] == "source_missing", lost
    assert second["complete"] and second["switched"], second
    assert second["points"] == total - 2 + frames  # one point per image, one per frame
    assert len(index_call(settings, "existing", frame_ids, new_collection)) == frames
    assert [step["old"] for step in second["switch"]["rolled"]] == ["raylens-worker-0"]
    # No search failed while the workers rolled over, and none mixed the two models.
    assert load.failures == [], load.failures[:5]
    assert seen_before > 0 and load.ok > seen_before
    assert set(load.models) == {old_id, new_id}, load.models

    active = launch.active_model(settings)
    assert active.model_id == new_id and active.collection == new_collection
    assert active.previous[0]["model_id"] == old_id
    reports = [ray.get(w.report.remote()) for w in launch.worker_handles(settings)]
    assert [r["model_id"] for r in reports] == [new_id]
    assert launch.status(settings)["index"]["collection"] == new_collection

    # New images go to the new model's collection; the old collection gets nothing more.
    api = ClusterAPI(settings)
    old_points = index_call(settings, "count", settings.qdrant_collection)
    [sub] = asyncio.run(api.submit_uploads([("after.jpg", image_bytes(9300, (64, 64)))]))
    [job] = wait_terminal(launch.queue_handle(settings), [sub["id"]])
    assert job.state is JobState.DONE and job.result["model_id"] == new_id
    assert index_call(settings, "existing", [point_id(sub["sha256"], new_id)], new_collection)
    assert index_call(settings, "count", settings.qdrant_collection) == old_points

    # A query of the old model against the new collection is refused, not mixed.
    with pytest.raises(ModelMismatch):
        index_call(settings, "search", np.ones(model_b.dim, np.float32), 3, None,
                   new_collection, old_id)  # fmt: skip

    # A delete removes the content from both models' collections.
    sha = uploads[0]["sha256"]
    out = asyncio.run(api.delete_content([sha], "test"))
    api.close()
    assert out["points"]["images"] == 2, out
    for collection, mid in ((settings.qdrant_collection, old_id), (new_collection, new_id)):
        assert not index_call(settings, "existing", [point_id(sha, mid)], collection)

    # Asked again (the CLI verb), the model is the active one: nothing to do.
    args = argparse.Namespace(
        model=model_b.name, pretrained=str(model_b.checkpoint_path),
        model_config=str(model_b.config_path), limit=None, no_switch=False, json=True,
        no_progress=True, address=None,
    )  # fmt: skip
    assert cmd_reindex(settings, args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {"already_active": True, "model_id": new_id, "collection": new_collection}

    # The switch is in the store: a queue actor that Ray restarts keeps it.
    ray.kill(launch.queue_handle(settings), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert launch.active_model(settings).model_id == new_id
            break
        except ray.exceptions.RayActorError:
            assert time.monotonic() < deadline, "the queue actor did not come back"
            time.sleep(0.5)
