"""Deprecated import path of the HTTP client: use `raylens.client` (kept for one release)."""

import warnings

from raylens.client import *  # noqa: F403
from raylens.client import ApiError, Client, RetriesExhausted  # noqa: F401

warnings.warn(
    "raylens.cluster.client moved to raylens.client; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
