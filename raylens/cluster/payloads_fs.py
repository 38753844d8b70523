"""Filesystem payload store: one fsync'd file per content hash under the data dir."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from raylens.cluster.payloads import PayloadStore, StoredPayload, is_key, key_for
from raylens.errors import SourceMissing, StoreUnavailable


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (the file's own fsync does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FsPayloadStore(PayloadStore):
    """Payloads as files `root/ab/cdef...` named by their sha256 hex.

    A put writes a temporary file in the target folder, fsyncs it, renames it into place and
    fsyncs the folder, so a reader sees either no file or the whole file, and an acknowledged
    upload survives a crash. Any number of processes (workers on every node, given a shared
    filesystem) may read and write at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def _mkdir(self, folder: Path) -> None:
        if folder.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        _fsync_dir(self.root)  # the new shard folder's entry must survive a crash as well

    def put(self, data: bytes, sha256: str | None = None) -> str:
        key = key_for(data, sha256)
        path = self._path(key)
        try:
            # Same content, same name: an existing whole file is this payload already. Its size
            # is checked so a file truncated by something outside raylens gets rewritten.
            if path.is_file() and path.stat().st_size == len(data):
                # Its writer may be another process that renamed it in but has not fsynced the
                # folders yet: make the entries durable before acknowledging the payload.
                _fsync_dir(path.parent)
                _fsync_dir(self.root)
                return key
            self._mkdir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[2:10]}.", suffix=".tmp")
            try:
                try:
                    os.fchmod(fd, 0o644)  # mkstemp makes 0600; workers may run as another user
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)  # on every path: a failed write must not leak the descriptor
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store payload {key} at {path}: {exc}") from exc
        return key

    def get(self, key: str) -> bytes:
        if not is_key(key):
            raise SourceMissing(f"payload key {key!r} is not a sha256 hex digest")
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SourceMissing(f"payload {key} not found under {self.root}") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read payload {key} at {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return is_key(key) and self._path(key).is_file()

    def scan(self) -> Iterator[StoredPayload]:
        now = time.time()
        try:
            shards = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreUnavailable(f"cannot list payloads under {self.root}: {exc}") from exc
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except OSError as exc:
                raise StoreUnavailable(f"cannot list payloads under {shard.path}: {exc}") from exc
            for entry in entries:
                key = shard.name + entry.name
                if not is_key(key) or not entry.is_file(follow_symlinks=False):
                    continue  # a temporary file of a put under way, or not raylens's
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield StoredPayload(key, st.st_size, max(0.0, now - st.st_mtime))

    def size(self, key: str) -> int | None:
        if not is_key(key):
            return None
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read payload {key} under {self.root}: {exc}") from exc

    def delete(self, key: str) -> None:
        if not is_key(key):
            raise ValueError(f"payload key {key!r} is not a sha256 hex digest")
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete payload {key} under {self.root}: {exc}") from exc

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own file."""
