"""`raylens doctor`: verdicts as pure functions (dicts in), then the command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raylens.cli import doctor
from raylens.cli.doctor import ERROR, OK, SKIP, WARN, Check, Report
from raylens.cluster.settings import Settings

from _ports import free_port
from _redis_server import RedisServer

RAYLENS = [sys.executable, "-m", "raylens.cli.main"]
SECRET = "s3cret-Pa55"


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


# ---- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "RAYLENS_API_KEYS",
        "RAYLENS_QDRANT_API_KEY",
        "RAY_AUTH_TOKEN",
        "HF_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "REDIS_PASSWORD",
    ],
)
def test_secret_names_are_recognised(name: str) -> None:
    assert doctor.is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAYLENS_REDIS_PREFIX", "RAYLENS_CLIP_MODEL", "PWD"],
)
def test_names_that_only_point_at_or_configure_a_secret_are_not_redacted(name: str) -> None:
    assert not doctor.is_secret_name(name)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("https://ghp_TOKEN@github.com/x", "https://***@github.com/x"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("https://q:6333/?api_key=k", "https://q:6333/?api_key=***"),
        (
            "http://u:p@proxy:3128,http://v:q@other:80",
            "http://u:***@proxy:3128,http://v:***@other:80",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("no url here", "no url here"),
    ],
)
def test_credentials_inside_urls_are_redacted_and_the_rest_kept(given: str, shown: str) -> None:
    assert doctor.redact_text(given) == shown


def test_relevant_environment_keeps_what_matters_and_redacts_secrets() -> None:
    env = {
        "RAYLENS_API_KEYS": "k1,k2",
        "RAYLENS_REDIS_URL": f"redis://:{SECRET}@h:1/0",
        "RAY_AUTH_TOKEN": SECRET,
        "RAY_AUTH_MODE": "token",
        "HTTPS_PROXY": f"http://me:{SECRET}@proxy:3128",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "OMP_NUM_THREADS": "4",
        "HOME": "/root",
        "SOME_OTHER_TOKEN": SECRET,
    }
    out = doctor.relevant_environment(env)
    assert SECRET not in json.dumps(out)
    assert out["RAYLENS_API_KEYS"] == "*** (2 keys)"
    assert out["RAYLENS_REDIS_URL"] == "redis://:***@h:1/0"
    assert out["RAY_AUTH_TOKEN"] == "***" and out["RAY_AUTH_MODE"] == "token"
    assert out["HTTPS_PROXY"] == "http://me:***@proxy:3128"
    assert out["CUDA_VISIBLE_DEVICES"] == "0,1" and out["OMP_NUM_THREADS"] == "4"
    assert "HOME" not in out and "SOME_OTHER_TOKEN" not in out


def test_settings_dump_redacts_keys_and_url_passwords(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        redis_url=f"redis://:{SECRET}@h:1/0",
        qdrant_url=f"https://q:6333/?api_key={SECRET}",
        qdrant_api_key=SECRET,
        api_keys="a,b,c",
    )
    out = doctor.redacted_settings(s)
    assert SECRET not in json.dumps(out)
    assert out["qdrant_api_key"] == "***" and out["api_keys"] == "***"
    assert out["redis_url"] == "redis://:***@h:1/0"
    assert out["clip_model"] == "ViT-B-32" and out["data_dir"] == str(tmp_path / "data")


def test_check_details_are_redacted_when_the_report_is_finished() -> None:
    report = doctor._finish(
        [Check("redis", ERROR, f"cannot reach redis://:{SECRET}@h:1", f"fix redis://u:{SECRET}@h")],
        {},
        0.0,
    )
    assert SECRET not in json.dumps(report.to_dict())


# ---- redis verdicts ---------------------------------------------------------------------------

GOOD = {
    "reachable": True,
    "version": "7.0.15",
    "role": "master",
    "used_memory": 1 << 20,
    "config": {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
        "maxmemory-policy": "noeviction",
        "maxmemory": "0",
    },
    "jobs": {"total": 3, "queued": 1, "running": 0, "done": 2, "failed": 0},
}


def redis_verdicts(**changes: Any) -> dict[str, Check]:
    facts = {**GOOD, **changes}
    config = changes.pop("config_changes", None)
    if config is not None:
        facts["config"] = {**GOOD["config"], **config}
    return {c.name: c for c in doctor.check_redis(facts, "redis://h:1/0", payloads=True)}


def test_redis_with_aof_and_noeviction_is_ok() -> None:
    out = redis_verdicts()
    assert [c.status for c in out.values()] == [OK, OK, OK, OK]
    assert "3 jobs" in out["redis"].detail and "7.0.15" in out["redis"].detail


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-ttl"])
def test_every_eviction_policy_but_noeviction_warns(policy: str) -> None:
    check = redis_verdicts(config_changes={"maxmemory-policy": policy})["redis eviction"]
    assert check.status == WARN and policy in check.detail
    assert check.fix is not None and "noeviction" in check.fix
    if policy.startswith("volatile-"):
        assert "TTL" in check.detail


def test_aof_off_warns_and_says_what_a_restart_loses() -> None:
    without_rdb = redis_verdicts(config_changes={"appendonly": "no", "save": ""})
    check = without_rdb["redis persistence"]
    assert check.status == WARN and "every job" in check.detail
    assert check.fix is not None and "appendonly yes" in check.fix
    with_rdb = redis_verdicts(config_changes={"appendonly": "no", "save": "3600 1"})
    assert "since the last snapshot" in with_rdb["redis persistence"].detail


def test_appendfsync_no_warns_and_always_is_ok() -> None:
    assert redis_verdicts(config_changes={"appendfsync": "no"})["redis persistence"].status == WARN
    assert (
        redis_verdicts(config_changes={"appendfsync": "always"})["redis persistence"].status == OK
    )


def test_when_config_get_is_refused_the_verdicts_come_from_info() -> None:
    out = redis_verdicts(
        config={},
        config_error="unknown command 'CONFIG'",
        info={"aof_enabled": 0, "maxmemory_policy": "allkeys-lru"},
    )
    assert (
        out["redis persistence"].status == WARN
        and "appendonly no" in out["redis persistence"].detail
    )
    assert out["redis eviction"].status == WARN
    unknown = redis_verdicts(config={}, config_error="unknown command 'CONFIG'", info={})
    assert unknown["redis eviction"].status == WARN and "CONFIG" in unknown["redis eviction"].detail


def test_a_replica_is_an_error_naming_the_primary() -> None:
    check = redis_verdicts(role="slave")["redis"]
    assert check.status == ERROR and check.fix is not None and "primary" in check.fix


def test_unreachable_redis_is_an_error_and_auth_failures_name_the_password() -> None:
    [down] = doctor.check_redis({"reachable": False, "error": "Connection refused"}, "u", True)
    assert down.status == ERROR and down.fix is not None and "redis-server" in down.fix
    [auth] = doctor.check_redis(
        {"reachable": False, "error": "AuthenticationError: NOAUTH Authentication required."},
        "u",
        True,
    )
    assert auth.status == ERROR and auth.fix is not None and "password" in auth.fix


@pytest.mark.parametrize(
    ("url", "decodes"),
    [
        ("redis://h:1/0?decode_responses=true", True),
        ("redis://h:1/0?decode_responses=1", True),
        ("redis://h:1/0?decode_responses=false", False),
        ("redis://h:1/0", False),
    ],
)
def test_a_url_that_would_decode_binary_payloads_is_recognised(url: str, decodes: bool) -> None:
    assert doctor.url_decodes_responses(url) is decodes


def test_a_decoding_url_is_refused_by_raylens_client_and_reported_as_an_error() -> None:
    facts = doctor.redis_facts("redis://127.0.0.1:1/0?decode_responses=true", "raylens", 0.5)
    assert facts["decode_responses"] is True
    [check] = doctor.check_redis(facts, "u", True)
    assert check.name == "redis client" and check.status == ERROR
    assert check.fix is not None and "decode_responses" in check.fix


# ---- other verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fix"),
    [
        (
            "checkpoint /x.pt does not exist or is not a file; set RAYLENS_CLIP_PRETRAINED to a "
            "readable checkpoint file (or an OpenCLIP tag)",
            "set RAYLENS_CLIP_PRETRAINED to a readable checkpoint file (or an OpenCLIP tag)",
        ),
        (
            "the 'x' weights could not be downloaded: h:443 cannot be reached (cache). "
            "Set RAYLENS_CLIP_PRETRAINED to a local checkpoint path.",
            "set RAYLENS_CLIP_PRETRAINED to a local checkpoint path",
        ),
        ("face models are not installed: pip install a b", "pip install a b"),
        ("something odd happened", "DEFAULT"),
    ],
)
def test_the_fix_is_taken_from_the_end_of_a_raylens_error_message(message: str, fix: str) -> None:
    assert doctor.fix_from_message(message, "DEFAULT") == fix


def test_misspelt_settings_are_reported_with_the_likely_name() -> None:
    check = doctor.check_setting_names({"RAYLENS_CLIP_MODLE": "x", "RAYLENS_CHAOS": "1"})
    assert check.status == WARN and "did you mean RAYLENS_CLIP_MODEL?" in check.detail
    assert "RAYLENS_CHAOS" not in check.detail
    assert doctor.check_setting_names({"RAYLENS_DATA_DIR": "/x"}).status == OK


def test_ray_address_follows_the_cli_order(tmp_path: Path) -> None:
    s = settings(tmp_path, ray_port=7000)
    assert doctor.ray_address(s, None, {}) == ("127.0.0.1:7000", "127.0.0.1:7000")
    assert doctor.ray_address(s, None, {"RAY_ADDRESS": "h:1"})[0] is None
    assert doctor.ray_address(s, "a:2", {"RAY_ADDRESS": "h:1"})[0] == "a:2"
    s2 = settings(tmp_path, ray_address="b:3")
    assert doctor.ray_address(s2, None, {"RAY_ADDRESS": "h:1"})[0] == "b:3"


def test_the_ray_probe_child_runs_as_a_module_and_answers_in_one_marked_line() -> None:
    spec = {"address": None, "namespace": "x", "queue": "q", "worker_prefix": "w", "timeout": 1}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "raylens.cli.doctor", "--ray-probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    line = (proc.stdout.strip().splitlines() or [""])[-1]
    assert proc.returncode == 0 and line.startswith(doctor.RAY_PROBE_MARK), proc.stderr[-2000:]
    facts = json.loads(line[len(doctor.RAY_PROBE_MARK) :])
    assert facts["state"] == "failed" and "refusing to start a cluster" in facts["error"]


def test_ray_not_running_is_a_warning_and_a_refused_join_names_the_token() -> None:
    down = doctor.check_ray({"address": "127.0.0.1:1", "state": "not_running"}, "2.60.0")
    assert [c.status for c in down] == [WARN, SKIP] and "not running" in down[0].detail
    auth = doctor.check_ray(
        {"address": "h:1", "state": "failed", "error": "Unauthenticated: token mismatch"}, "2"
    )
    assert auth[0].status == ERROR and auth[0].fix is not None and "RAY_AUTH_MODE" in auth[0].fix


def test_a_joined_cluster_reports_resources_nodes_and_the_raylens_workers() -> None:
    facts = {
        "address": "h:1",
        "state": "ok",
        "ray_version": "2.60.0",
        "gcs_address": "h:1",
        "cluster_resources": {"CPU": 2.0, "GPU": 1.0, "memory": 4 * 2**30},
        "available_resources": {"CPU": 1.0, "GPU": 0.0},
        "nodes": [{"node_id": "abc", "alive": True}],
        "actors": ["raylens-index", "raylens-queue", "raylens-worker-0"],
        "queue": {"depth": {"interactive": 0, "normal": 2, "bulk": 5}},
        "workers": [
            {"worker": "raylens-worker-0", "model_id": "m", "device": "cuda", "dtype": "float16"}
        ],
    }
    cluster, actors = doctor.check_ray(facts, "2.60.0")
    assert cluster.status == OK and "1/1 node(s) alive" in cluster.detail
    assert "GPU 0/1 free" in cluster.detail
    assert actors.status == OK and "raylens-worker-0: m on cuda" in actors.detail
    no_raylens = doctor.check_ray({**facts, "actors": [], "workers": []}, "2.60.0")[1]
    assert no_raylens.status == WARN and "raylens up" in (no_raylens.fix or "")


def test_workers_that_cannot_fit_the_cluster_warn(tmp_path: Path) -> None:
    facts = {"cluster_resources": {"CPU": 2.0}}
    fits = doctor.check_worker_resources(settings(tmp_path, num_workers=2), facts, 0)
    assert fits.status == OK
    gpu = doctor.check_worker_resources(settings(tmp_path, worker_num_gpus=1), facts, 0)
    assert gpu.status == WARN and "RAYLENS_WORKER_NUM_GPUS" in (gpu.fix or "")


def test_lock_holders_are_read_from_proc_locks_by_inode(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text("x")
    inode = lock.stat().st_ino
    table = (
        f"1: FLOCK  ADVISORY  WRITE 4242 fe:00:{inode} 0 EOF\n"
        f"1: -> FLOCK  ADVISORY  WRITE 99 fe:00:{inode} 0 EOF\n"
        f"2: POSIX  ADVISORY  WRITE 77 fe:00:{inode + 1} 0 EOF\n"
    )
    assert doctor.lock_holders(lock, table) == [4242]
    assert doctor.lock_holders(tmp_path / "missing", table) == []


def index_with_points(s: Settings, n: int = 3, dim: int = 4) -> Any:
    """The real embedded engine (Qdrant Edge), holding n points; open (this process holds it)."""
    import numpy as np

    from raylens.cluster.index import VectorIndex, point_id

    ix = VectorIndex(s, dim)
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    ix.upsert([point_id(f"s{i}", "m") for i in range(n)], vectors, [{}] * n)
    return ix


def test_the_embedded_index_is_read_from_its_files_and_a_foreign_holder_warns(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path)
    name = s.qdrant_collection
    assert (
        "not created yet"
        in doctor.check_qdrant_local(doctor.qdrant_local_facts(s.qdrant_path), False).detail
    )
    ix = index_with_points(s)
    try:
        held = doctor.qdrant_local_facts(s.qdrant_path)  # read while this process holds it
    finally:
        ix.close()
    c = held["collections"][name]
    assert c["vectors"] == {"size": 4, "distance": "Cosine"} and c["generation"] == "gen-000001"
    assert c["in_use"] and "points" not in c and "error" not in c  # never opened while held
    if Path("/proc/locks").exists():
        assert [h["pid"] for h in c["holders"]] == [os.getpid()]
        warned = doctor.check_qdrant_local(held, index_actor_running=False)
        assert warned.status == WARN and f"in use by pid {os.getpid()}" in warned.detail
        assert "RAYLENS_QDRANT_URL" in (warned.fix or "")
        ours = doctor.check_qdrant_local(held, index_actor_running=True)
        assert ours.status == OK and "the raylens index actor" in ours.detail
    assert doctor.check_collection_sizes(s, held["collections"], 4).status == OK  # type: ignore[union-attr]
    wrong = doctor.check_collection_sizes(s, held["collections"], 512)
    assert wrong is not None and wrong.status == ERROR and "holds 4-d, needs 512-d" in wrong.detail


def test_a_free_embedded_index_is_opened_briefly_to_count_its_points(tmp_path: Path) -> None:
    import shutil

    from raylens.cluster.index import VectorIndex

    s = settings(tmp_path)
    name = s.qdrant_collection
    index_with_points(s, n=5).close()
    folder = s.qdrant_path / "edge" / name
    shutil.copytree(folder / "gen-000001", folder / "gen-000002")  # a build a crash left
    facts = doctor.qdrant_local_facts(s.qdrant_path)
    c = facts["collections"][name]
    assert c["points"] == 5 and c.get("holders") in ([], None) and not c.get("in_use")
    (leftover,) = c["other_generations"]
    assert leftover["name"] == "gen-000002" and leftover["holders"] in ([], None)
    check = doctor.check_qdrant_local(facts, index_actor_running=False)
    assert check.status == OK, check
    assert f"{name}: 5 points (0 in HNSW), 4-d Cosine, gen-000001, not in use" in check.detail
    assert "gen-000002: a build's copy, not in use (removed at the next open)" in check.detail
    assert "20,000" not in check.detail
    # Not counted while the index actor runs (it opens each collection at first use).
    quiet = doctor.qdrant_local_facts(s.qdrant_path, count_free=False)["collections"][name]
    assert "points" not in quiet and quiet["vectors"]["size"] == 4
    # The doctor let go of it, and changed nothing the engine needs.
    assert (folder / "gen-000002").is_dir()
    ix = VectorIndex(s)
    try:
        assert ix.count() == 5
    finally:
        ix.close()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="holders are read from /proc/locks")
def test_another_process_holding_the_index_is_named_and_left_alone(tmp_path: Path) -> None:
    """A notebook or script holding the folder: the doctor names its pid, does not open the
    folder, and the holder goes on writing."""
    s = settings(tmp_path)
    index_with_points(s).close()
    script = f"""
