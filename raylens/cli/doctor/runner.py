"""`run_doctor`: every check in report order, each guarded; and the `raylens doctor` command."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from raylens.cli.doctor.common import dist_version, git_revision, package_versions
from raylens.cli.doctor.model import check_faces, check_model
from raylens.cli.doctor.qdrant_index import (
    check_collection_sizes,
    check_qdrant_local,
    check_qdrant_server,
    qdrant_local_facts,
    qdrant_server_facts,
)
from raylens.cli.doctor.ray_cluster import check_ray, check_worker_resources, probe_ray
from raylens.cli.doctor.redaction import (
    redact_text,
    redact_tree,
    redacted_settings,
    relevant_environment,
)
from raylens.cli.doctor.redis_store import check_redis, redis_facts
from raylens.cli.doctor.report import ERROR, GROUPS, OK, SKIP, Check, Report, print_report
from raylens.cli.doctor.settings_env import check_setting_names, settings_summary
from raylens.cli.doctor.store import check_data_dir, check_sqlite_store
from raylens.cli.doctor.system import (
    check_device,
    check_platform,
    check_torch,
    nvidia_hardware,
    platform_info,
    torch_info,
)
from raylens.cluster.settings import Settings

DEFAULT_TIMEOUT_S = 3.0


def _guard(name: str, group: str, fn: Callable[[], Any]) -> list[Check]:
    """Run one check; a bug or surprise inside it becomes an error check, not a crash."""
    try:
        out = fn()
    except Exception as exc:
        return [
            Check(
                name,
                ERROR,
                f"the check itself failed: {type(exc).__name__}: {str(exc)[:400]}",
                "report this together with the rest of this output",
                group=group,
            )
        ]
    if out is None:
        return []
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _system_checks(info: dict[str, Any]) -> list[Check]:
    checks = check_platform(info["platform"])

    def torch_checks() -> list[Check]:
        info["torch"] = torch_info()
        return check_torch(info["torch"], nvidia_hardware())

    return checks + _guard("torch", "system", torch_checks)


def _index_checks(settings: Settings, timeout_s: float, ray_facts: Mapping[str, Any]) -> Any:
    if settings.qdrant_url:
        facts = qdrant_server_facts(settings.qdrant_url, settings.qdrant_api_key, timeout_s)
        return facts, check_qdrant_server(facts, redact_text(settings.qdrant_url))
    index_running = settings.index_actor_name in (ray_facts.get("actors") or [])
    # With the index actor up, nothing is opened (it opens each collection at first use).
    facts = qdrant_local_facts(settings.qdrant_path, count_free=not index_running)
    return facts, check_qdrant_local(facts, index_running)


def run_doctor(
    settings: Settings | None,
    *,
    settings_error: str | None = None,
    model: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    address: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Report:
    """Every check, in report order. settings is None when they did not validate
    (settings_error says why): then only what does not need them runs."""
    t0 = time.perf_counter()
    env = dict(os.environ if environ is None else environ)
    info: dict[str, Any] = {
        "raylens_version": dist_version("raylens"),
        "git": git_revision(),
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "platform": platform_info(),
        "packages": package_versions(),
        "environment": relevant_environment(env),
    }
    checks = _system_checks(info)
    if settings is None:
        checks.append(
            Check(
                "settings",
                ERROR,
                settings_error or "invalid settings",
                "fix the RAYLENS_* variables named in the detail",
                group="settings",
            )
        )
        checks.append(check_setting_names(env))
        return _finish(checks, info, t0)
    info["settings"] = redacted_settings(settings)
    checks += _guard("device", "system", lambda: check_device(settings))
    checks.append(Check("settings", OK, settings_summary(settings), group="settings"))
    checks.append(check_setting_names(env))

    ray_facts: dict[str, Any] = {}

    def ray_checks() -> list[Check]:
        ray_facts.update(probe_ray(settings, address, timeout_s, env))
        return check_ray(ray_facts, dist_version("ray"))

    checks += _guard("ray cluster", "ray", ray_checks)
    local_gpus = len((info.get("torch") or {}).get("gpus") or [])
    checks += _guard(
        "worker resources", "ray", lambda: check_worker_resources(settings, ray_facts, local_gpus)
    )

    checks += _guard("data dir", "store", lambda: check_data_dir(settings))
    if settings.redis_url:
        url = settings.redis_url
        checks += _guard(
            "redis",
            "store",
            lambda: check_redis(
                redis_facts(url, settings.redis_prefix, timeout_s),
                redact_text(url),
                settings.uses_redis_payloads,
            ),
        )
    else:
        checks += _guard("job store", "store", lambda: check_sqlite_store(settings))
        checks.append(
            Check("redis", SKIP, "not configured (RAYLENS_REDIS_URL unset)", group="store")
        )

    index: dict[str, Any] = {}

    def index_checks() -> Check:
        facts, check = _index_checks(settings, timeout_s, ray_facts)
        index.update(facts)
        return check

    checks += _guard("qdrant", "index", index_checks)

    model_dim = None
    if model:
        model_checks = _guard("clip model", "models", lambda: check_model(settings))
        checks += model_checks
        model_dim = next((c.data.get("dim") for c in model_checks if c.data.get("dim")), None)
    else:
        checks.append(Check("clip model", SKIP, "skipped (--no-model)", group="models"))
    checks += _guard("face models", "models", lambda: check_faces(settings))
    checks += _guard(
        "collection sizes",
        "index",
        lambda: check_collection_sizes(settings, index.get("collections") or {}, model_dim),
    )
    return _finish(checks, info, t0)


def _finish(checks: list[Check], info: dict[str, Any], t0: float) -> Report:
    for c in checks:  # anything an exception or a service echoed back must not leak a secret
        c.detail = redact_text(c.detail)
        c.fix = redact_text(c.fix) if c.fix else c.fix
        c.data = redact_tree(c.data)
    order = {g: i for i, g in enumerate(GROUPS)}
    checks.sort(key=lambda c: order.get(c.group, len(GROUPS)))  # stable: keeps run order
    return Report(checks, info, time.perf_counter() - t0)


def cli_doctor(args: Any) -> int:
    """`raylens doctor`: runs even when the settings do not validate (that is a check too)."""
    from raylens.cluster.settings import load_settings
    from raylens.errors import SettingsError

    settings: Settings | None
    error = None
    try:
        settings = load_settings()
    except SettingsError as exc:
        settings, error = None, exc.message
    if not args.json and sys.stderr.isatty() and not args.no_model and settings is not None:
        print(
            f"raylens doctor: checking; includes a timed load of {settings.clip_model} "
            "(--no-model skips it)...",
            file=sys.stderr,
        )
    # Libraries that print must not break the JSON on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_doctor(
            settings,
            settings_error=error,
            model=not args.no_model,
            timeout_s=args.timeout,
            address=getattr(args, "address", None),
        )
    print_report(report, as_json=args.json)
    return report.exit_code
