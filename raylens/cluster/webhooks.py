"""Webhooks: what a job's terminal state POSTs to its callback_url, how it is signed, which URLs
are accepted, and when a failed delivery is tried again. Pure functions; the Webhooks actor
(actors/webhooks.py) does the I/O.

Signature (documented for receivers in the README): the header

    Raylens-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

over the exact body bytes, with RAYLENS_WEBHOOK_SECRET. A receiver recomputes it, compares in
constant time, and rejects a `t` older than its tolerance (verify(): 300 s), so a captured
request cannot be replayed later. `Raylens-Delivery` is the event id (the same on every retry
of one delivery): receivers deduplicate by it, since delivery is at least once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from raylens.cluster.jobs import Job
from raylens.errors import InvalidRequest

SIGNATURE_HEADER = "Raylens-Signature"
DELIVERY_HEADER = "Raylens-Delivery"
MAX_URL_CHARS = 2048


def body(job: Job, event_id: str) -> bytes:
    """The JSON POSTed for a job that reached done or failed."""
    result = job.result or {}
    doc: dict[str, Any] = {
        "type": f"job.{job.state.value}",
        "event_id": event_id,
        "job": {
            "id": job.id,
            "state": job.state.value,
            "sha256": job.sha256,
            "name": job.name,
            "attempts": job.attempts,
            "error_code": job.error_code.value if job.error_code else None,
            "point_id": result.get("point_id"),
            "updated_at": job.updated_at,
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(secret: str, payload: bytes, at: float | None = None) -> str:
    t = int(time.time() if at is None else at)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, payload: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and is recent (no replay)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    want = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts.get("v1", ""))


def check_url(url: str, allow_private: bool, resolve: bool = True) -> str:
    """The callback URL if it is acceptable, else InvalidRequest naming why: http(s) only, a
    host, and (unless allow_private) no loopback, link-local, private or otherwise non-public
    address, checked for every address the host resolves to (again before each delivery, so
    a name that later resolves inward is refused then)."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"callback_url is over {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"callback_url must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise InvalidRequest("callback_url has no host")
    if parts.username or parts.password:
        raise InvalidRequest("callback_url must not carry credentials")
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequest("callback_url has an invalid port") from None
    if allow_private or not resolve:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise InvalidRequest(
            f"callback_url host {parts.hostname!r} does not resolve: {exc}"
        ) from None
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not addr.is_global:
            raise InvalidRequest(
                f"callback_url host {parts.hostname!r} is a non-public address ({addr}); "
                "set RAYLENS_WEBHOOK_ALLOW_PRIVATE=true to allow loopback, link-local and "
                "private targets"
            )
    return url


def next_delay(attempt: int, first_s: float, cap_s: float) -> float:
    """Seconds before retry `attempt` (1 = the first retry): first_s doubling, capped."""
    return float(min(cap_s, first_s * (2 ** max(0, attempt - 1))))