import sys, numpy as np
from raylens.cluster.index import VectorIndex, point_id
from raylens.cluster.settings import Settings
ix = VectorIndex(Settings(data_dir={str(s.data_dir)!r}), 4)
print("open", flush=True)
sys.stdin.readline()
ix.upsert([point_id("late", "m")], np.ones((1, 4), dtype=np.float32), [{{}}])
print(ix.count(), flush=True)
ix.close()
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "open"
        facts = doctor.qdrant_local_facts(s.qdrant_path)
        c = facts["collections"][s.qdrant_collection]
        assert [h["pid"] for h in c["holders"]] == [child.pid] and "points" not in c
        check = doctor.check_qdrant_local(facts, index_actor_running=False)
        assert check.status == WARN and f"in use by pid {child.pid} (" in check.detail
        out, _ = child.communicate("\n", timeout=60)
        assert out.strip() == "4"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_old_local_mode_files_are_an_error_naming_the_migration(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    from raylens.cluster.index import VectorIndex
    from raylens.errors import SettingsError

    s = settings(tmp_path)
    client = QdrantClient(path=str(s.qdrant_path))  # what earlier raylens releases embedded
    try:
        client.create_collection(
            "imgs", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
    finally:
        client.close()
    with pytest.raises(SettingsError, match="raylens index migrate"):
        VectorIndex(s, 4)  # the engine refuses, and so the doctor says
    check = doctor.check_qdrant_local(doctor.qdrant_local_facts(s.qdrant_path), False)
    assert check.status == ERROR and "local-mode files" in check.detail and "imgs" in check.detail
    assert check.fix == "`raylens index migrate` (with raylens stopped)"


def test_a_current_naming_no_generation_is_an_error(tmp_path: Path) -> None:
    s = settings(tmp_path)
    index_with_points(s).close()
    folder = s.qdrant_path / "edge" / s.qdrant_collection
    (folder / "CURRENT").write_text("gen-000009")
    check = doctor.check_qdrant_local(doctor.qdrant_local_facts(s.qdrant_path), False)
    assert check.status == ERROR and "'gen-000009'" in check.detail
    assert str(folder) in (check.fix or "") and "re-ingest" in (check.fix or "")


def test_stored_vector_sizes_are_checked_against_the_model(tmp_path: Path) -> None:
    s = settings(tmp_path)
    cols = {
        "raylens_images": {"vectors": {"size": 512}},
        "raylens_faces": {"vectors": {"size": 128}},
    }
    assert doctor.check_collection_sizes(s, cols, 512).status == OK  # type: ignore[union-attr]
    wrong = doctor.check_collection_sizes(s, cols, 32)
    assert wrong is not None and wrong.status == ERROR
    assert "RAYLENS_QDRANT_COLLECTION" in (wrong.fix or "")
    assert doctor.check_collection_sizes(s, {}, 32) is None


def test_gpus_are_listed_and_a_driver_torch_cannot_use_warns() -> None:
    info = {
        "version": "2.5.0+cu124",
        "cuda_build": "12.4",
        "cuda_available": True,
        "cudnn": 90100,
        "mps_available": False,
        "threads": 8,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 80 * 2**30,
                "memory_free_bytes": 79 * 2**30,
                "capability": "9.0",
            }
        ],
    }
    torch_check, gpus = doctor.check_torch(info, nvidia_present=True)
    assert torch_check.status == OK and "CUDA 12.4 build" in torch_check.detail
    assert gpus.status == OK and "H100" in gpus.detail and "80.0 GiB" in gpus.detail
    cpu_only = {**info, "cuda_build": None, "cuda_available": False, "gpus": []}
    warned, none = doctor.check_torch(cpu_only, nvidia_present=True)
    assert warned.status == WARN and none.status == SKIP


