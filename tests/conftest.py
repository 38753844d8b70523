"""Shared fixtures: each lives in its own module beside this file."""

import os
import sys

# Before anything imports ray: see raylens/__init__.py (Ray's `uv run` hook packages the .venv).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import pytest  # noqa: E402

from _redis_server import redis_server, redis_url  # noqa: F401, E402
from _system_fixtures import ray_cluster, running, settings_for  # noqa: F401, E402
from _tiny_clip import tiny_model  # noqa: F401, E402


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Print the fault-drill table when drills ran."""
    from _chaos_table import ROWS, render

    if ROWS:
        for line in render():
            terminalreporter.write_line(line)


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:  # type: ignore[no-untyped-def]
    """Leave with pytest's own exit status once everything is reported, skipping interpreter
    teardown: a CI run (all tests passed, summary printed) once died there with SIGSEGV in
    native code (Ray's core worker, torch, dlib threads), which would turn a green run red.
    Every test shuts down what it started; .ci/run's trap stops any Ray left behind."""
    if _exit_status and os.environ.get("RAYLENS_PYTEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
