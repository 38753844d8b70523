"""Payload stores (filesystem and a real redis-server): binary-safe, idempotent, clear errors."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raylens.cluster import payloads_fs
from raylens.cluster.payloads import PayloadStore
from raylens.cluster.payloads_fs import FsPayloadStore
from raylens.cluster.payloads_redis import RedisPayloadStore
from raylens.cluster.store_redis import RedisJobStore, redacted_url
from raylens.errors import SettingsError, SourceMissing, StoreUnavailable

from _ports import free_port
from _redis_server import RedisServer

ALL_BYTES = bytes(range(256)) * 10
NOT_UTF8 = b"\xff\xfe\x00\x80"
MISSING = hashlib.sha256(b"never stored").hexdigest()


@pytest.fixture(params=["fs", "redis"])
def payloads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PayloadStore]:
    if request.param == "fs":
        store: PayloadStore = FsPayloadStore(tmp_path / "payloads")
    else:
        store = RedisPayloadStore(request.getfixturevalue("redis_url"), prefix="test")
    yield store
    store.close()


@pytest.mark.parametrize("data", [ALL_BYTES, NOT_UTF8, b"\x89PNG\r\n\x1a\n\x00\x00"], ids=len)
def test_payload_store_returns_the_exact_bytes_when_they_are_not_utf8(
    payloads: PayloadStore, data: bytes
) -> None:
    key = payloads.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert payloads.exists(key)
    back = payloads.get(key)
    assert type(back) is bytes and back == data


def test_payload_store_accepts_the_sha256_when_the_caller_gives_the_right_one(
    payloads: PayloadStore,
) -> None:
    sha = hashlib.sha256(NOT_UTF8).hexdigest()
    assert payloads.put(NOT_UTF8, sha256=sha) == sha
    assert payloads.put(ALL_BYTES, sha256=hashlib.sha256(ALL_BYTES).hexdigest().upper()) == (
        hashlib.sha256(ALL_BYTES).hexdigest()
    )


def test_payload_store_keeps_one_copy_when_the_same_content_is_put_twice(
    payloads: PayloadStore,
) -> None:
    first = payloads.put(ALL_BYTES)
    second = payloads.put(ALL_BYTES)
    assert first == second and payloads.get(first) == ALL_BYTES


def test_payload_store_raises_value_error_when_the_given_sha256_does_not_match(
    payloads: PayloadStore,
) -> None:
    with pytest.raises(ValueError, match="sha256 mismatch"):
        payloads.put(NOT_UTF8, sha256=hashlib.sha256(b"other").hexdigest())
    assert not payloads.exists(hashlib.sha256(NOT_UTF8).hexdigest())


@pytest.mark.parametrize("key", [MISSING, "../../etc/passwd", ""])
def test_payload_store_raises_source_missing_naming_the_key_when_nothing_is_stored(
    payloads: PayloadStore, key: str
) -> None:
    with pytest.raises(SourceMissing) as info:
        payloads.get(key)
    assert key in info.value.message
    assert not payloads.exists(key)


def test_payload_store_forgets_the_bytes_when_deleted(payloads: PayloadStore) -> None:
    key = payloads.put(NOT_UTF8)
    payloads.delete(key)
    payloads.delete(key)  # deleting twice is fine
    assert not payloads.exists(key)
    with pytest.raises(SourceMissing):
        payloads.get(key)


def test_payload_store_scan_lists_every_payload_with_its_size_and_usage_sums_them(
    payloads: PayloadStore,
) -> None:
    assert list(payloads.scan()) == [] and payloads.usage() == (0, 0)
    datas = [bytes([i]) * (100 + i) for i in range(30)]
    keys = [payloads.put(d) for d in datas]
    payloads.delete(keys[0])

    found = {p.key: p for p in payloads.scan()}

    assert set(found) == set(keys[1:])
    assert all(found[k].size == len(d) for k, d in zip(keys[1:], datas[1:]))
    assert all(0 <= p.idle_s < 60 for p in found.values())
    assert payloads.usage() == (29, sum(len(d) for d in datas[1:]))
    assert payloads.size(keys[1]) == len(datas[1]) and payloads.size(keys[0]) is None


# ---- filesystem specifics -----------------------------------------------------------------------
def test_fs_payload_store_writes_one_file_under_a_two_letter_folder_when_put(
    tmp_path: Path,
) -> None:
    store = FsPayloadStore(tmp_path / "p")
    key = store.put(ALL_BYTES)
    assert (tmp_path / "p" / key[:2] / key[2:]).read_bytes() == ALL_BYTES
    assert [p.name for p in (tmp_path / "p" / key[:2]).iterdir()] == [key[2:]]  # no temp left


def test_fs_payload_store_rewrites_the_file_when_it_was_truncated_outside_raylens(
    tmp_path: Path,
) -> None:
    store = FsPayloadStore(tmp_path)
    key = store.put(ALL_BYTES)
    (tmp_path / key[:2] / key[2:]).write_bytes(ALL_BYTES[:10])
    store.put(ALL_BYTES)
    assert store.get(key) == ALL_BYTES


def test_fs_payload_store_raises_store_unavailable_when_the_root_cannot_be_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = FsPayloadStore(tmp_path / "file" / "payloads")  # a folder under a plain file
    with pytest.raises(StoreUnavailable, match="payloads"):
        store.put(NOT_UTF8)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


Restore = Callable[[], None]


def _fail_fchmod(monkeypatch: pytest.MonkeyPatch) -> Restore | None:
    def boom(fd: int, mode: int) -> None:
        raise PermissionError(errno.EPERM, "fchmod refused")

    monkeypatch.setattr(payloads_fs.os, "fchmod", boom)
    return None


def _file_size_limit(monkeypatch: pytest.MonkeyPatch) -> Restore | None:
    """A real write failure: the process may not grow a file past 1 KiB (EFBIG)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, old_limit[1]))

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)

    return restore


