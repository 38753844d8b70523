"""The embedded engine (Qdrant Edge) itself: HNSW builds off the owner's process, swaps,
crash safety, one owner per folder, and the migration from qdrant-client's local mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from raylens.cli.main import main as cli_main
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.index_migrate import migrate_local_mode
from raylens.cluster.settings import Settings
from raylens.errors import IndexUnavailable, SettingsError

IMAGES = "raylens_images"


def vecs(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def write(ix: VectorIndex, start: int, n: int, dim: int) -> dict[str, np.ndarray]:
    ids = [point_id(f"s{k}", "m") for k in range(start, start + n)]
    v = vecs(n, dim, start)
    ix.upsert(ids, v, [{"sha256": f"s{k}", "job_id": f"j{k}"} for k in range(start, start + n)])
    return dict(zip(ids, v))


def collection_dir(settings: Settings) -> Path:
    return settings.qdrant_path / "edge" / IMAGES


def wait_built(ix: VectorIndex, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = ix.maintain()[IMAGES]
        if not state["building"] and state["builds"] + state["builds_dropped"] > 0:
            return state
        time.sleep(0.2)
    raise AssertionError(f"no build finished in {timeout_s}s: {ix.build_state()}")


def test_a_build_runs_in_another_process_while_writes_and_searches_go_on(tmp_path: Path) -> None:
    """6,000 512-d points (over Qdrant's indexing threshold): the HNSW build runs in a child
    process; calls made meanwhile are answered, their writes replayed onto the built copy,
    which then replaces the live one with every point in it and its vectors indexed."""
    settings = Settings(data_dir=tmp_path, index_build_points=6000, index_catchup_points=256)
    ix = VectorIndex(settings, 512, builds=True)
    written = {}
    for start in range(0, 6000, 500):
        written.update(write(ix, start, 500, 512))
    state = ix.build_state()[IMAGES]
    assert state["building"], state
    build_dir = collection_dir(settings) / "gen-000002"
    assert build_dir.is_dir()  # the copy the child builds
    during = 0
    start = 6000
    while ix.build_state()[IMAGES]["builds"] == 0:  # until the first build is swapped in
        written.update(write(ix, start, 100, 512))  # each call also advances the build
        q = next(iter(written))
        assert ix.search(written[q], top_k=1)[0]["id"] == q
        start += 100
        during += 1
        time.sleep(0.05)
    assert during >= 2, "the build ended before any call was made during it"
    state = ix.build_state()[IMAGES]
    assert state["builds"] == 1 and state["generation"] == "gen-000002", state
    assert state["last_build"]["replayed_points"] >= 100
    assert 0 < state["last_build"]["copy_seconds"] < state["last_build"]["wall_seconds"]
    assert state["indexed"] >= 6000  # HNSW built on the copy's big segment
    assert (collection_dir(settings) / "CURRENT").read_text() == "gen-000002"
    assert not (collection_dir(settings) / "gen-000001").exists()
    assert ix.count() == len(written)
    for pid in list(written)[::997] + list(written)[-3:]:
        assert ix.search(written[pid], top_k=1)[0]["id"] == pid
    ix.close()
    again = VectorIndex(settings)
    assert again.count() == len(written)
    again.close()


def test_a_build_that_fails_is_dropped_and_the_live_collection_keeps_everything(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, index_build_points=300)
    ix = VectorIndex(settings, 16, builds=True)
    written = write(ix, 0, 300, 16)
    state = ix.build_state()[IMAGES]
    assert state["building"]
    build = ix.backend._collections[IMAGES]._build
    build.proc.kill()  # the build process dies (OOM killer, a crash)
    build.proc.wait()
    written.update(write(ix, 300, 10, 16))
    state = ix.build_state()[IMAGES]
    assert not state["building"] and state["builds_dropped"] == 1, state
    assert "exited with" in state["last_drop"]
    assert not (collection_dir(settings) / "gen-000002").exists()
    doomed = collection_dir(settings) / "gen-000002.removing"  # deleted off the call
    deadline = time.monotonic() + 30
    while doomed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not doomed.exists()
    assert ix.count() == 310 and state["generation"] == "gen-000001"
    ix.close()


def test_a_build_whose_backlog_outgrows_the_setting_is_dropped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, index_build_points=200, index_build_max_backlog=150)
    ix = VectorIndex(settings, 16, builds=True)
    write(ix, 0, 200, 16)
    assert ix.build_state()[IMAGES]["building"]
    write(ix, 200, 100, 16)
    write(ix, 300, 100, 16)  # 200 written during the build > 150
    state = ix.build_state()[IMAGES]
    assert state["builds_dropped"] == 1 and "RAYLENS_INDEX_BUILD_MAX_BACKLOG" in state["last_drop"]
    assert ix.count() == 400
    ix.close()


def test_a_swapped_out_generation_is_removed_off_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap renames the old generation and removes it on a thread of its own (its rmtree
    grows with the collection and used to run inside the index call); a leftover of a removal
    that a crash cut short is removed at the next open."""
    import threading

    import raylens.cluster.index_edge as index_edge

    removed_on: dict[str, str] = {}
    real_rmtree = index_edge.shutil.rmtree

    def rmtree(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path).exists():
            removed_on[Path(path).name] = threading.current_thread().name
        real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(index_edge.shutil, "rmtree", rmtree)
    settings = Settings(data_dir=tmp_path, index_build_points=300)
    ix = VectorIndex(settings, 16, builds=True)
    write(ix, 0, 300, 16)
    state = wait_built(ix)
    assert state["builds"] == 1 and state["generation"] == "gen-000002", state
    folder = collection_dir(settings)
    assert not (folder / "gen-000001").exists()  # renamed within the swap
    deadline = time.monotonic() + 30
    while (folder / "gen-000001.removing").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (folder / "gen-000001.removing").exists()
    assert removed_on.get("gen-000001.removing") == "raylens-index-remove", removed_on
    assert "gen-000001" not in removed_on  # never removed in the swapping call itself
    ix.close()
    (folder / "gen-000001.removing").mkdir()  # a removal a crash cut short
    (folder / "gen-000001.removing" / "segment").write_bytes(b"x" * 100)
    again = VectorIndex(settings)
    assert again.count() == 300
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["gen-000002"]
    again.close()


def test_a_crash_during_a_build_leaves_the_live_generation_and_the_leftover_is_removed(
    tmp_path: Path,
) -> None:
    """kill -9 of the owner while a build is under way, without flush: every acknowledged
    write is there at the next open (the engine's WAL), from the generation CURRENT names."""
    settings = Settings(data_dir=tmp_path, index_build_points=400)
    script = f"""
import os, signal, numpy as np
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.settings import Settings
ix = VectorIndex(Settings(data_dir={str(tmp_path)!r}, index_build_points=400), 16, builds=True)
for start in range(0, 1000, 100):
    ids = [point_id(f"s{{k}}", "m") for k in range(start, start + 100)]
    ix.upsert(ids, np.random.default_rng(start).standard_normal((100, 16)), [{{}}] * 100)
assert ix.build_state()["raylens_images"]["building"]
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "written" in out.stdout, out.stderr[-2000:]
    assert out.returncode == -9
    folder = collection_dir(settings)
    assert (folder / "CURRENT").read_text() == "gen-000001"
    ix = VectorIndex(settings)
    assert ix.count() == 1000
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["gen-000001"]
    ix.close()


def test_one_process_owns_the_folder_and_a_second_opener_is_told_why(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = VectorIndex(settings, 8)
    with pytest.raises(IndexUnavailable, match="open in another process"):
        VectorIndex(settings, 8)
    first.close()
    VectorIndex(settings, 8).close()  # free again once the owner closes


def make_old_local_mode(settings: Settings, n: int = 120) -> dict[str, np.ndarray]:
    """What an earlier raylens left: qdrant-client local mode in <data dir>/qdrant."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(settings.qdrant_path))
    out = {}
    for name, dim, distance in (
        (IMAGES, 32, models.Distance.COSINE),
        ("raylens_faces", 128, models.Distance.EUCLID),
    ):
        client.create_collection(
            name, vectors_config=models.VectorParams(size=dim, distance=distance)
        )
        ids = [point_id(f"old{k}", name) for k in range(n)]
        v = vecs(n, dim, dim)
        client.upsert(name, points=models.Batch(ids=ids, vectors=v.tolist(),
                      payloads=[{"sha256": f"old{k}", "n": k} for k in range(n)]))  # fmt: skip
        if name == IMAGES:
            out = dict(zip(ids, v))
    client.close()
    return out


def test_an_old_local_mode_data_dir_gets_a_clear_message_then_migrates(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = make_old_local_mode(settings)
    with pytest.raises(SettingsError, match="raylens index migrate") as err:
        VectorIndex(settings, 32)
    assert "nothing has been changed" in str(err.value)
    assert (settings.qdrant_path / "meta.json").is_file()

    result = migrate_local_mode(settings)
    assert result["migrated"] == {IMAGES: 120, "raylens_faces": 120}
    backup = Path(result["backup"])
    assert (backup / "meta.json").is_file() and (backup / "collection" / IMAGES).is_dir()
    assert not (settings.qdrant_path / "meta.json").exists()

    ix = VectorIndex(settings, 32)
    assert ix.count() == 120 and ix.count("raylens_faces") == 120
    for pid in list(old)[::17]:
        hit = ix.search(old[pid], top_k=1)[0]
        assert hit["id"] == pid and hit["payload"]["sha256"].startswith("old")
    face = ix.get(point_id("old3", "raylens_faces"), "raylens_faces")
    assert ix.search(face["vector"], top_k=1, collection="raylens_faces")[0]["score"] < 1e-3
    ix.close()
    # run again: nothing left to migrate, said so
    assert migrate_local_mode(settings)["migrated"] == {}


def test_index_migrate_cli_prints_json_and_exits_0(tmp_path: Path, capsys, monkeypatch) -> None:
    settings = Settings(data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_old_local_mode(settings, 10)
    monkeypatch.setenv("RAYLENS_DATA_DIR", str(tmp_path))
    assert cli_main(["index", "migrate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["migrated"] == {IMAGES: 10, "raylens_faces": 10}
    assert cli_main(["index", "migrate"]) == 0
    assert "nothing to migrate" in capsys.readouterr().out


def test_migrate_refuses_while_the_engine_is_open_elsewhere(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_old_local_mode(settings, 10)
    from raylens.cluster.index_edge import BuildTuning, EdgeBackend

    owner = EdgeBackend(settings.qdrant_path, BuildTuning(), allow_old_local_mode=True)
    owner.create(IMAGES, 32, "cosine")
    with pytest.raises(IndexUnavailable, match="raylens down"):
        migrate_local_mode(settings)
    owner.close()
    assert (settings.qdrant_path / "meta.json").is_file()  # untouched
    assert os.path.isdir(settings.qdrant_path / "collection")


def test_up_on_an_old_local_mode_data_dir_fails_before_starting_anything(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import ray

    settings = Settings(data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_old_local_mode(settings, 5)
    monkeypatch.setenv("RAYLENS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAYLENS_CLIP_PRETRAINED", "none")
    started = time.monotonic()
    assert cli_main(["up", "--no-http"]) == 2
    err = capsys.readouterr().err
    assert "raylens index migrate" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert time.monotonic() - started < 30  # no Ray start (that takes 40 s here)