def test_the_sqlite_job_store_is_counted_without_writing(tmp_path: Path) -> None:
    from raylens.cluster.jobs import Job, JobSpec, SourceKind
    from raylens.cluster.store_sqlite import SqliteJobStore

    s = settings(tmp_path)
    assert "not created yet" in doctor.check_sqlite_store(s).detail
    store = SqliteJobStore(s.sqlite_path)
    sha = "ab" * 32
    spec = JobSpec(source_kind=SourceKind.UPLOAD, source=sha, sha256=sha, size_bytes=1)
    store.create_or_get([Job.new(spec, "m")])
    store.close()
    check = doctor.check_sqlite_store(s)
    assert check.status == OK and "queued 1" in check.detail and "wal journal" in check.detail


def test_the_timed_model_load_uses_the_workers_model_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raylens.cluster import model_setup
    from raylens.errors import ModelLoadError

    calls: list[tuple[Settings, bool]] = []

    def refuse(s: Settings, *, warmup: bool = True) -> Any:
        calls.append((s, warmup))
        raise ModelLoadError("x.pt is unreadable; set RAYLENS_CLIP_PRETRAINED to a readable file")

    monkeypatch.setattr(model_setup, "build_embedder", refuse)
    s = settings(tmp_path)
    check = doctor.check_model(s)
    assert calls == [(s, False)]
    assert check.status == ERROR and check.fix == "set RAYLENS_CLIP_PRETRAINED to a readable file"


