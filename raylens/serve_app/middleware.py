"""Request guards of the HTTP app: API-key auth (a dependency) and the in-flight limit (ASGI)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware import Middleware

from raylens.cluster.settings import Settings
from raylens.errors import ErrorCode, Unauthorized

# The one route that answers without a key and is never refused: liveness must not depend on
# load or configuration.
HEALTHZ = "/v1/healthz"


def authoriser(settings: Settings) -> Any:
    """The auth dependency: a no-op without RAYLENS_API_KEYS, else a constant-time check."""
    keys = [k.encode() for k in settings.api_key_list]
    bearer = HTTPBearer(auto_error=False, description="An API key from RAYLENS_API_KEYS.")

    async def authorised(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if not keys:
            return
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
            body = json.dumps(
                {
                    "error": {
                        "code": ErrorCode.OVERLOADED.value,
                        "message": f"{self.inflight} requests in flight in this replica; limit "
                        f"RAYLENS_HTTP_MAX_ONGOING_REQUESTS={self.limit}. Retry later.",
                    }
                }
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"retry-after", self.retry_after),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
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
