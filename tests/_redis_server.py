"""A real redis-server for tests: started on a free port in a temp dir, killable and restartable."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _ports import free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
NOT_INSTALLED = (
    "redis-server not found; run `make test` which installs it, or apt-get install redis-server"
)


class RedisServer:
    """One redis-server process with AOF on, so data survives kill() + start()."""

    def __init__(self, port: int, dir: Path) -> None:
        self.port = port
        self.dir = dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError(NOT_INSTALLED)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        """A binary-safe client with short timeouts, for fixtures and assertions."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5
        )

    def start(self) -> None:
        """Start (again) on the same port and dir; waits until the server answers PING."""
        if self.running:
            return
        assert self.executable is not None
        options = {
            "port": str(self.port),
            "dir": str(self.dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",  # no RDB snapshots: AOF alone is the durability under test
            "maxmemory-policy": "noeviction",
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "daemonize": "no",
            "logfile": str(self.log_path),
        }
        argv = [self.executable]
        for name, value in options.items():
            argv += [f"--{name}", value]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with {self.proc.returncode}; "
                        f"log:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer PING within "
                        f"{START_TIMEOUT_S}s; log:\n{self._log_tail()}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, like a crashed host process; what AOF fsynced (every second) survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM), falling back to SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (AOF on, noeviction, loopback only)."""
    if shutil.which("redis-server") is None:
        raise RuntimeError(NOT_INSTALLED)
    # Another process may grab the free port between probe and bind; try a few ports.
    last_error: RuntimeError | None = None
    for _ in range(3):
        server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
        try:
            server.start()
            break
        except RuntimeError as exc:
            last_error = exc
    else:
        assert last_error is not None
        raise last_error
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, emptied first; restarted if an earlier test left it killed."""
    redis_server.start()
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server.url
