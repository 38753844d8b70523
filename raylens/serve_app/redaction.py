"""What an HTTP answer may say about the inside: messages with credentials, tokens, stack traces
and the data dir taken out. The server log keeps the full text; clients get the redacted one.

    redis://user:pass@cache:6379/0     -> redis://***@cache:6379/0
    https://qdrant:6333/x?api_key=...  -> https://qdrant:6333/x    (query, fragment dropped)
    password=hunter2, api_key: abc     -> password=***, api_key: ***
    Bearer abc.def                     -> Bearer ***
    /srv/raylens/jobs.db               -> <data_dir>/jobs.db       (RAYLENS_DATA_DIR)
    a configured secret anywhere       -> ***                      (API keys, Qdrant key, ...)
    Traceback (most recent call last): ... and `File "..."` frames -> cut
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from raylens.cluster.settings import Settings

MASK = "***"
MAX_MESSAGE = 1000  # characters of one redacted message
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]{1,15}://[^\s'"<>`]+""")
_URL_TAIL = ".,;:!?)]}"
_KEY_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access[_-]?token|api[_-]?key|apikey|"
    r"access[_-]?key|private[_-]?key|credentials?|authorization)"
    r"(\"?'?\s*[=:]\s*\"?'?)(?!\*\*\*)((?:bearer\s+|basic\s+)?[^\s,;&'\"]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+(?!\*\*\*)[A-Za-z0-9._~+/=\-]{4,}")
# Where a message turns into a stack trace: Python's header, or the first frame line of one
# (Ray's RayTaskError text carries the remote traceback without the header).
_TRACE = re.compile(r"Traceback \(most recent call last\)|\n\s*File \"[^\"]*\", line \d+")
_SHORTEST_SECRET = 4  # shorter configured values are not masked everywhere (too many matches)


def _url(match: re.Match[str]) -> str:
    text = match.group(0)
    tail = ""
    while text and text[-1] in _URL_TAIL:
        text, tail = text[:-1], text[-1] + tail
    scheme, _, rest = text.partition("://")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    rest = rest[:cut]
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    return f"{scheme}://{authority}{slash}{path}{tail}"


def _url_secrets(url: str | None) -> list[str]:
    """The user name, password and query values of a configured URL."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password, parts.username]
    except ValueError:
        return []
    found += [v for _, _, v in (p.partition("=") for p in parts.query.split("&"))]
    return [unquote(s) for s in found if s]


class Redactor:
    """Redacts messages for clients of one ingress, knowing its settings' secrets and paths."""

    def __init__(self, settings: Settings) -> None:
        secrets: list[str] = [settings.qdrant_api_key or "", *settings.api_key_list]
        secrets += _url_secrets(settings.redis_url) + _url_secrets(settings.qdrant_url)
        self.secrets = sorted(
            {s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True
        )
        root = settings.data_dir
        paths = {str(root)}
        try:
            paths.add(str(root.resolve()))
        except OSError:
            pass
        self.paths = sorted((p.rstrip("/") for p in paths if p.rstrip("/")), key=len, reverse=True)

    def __call__(self, text: str | None) -> str:
        if not text:
            return text or ""
        trace = _TRACE.search(text)
        if trace:
            text = text[: trace.start()].rstrip() + " (traceback in the server log)"
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for path in self.paths:
            text = text.replace(path, "<data_dir>")
        text = _URL.sub(_url, text)
        text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE - 1] + "…"
        return text

    def values(self, value: Any) -> Any:
        """Every string in a JSON-like value redacted (lists and dicts walked)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.values(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.values(v) for v in value]
        return value
