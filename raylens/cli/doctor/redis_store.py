"""The Redis checks: reachability, role, persistence and eviction, read from the server itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raylens.cli.doctor.common import gib
from raylens.cli.doctor.report import ERROR, OK, WARN, Check


def url_decodes_responses(url: str) -> bool:
    """Whether a redis URL's own options would turn the client into a text-decoding one."""
    from redis.connection import parse_url

    try:
        value = parse_url(url).get("decode_responses")
    except ValueError:
        return False
    if value is None:
        return False
    return str(value).lower() not in ("0", "false", "f", "n", "no", "off", "")


def _decode(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redis_facts(url: str, prefix: str, timeout_s: float) -> dict[str, Any]:
    """What the configured Redis says about itself: version, role, persistence, eviction, jobs.
    Built with raylens's own client factory, so a decoding URL is refused the same way."""
    import redis

    from raylens.cluster.store_redis import redis_client
    from raylens.errors import SettingsError

    facts: dict[str, Any] = {"decode_responses": url_decodes_responses(url)}
    try:
        client = redis_client(url, connect_timeout_s=timeout_s, socket_timeout_s=timeout_s)
    except SettingsError as exc:
        return {**facts, "client_error": exc.message}
    facts["client_decodes"] = client.connection_pool.connection_kwargs.get("decode_responses")
    try:
        info = client.info()
        facts.update(reachable=True, version=info.get("redis_version"), role=info.get("role"))
        facts["used_memory"] = info.get("used_memory")
        facts["maxmemory"] = info.get("maxmemory")
        facts["info"] = {
            k: info[k]
            for k in ("aof_enabled", "maxmemory_policy", "rdb_last_bgsave_status")
            if k in info
        }
        try:
            raw = client.config_get("*")
            cfg = {_decode(k): _decode(v) for k, v in raw.items()}
            keys = ("appendonly", "appendfsync", "save", "maxmemory-policy", "maxmemory")
            facts["config"] = {k: cfg[k] for k in keys if k in cfg}
        except redis.ResponseError as exc:  # CONFIG renamed or disabled (managed Redis)
            facts["config_error"] = str(exc)
        pipe = client.pipeline(transaction=False)
        pipe.zcard(f"{prefix}:jobs")
        for state in ("queued", "running", "done", "failed"):
            pipe.zcard(f"{prefix}:state:{state}")
        total, *per_state = pipe.execute()
        facts["jobs"] = {
            "total": total,
            **dict(zip(("queued", "running", "done", "failed"), per_state)),
        }
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        facts.update(reachable=False, error=str(exc))
    except redis.ResponseError as exc:  # NOAUTH, WRONGPASS, ...
        facts.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    return facts


def _redis_connection_checks(facts: Mapping[str, Any], where: str) -> list[Check] | None:
    """The checks when there is no usable connection; None when there is one."""
    if facts.get("client_error"):
        return [
            Check(
                "redis client",
                ERROR,
                facts["client_error"],
                "remove decode_responses from RAYLENS_REDIS_URL: raylens stores binary "
                "payloads and decodes JSON itself",
                group="store",
            )
        ]
    if not facts.get("reachable"):
        error = str(facts.get("error", "no answer"))
        auth = any(w in error.upper() for w in ("NOAUTH", "WRONGPASS", "AUTH"))
        return [
            Check(
                "redis",
                ERROR,
                f"{where} unreachable: {error}",
                "put the password in RAYLENS_REDIS_URL (redis://:PASSWORD@host:6379/0)"
                if auth
                else "start redis-server (appendonly yes, maxmemory-policy noeviction), or fix "
                "RAYLENS_REDIS_URL",
                group="store",
            )
        ]
    return None


def _config_value(facts: Mapping[str, Any], key: str) -> str | None:
    cfg = facts.get("config") or {}
    if key in cfg:
        return str(cfg[key])
    info = facts.get("info") or {}
    if key == "appendonly" and "aof_enabled" in info:
        return "yes" if int(info["aof_enabled"]) else "no"
    if key == "maxmemory-policy" and "maxmemory_policy" in info:
        return str(info["maxmemory_policy"])
    return None


def check_redis_eviction(facts: Mapping[str, Any]) -> Check:
    policy = _config_value(facts, "maxmemory-policy")
    maxmemory = _config_value(facts, "maxmemory")
    limit = f", maxmemory {maxmemory}" if maxmemory not in (None, "0") else ", no maxmemory"
    if policy is None:
        return Check(
            "redis eviction",
            WARN,
            "maxmemory-policy could not be read (CONFIG GET refused: "
            f"{facts.get('config_error', '?')})",
            "make sure the server runs with maxmemory-policy noeviction",
            group="store",
        )
    if policy == "noeviction":
        return Check(
            "redis eviction",
            OK,
            f"maxmemory-policy noeviction{limit}: a full server refuses writes, drops nothing",
            group="store",
        )
    which = (
        "keys with a TTL (idempotency records)"
        if policy.startswith("volatile-")
        else "any key: job records and payloads"
    )
    return Check(
        "redis eviction",
        WARN,
        f"maxmemory-policy {policy}{limit}: when memory is full Redis deletes {which}",
        "set maxmemory-policy noeviction (redis.conf, or `CONFIG SET maxmemory-policy "
        "noeviction` then `CONFIG REWRITE`)",
        group="store",
    )


def check_redis_persistence(facts: Mapping[str, Any]) -> Check:
    aof = _config_value(facts, "appendonly")
    fsync = _config_value(facts, "appendfsync")
    save = _config_value(facts, "save")
    snapshots = f"RDB save '{save}'" if save else "no RDB snapshots"
    if aof is None:
        return Check(
            "redis persistence",
            WARN,
            f"appendonly could not be read (CONFIG GET refused: {facts.get('config_error', '?')})",
            "make sure the server runs with appendonly yes",
            group="store",
        )
    if aof != "yes":
        lost = "since the last snapshot" if save else "- every job and payload"
        return Check(
            "redis persistence",
            WARN,
            f"appendonly {aof} (AOF off), {snapshots}: a Redis restart loses what was written "
            f"{lost}",
            "set appendonly yes (redis.conf, or `CONFIG SET appendonly yes` then `CONFIG REWRITE`)",
            group="store",
        )
    if fsync == "no":
        return Check(
            "redis persistence",
            WARN,
            f"appendonly yes but appendfsync no, {snapshots}: the OS decides when the AOF "
            "reaches the disk (about 30 s of acknowledged jobs can be lost on a crash)",
            "set appendfsync everysec (or always)",
            group="store",
        )
    window = "at most 1 s of writes lost on a host crash" if fsync == "everysec" else "no loss"
    return Check(
        "redis persistence",
        OK,
        f"appendonly yes, appendfsync {fsync or '?'} ({window}), {snapshots}",
        group="store",
    )


def check_redis(facts: Mapping[str, Any], where: str, payloads: bool) -> list[Check]:
    """Verdicts on redis_facts (a plain dict, so tests can feed any configuration)."""
    failed = _redis_connection_checks(facts, where)
    if failed is not None:
        return failed
    role = facts.get("role") or "?"
    jobs = facts.get("jobs") or {}
    counts = ", ".join(f"{k} {v}" for k, v in jobs.items() if k != "total")
    detail = (
        f"{where}: Redis {facts.get('version')}, role {role}, "
        f"{gib(facts.get('used_memory'))} used; jobs{' and payloads' if payloads else ''} "
        f"here; {jobs.get('total', 0)} jobs ({counts})"
    )
    data = {k: facts[k] for k in ("version", "role", "config", "info", "jobs") if k in facts}
    checks = []
    if role not in ("master", "?"):
        checks.append(
            Check(
                "redis",
                ERROR,
                detail + "; this server is a read-only replica",
                "point RAYLENS_REDIS_URL at the primary",
                group="store",
                data=data,
            )
        )
    else:
        checks.append(Check("redis", OK, detail, group="store", data=data))
    checks.append(
        Check(
            "redis client",
            OK,
            "binary-safe: raylens's client keeps replies as bytes (decode_responses=False)",
            group="store",
        )
    )
    checks.append(check_redis_persistence(facts))
    checks.append(check_redis_eviction(facts))
    return checks
