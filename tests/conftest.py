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
    """Leave with pytest's own exit status once everything is reported, skipping the C exit
    handlers: a CI run (all tests passed, summary printed) once died there with SIGSEGV, which
    would turn a green run red. The cause is Ray's, not raylens's (a core of the pytest process,
    2026-12-04, issue 14): Ray's OpenTelemetry metric exporter thread (_raylet.so,
    PeriodicExportingMetricReader -> OpenTelemetryMetricExporter::Export) outlives
    ray.shutdown() in a driver, wakes during exit() while the static destructors run, logs
    through RayLog into spdlog's registry, already destroyed, and jumps to a freed pointer. It
    shows in about 1 of 9 full runs. os._exit runs no exit handlers, so nothing races them.
    Every test shuts down what it started; .ci/run's trap stops any Ray left behind."""
    if _exit_status and os.environ.get("RAYLENS_PYTEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
    if os.environ.get("RAYLENS_PYTEST_NORMAL_EXIT") == "1":
        _report_exit_state()


def _report_exit_state() -> None:
    """With RAYLENS_PYTEST_NORMAL_EXIT=1 (the hunt for that SIGSEGV, issue 14): say which
    threads are still alive as the interpreter tears down, and where each one is, and turn
    faulthandler back on (pytest's own is off by now), so a crash in teardown names the Python
    frames of every thread. Ray's core worker is known to crash when a thread is still inside a
    Ray call when it shuts down (ray-project/ray#31145)."""
    import faulthandler
    import threading
    import traceback

    frames = sys._current_frames()
    alive = [t for t in threading.enumerate() if t is not threading.main_thread()]
    sys.stderr.write(f"\nraylens exit: {len(alive)} thread(s) besides the main one\n")
    for t in alive:
        stack = traceback.format_stack(frames[t.ident]) if t.ident in frames else []
        where = stack[-1].strip().splitlines()[0] if stack else "?"
        sys.stderr.write(f"  {t.name} (daemon={t.daemon}): {where}\n")
    ray = sys.modules.get("ray")
    if ray is not None:
        sys.stderr.write(f"raylens exit: ray.is_initialized() = {ray.is_initialized()}\n")
    sys.stderr.flush()
    faulthandler.enable(file=sys.stderr, all_threads=True)
