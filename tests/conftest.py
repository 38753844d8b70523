"""Shared fixtures: each lives in its own module beside this file."""

from _redis_server import redis_server, redis_url  # noqa: F401
from _system_fixtures import ray_cluster, running, settings_for  # noqa: F401
from _tiny_clip import tiny_model  # noqa: F401


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Print the fault-drill table when drills ran."""
    from _chaos_table import ROWS, render

    if ROWS:
        for line in render():
            terminalreporter.write_line(line)