def test_warnings_always_carry_a_fix_and_the_text_report_shows_it() -> None:
    assert Check("x", WARN, "d").fix
    report = Report(
        [
            Check("a", OK, "fine", group="system"),
            Check("b", ERROR, "broken", "do this", group="store"),
        ],
        {"raylens_version": "0", "environment": {"RAYLENS_DATA_DIR": "/d"}},
    )
    text = doctor.render_text(report)
    assert "ERROR  b  broken" in text and "fix: do this" in text
    assert "exit 1" in text and "RAYLENS_DATA_DIR=/d" in text
    assert report.exit_code == 1 and report.to_dict()["ok"] is False


# ---- the command, as a user runs it -------------------------------------------------------------
# Two runs, started together (each imports torch; open_clip for the model): one against a risky
# Redis with the tiny model, one with a checkpoint that does not exist.


@dataclass
class Runs:
    redis_port: int
    healthy: subprocess.CompletedProcess[str]  # lax Redis + tiny model, --json
    no_weights: subprocess.CompletedProcess[str]  # missing checkpoint, text report


def doctor_env(data_dir: Path) -> dict[str, str]:
    """No RAYLENS_*/RAY_ADDRESS from outside; nothing listens on the Ray port (never starts one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLENS_", "RAY_ADDRESS"))}
    env.update(RAYLENS_DATA_DIR=str(data_dir), RAYLENS_RAY_PORT=str(free_port()))
    return env


def lax_redis(folder: Path) -> RedisServer:
    """A real redis-server (the tests' helper) turned into a risky one: AOF off, LRU eviction,
    and a password, so the report can be checked for leaks."""
    folder.mkdir()
    server = RedisServer(free_port(), folder)
    server.start()
    client = server.client()
    try:
        client.config_set("appendonly", "no")
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("requirepass", SECRET)
    except Exception:
        server.stop()
        raise
    finally:
        client.close()
    return server


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("doctor")
    server = lax_redis(tmp / "redis")
    model = {
        "RAYLENS_CLIP_MODEL": tiny_model.name,
        "RAYLENS_CLIP_MODEL_CONFIG": str(tiny_model.config_path),
    }
    healthy = {
        **doctor_env(tmp / "data"),
        **model,
        "RAYLENS_CLIP_PRETRAINED": str(tiny_model.checkpoint_path),
        "RAYLENS_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{server.port}/0",
        "RAYLENS_API_KEYS": "k1,k2",
    }
    missing = {
        **doctor_env(tmp / "data2"),
        **model,
        "RAYLENS_CLIP_PRETRAINED": str(tmp / "missing.pt"),
    }
    try:
        procs = [
            subprocess.Popen(
                [*RAYLENS, "doctor", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for env, args in ((healthy, ["--json"]), (missing, []))
        ]
        yield Runs(server.port, finish(procs[0]), finish(procs[1]))
    finally:
        server.stop()


def checks_of(proc: subprocess.CompletedProcess[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    return report, {c["name"]: c for c in report["checks"]}


@pytest.mark.integration
def test_doctor_warns_about_a_redis_that_can_lose_jobs(runs: Runs) -> None:
    report, checks = checks_of(runs.healthy)
    assert report["ok"] is True
    assert checks["redis"]["status"] == OK
    assert checks["redis client"]["status"] == OK
    assert checks["redis persistence"]["status"] == WARN
    assert "appendonly yes" in checks["redis persistence"]["fix"]
    assert checks["redis eviction"]["status"] == WARN
    assert "allkeys-lru" in checks["redis eviction"]["detail"]
    ray = checks["ray cluster"]
    assert ray["status"] == WARN and "not running" in ray["detail"]
    url = report["environment"]["RAYLENS_REDIS_URL"]
    assert url == f"redis://:***@127.0.0.1:{runs.redis_port}/0"
    assert SECRET not in runs.healthy.stdout and "k1" not in runs.healthy.stdout
    assert report["platform"]["python"] and "torch" in report and "settings" in report


@pytest.mark.integration
def test_doctor_loads_the_configured_model_and_times_a_batch(runs: Runs, tiny_model: Any) -> None:
    _, checks = checks_of(runs.healthy)
    model = checks["clip model"]
    assert model["status"] == OK, model
    assert model["data"]["dim"] == tiny_model.dim and model["data"]["device"] == "cpu"
    assert model["data"]["load_seconds"] >= 0 and model["data"]["batch_seconds"] > 0
    assert model["data"]["batch"] == 4 and "loaded in" in model["detail"]
    assert checks["face models"]["status"] == OK


@pytest.mark.integration
def test_doctor_exits_1_and_names_the_fix_when_the_weights_are_missing(runs: Runs) -> None:
    proc = runs.no_weights
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ERROR  clip model" in proc.stdout
    assert "fix: set RAYLENS_CLIP_PRETRAINED to a readable checkpoint file" in proc.stdout
    assert "exit 1: fix the error(s) above (clip model)" in proc.stdout