def _fail_file_fsync(monkeypatch: pytest.MonkeyPatch) -> Restore | None:
    real = os.fsync

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "fsync failed")
        real(fd)

    monkeypatch.setattr(payloads_fs.os, "fsync", fsync)
    return None


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> Restore | None:
    def boom(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "rename failed")

    monkeypatch.setattr(payloads_fs.os, "replace", boom)
    return None


FAILURES = [_fail_fchmod, _file_size_limit, _fail_file_fsync, _fail_replace]


@pytest.mark.parametrize("fail", FAILURES, ids=lambda f: f.__name__)
def test_fs_payload_store_leaves_no_temp_file_and_no_open_fd_when_a_write_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail: Callable[[pytest.MonkeyPatch], Restore | None],
) -> None:
    store = FsPayloadStore(tmp_path / "p")
    data = ALL_BYTES * 10  # 25 KiB: past the 1 KiB file size limit
    key = hashlib.sha256(data).hexdigest()
    store.put(b"warm up: makes no folder of this key")
    before = _open_fds()
    restore = fail(monkeypatch)
    try:
        with pytest.raises(StoreUnavailable, match=key):
            store.put(data)
    finally:
        if restore is not None:
            restore()
    assert _open_fds() == before  # no fd leaked
    folder = tmp_path / "p" / key[:2]
    assert not folder.exists() or list(folder.iterdir()) == []  # no temp file left
    monkeypatch.undo()
    assert store.put(data) == key and store.get(key) == data  # and the store still works


def test_fs_payload_store_fsyncs_the_folder_when_the_payload_was_already_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may have renamed the file in without its folder fsync yet: a put that
    acknowledges the payload through the fast path must make the entry durable too."""
    store = FsPayloadStore(tmp_path / "p")
    key = store.put(ALL_BYTES)
    synced: list[tuple[int, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(payloads_fs.os, "fsync", fsync)
    assert store.put(ALL_BYTES) == key
    folder = (tmp_path / "p" / key[:2]).stat()
    assert (folder.st_dev, folder.st_ino) in synced


# ---- redis specifics ----------------------------------------------------------------------------
def test_redis_stores_use_binary_clients_when_created(redis_url: str) -> None:
    payloads = RedisPayloadStore(redis_url)
    jobs = RedisJobStore(redis_url)
    for client in (payloads.client, jobs.client):
        assert client.connection_pool.connection_kwargs["decode_responses"] is False
    payloads.close()
    jobs.close()


def test_redis_stores_refuse_the_url_when_it_turns_on_decode_responses() -> None:
    url = f"redis://:pw@127.0.0.1:{free_port()}/0?decode_responses=true"
    for make in (RedisPayloadStore, RedisJobStore):
        with pytest.raises(SettingsError, match="decode_responses") as info:
            make(url)
        assert ":pw@" not in info.value.message


def test_redis_payload_store_raises_store_unavailable_when_the_server_is_unreachable() -> None:
    port = free_port()
    store = RedisPayloadStore(f"redis://user:hunter2@127.0.0.1:{port}/0")
    for call in (
        lambda: store.put(NOT_UTF8),
        lambda: store.get(MISSING),
        lambda: store.exists(MISSING),
    ):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert f"127.0.0.1:{port}" in info.value.message
        assert "hunter2" not in info.value.message
    store.close()


def test_redis_payload_store_stores_raw_bytes_when_read_by_another_client(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisPayloadStore(redis_url, prefix="test")
    key = store.put(ALL_BYTES)
    raw = redis_server.client()
    assert raw.get(f"test:payload:{key}") == ALL_BYTES  # no encoding layer in between
    raw.close()
    store.close()


def test_redis_payload_store_raises_store_unavailable_when_the_server_is_out_of_memory(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisPayloadStore(redis_url, prefix="test")
    admin = redis_server.client()
    admin.config_set("maxmemory", "1")  # noeviction (the required policy) then refuses writes
    try:
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            store.put(ALL_BYTES)
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
        store.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://me:secret@host/1", "redis://me:***@host/1"),
        ("rediss://host:6380/0?password=secret&db=2", "rediss://host:6380/0?password=***&db=2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redacted_url_hides_the_password_when_the_url_has_one(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
