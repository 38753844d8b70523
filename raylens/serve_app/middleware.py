"""Request guards of the HTTP app: the Host/Origin check and the in-flight limit (ASGI), and
API-key auth (a dependency)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware import Middleware

from raylens.cluster.settings import Settings, split_host
from raylens.errors import ErrorCode, Unauthorized

# The one route that answers without a key and is never refused: liveness must not depend on
# load or configuration.
HEALTHZ = "/v1/healthz"


def error_body(code: ErrorCode, message: str) -> bytes:
    """The one error shape, for answers the ASGI guards send themselves."""
    return json.dumps({"error": {"code": code.value, "message": message}}).encode()


async def send_error(
    send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::", "*"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class HostOriginGuard:
    """ASGI middleware against DNS rebinding and cross-site requests (form posts, fetch from
    another site's page). A Host header that is not the bind address (or in
    RAYLENS_HTTP_ALLOWED_HOSTS) is answered 421; an Origin header that is neither the
    ingress's own origin nor in RAYLENS_HTTP_ALLOWED_ORIGINS is answered 403. Requests without
    an Origin header (curl, the Python client, notebooks) pass; /v1/healthz is never refused."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.port = settings.http_port
        bind = settings.http_host.strip().lower().strip("[]")
        self.bind = f"{settings.http_host}:{settings.http_port}"
        listed = settings.http_allowed_host_list
        self.any_host = "*" in listed or (bind in WILDCARD and not listed)
        names = {bind} - WILDCARD
        if bind in LOOPBACK or bind.startswith("127.") or bind in WILDCARD:
            names |= LOOPBACK  # a wildcard binding is reached on loopback as well
        # (name, None) matches any port; the bind names answer on the bind port only.
        self.hosts: set[tuple[str, int | None]] = {(n, self.port) for n in names}
        for entry in listed:
            parsed = split_host(entry)
            if parsed is not None:
                self.hosts.add(parsed)
        origins = settings.http_allowed_origin_list
        self.any_origin = "*" in origins
        self.origins = {o.strip().lower().rstrip("/") for o in origins}

    def host_ok(self, host: tuple[str, int | None] | None) -> bool:
        if self.any_host:
            return True
        if host is None:
            return False
        name, port = host
        if port is None:  # no port in Host: any entry of that name
            return any(n == name for n, _ in self.hosts)
        return (name, None) in self.hosts or (name, port) in self.hosts

    def origin_ok(self, origin: str, host: tuple[str, int | None] | None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if self.any_origin or origin in self.origins:
            return True
        scheme, sep, rest = origin.partition("://")
        own = split_host(rest) if sep and "/" not in rest and "@" not in rest else None
        if own is None or host is None or own[0] != host[0]:
            return False  # "null" (sandboxed pages, file://) lands here too
        default = DEFAULT_PORTS.get(scheme)
        return (own[1] or default) == (host[1] or default)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == HEALTHZ:
            await self.app(scope, receive, send)
            return
        raw_host = raw_origin = None
        for key, value in scope.get("headers") or ():
            if key == b"host":
                raw_host = value.decode("latin-1")
            elif key == b"origin":
                raw_origin = value.decode("latin-1")
        host = split_host(raw_host) if raw_host is not None else None
        if raw_host is not None and not self.host_ok(host):
            message = (
                f"Host {raw_host!r} is not an address of this ingress (bound to {self.bind}); "
                "add it to RAYLENS_HTTP_ALLOWED_HOSTS to answer requests for it."
            )
            await send_error(send, 421, error_body(ErrorCode.INVALID_REQUEST, message[:500]))
            return
        if raw_origin is not None and not self.origin_ok(raw_origin, host):
            message = (
                f"cross-origin request from Origin {raw_origin[:200]!r} refused; add the "
                "origin to RAYLENS_HTTP_ALLOWED_ORIGINS to allow browser pages served from it."
            )
            await send_error(send, 403, error_body(ErrorCode.UNAUTHORIZED, message))
            return
        await self.app(scope, receive, send)


def host_origin_guard(settings: Settings) -> Middleware:
    """The Host/Origin check, from RAYLENS_HTTP_HOST, _PORT, _ALLOWED_HOSTS, _ALLOWED_ORIGINS."""
    return Middleware(HostOriginGuard, settings=settings)


def authoriser(settings: Settings) -> Any:
    """The auth dependency: a no-op without RAYLENS_API_KEYS (and then the OpenAPI document
    declares no security scheme: nothing is asked of a client), else a constant-time check."""
    keys = [k.encode() for k in settings.api_key_list]
    if not keys:

        async def open_access() -> None:
            return None

        return open_access
    bearer = HTTPBearer(auto_error=False, description="An API key from RAYLENS_API_KEYS.")

    async def authorised(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if creds is None or creds.scheme.lower() != "bearer":
            raise Unauthorized("send `Authorization: Bearer <api key>`")
        given = creds.credentials.encode()
        ok = False
        for key in keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Unauthorized("the API key is not valid")

    return authorised


class InflightLimit:
    """ASGI middleware: above `limit` requests in flight in this replica, answer 503
    `overloaded` with Retry-After at once (Serve's own rejections carry no Retry-After, so the
    replica admits more than this and does the refusing itself). /v1/healthz is never refused."""

    def __init__(self, app: Any, limit: int, retry_after_s: int) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.inflight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == HEALTHZ:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            body = error_body(
                ErrorCode.OVERLOADED,
                f"{self.inflight} requests in flight in this replica; limit "
                f"RAYLENS_HTTP_MAX_ONGOING_REQUESTS={self.limit}. Retry later.",
            )
            await send_error(send, 503, body, [(b"retry-after", self.retry_after)])
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def inflight_limit(settings: Settings) -> Middleware:
    """The in-flight limit of one replica, from RAYLENS_HTTP_MAX_ONGOING_REQUESTS."""
    return Middleware(
        InflightLimit,
        limit=settings.http_max_ongoing_requests,
        retry_after_s=settings.retry_after_s,
    )
