"""Shared fixtures: each lives in its own module beside this file."""

from _redis_server import redis_server, redis_url  # noqa: F401
from _system_fixtures import ray_cluster, running, settings_for  # noqa: F401
from _tiny_clip import tiny_model  # noqa: F401
