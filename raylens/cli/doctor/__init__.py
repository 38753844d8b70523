"""`raylens doctor`: one report about this machine and the configured services, for bug reports."""

# Every check is a plain function that returns `Check`s; the ones that judge facts (Redis
# configuration, redaction, lock holders) take dicts so they are testable without the service.
# Nothing here starts or stops anything: Ray is only joined (in a child process, time-boxed),
# Redis and Qdrant are only read, and the embedded engine (Qdrant Edge) is read from its files;
# a collection no process holds is opened briefly to count its points, one held is never
# opened. Heavy imports (torch, open_clip, ray, qdrant_client, qdrant_edge, redis) happen inside
# the checks, so importing this package stays cheap.

from raylens.cli.doctor.common import (
    GIB,
    PACKAGES,
    dist_version,
    fix_from_message,
    git_revision,
    package_versions,
    tcp_reachable,
)
from raylens.cli.doctor.model import MODEL_BATCH, check_faces, check_model
from raylens.cli.doctor.qdrant_index import (
    check_collection_sizes,
    check_qdrant_local,
    check_qdrant_server,
    lock_holders,
    qdrant_local_facts,
    qdrant_server_facts,
)
from raylens.cli.doctor.ray_cluster import (
    RAY_PROBE_MARK,
    RAY_PROBE_OVERHEAD_S,
    check_ray,
    check_worker_resources,
    probe_ray,
    ray_address,
)
from raylens.cli.doctor.redaction import (
    ENV_NAMES,
    ENV_PREFIXES,
    REDACTED,
    is_secret_name,
    redact_text,
    redact_value,
    redacted_settings,
    relevant_environment,
)
from raylens.cli.doctor.redis_store import (
    check_redis,
    check_redis_eviction,
    check_redis_persistence,
    redis_facts,
    url_decodes_responses,
)
from raylens.cli.doctor.report import (
    ERROR,
    GROUPS,
    OK,
    SKIP,
    STATUSES,
    WARN,
    Check,
    Report,
    print_report,
    render_text,
)
from raylens.cli.doctor.runner import DEFAULT_TIMEOUT_S, _finish, cli_doctor, run_doctor
from raylens.cli.doctor.settings_env import (
    TOOLING_VARIABLES,
    check_setting_names,
    known_setting_names,
    settings_summary,
)
from raylens.cli.doctor.store import LOW_DISK_BYTES, check_data_dir, check_sqlite_store
from raylens.cli.doctor.system import (
    check_device,
    check_platform,
    check_torch,
    platform_info,
    torch_info,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_NAMES",
    "ENV_PREFIXES",
    "ERROR",
    "GIB",
    "GROUPS",
    "LOW_DISK_BYTES",
    "MODEL_BATCH",
    "OK",
    "PACKAGES",
    "RAY_PROBE_MARK",
    "RAY_PROBE_OVERHEAD_S",
    "REDACTED",
    "SKIP",
    "STATUSES",
    "TOOLING_VARIABLES",
    "WARN",
    "Check",
    "Report",
    "_finish",
    "check_collection_sizes",
    "check_data_dir",
    "check_device",
    "check_faces",
    "check_model",
    "check_platform",
    "check_qdrant_local",
    "check_qdrant_server",
    "check_ray",
    "check_redis",
    "check_redis_eviction",
    "check_redis_persistence",
    "check_setting_names",
    "check_sqlite_store",
    "check_torch",
    "check_worker_resources",
    "cli_doctor",
    "dist_version",
    "fix_from_message",
    "git_revision",
    "is_secret_name",
    "known_setting_names",
    "lock_holders",
    "package_versions",
    "platform_info",
    "print_report",
    "probe_ray",
    "qdrant_local_facts",
    "qdrant_server_facts",
    "ray_address",
    "redact_text",
    "redact_value",
    "redacted_settings",
    "redis_facts",
    "relevant_environment",
    "render_text",
    "run_doctor",
    "settings_summary",
    "tcp_reachable",
    "torch_info",
    "url_decodes_responses",
]
