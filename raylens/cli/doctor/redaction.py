"""What the report may show of the environment and settings: secrets and credentials redacted."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from raylens.cluster.settings import ENV_PREFIX, Settings

ENV_PREFIXES = (
    ENV_PREFIX,
    "RAY_",
    "CUDA_",
    "NVIDIA_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "TORCH_",
    "PYTORCH_",
    "HF_",
    "HUGGINGFACE_",
    "QDRANT_",
    "REDIS_",
)
ENV_NAMES = frozenset(
    {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "XDG_CACHE_HOME",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
    }
)


REDACTED = "***"
_SECRET_WORDS = (
    "KEY|KEYS|APIKEY|API_KEY|API_KEYS|TOKEN|TOKENS|SECRET|SECRETS|PASSWORD|PASSWD|PASS|"
    "CREDENTIAL|CREDENTIALS|AUTH_TOKEN|PRIVATE"
)
_SECRET_NAME = re.compile(rf"(^|_)({_SECRET_WORDS})(_|$)", re.IGNORECASE)
# A name ending like this holds where a secret is, or how it is used, not the secret itself.
_NOT_SECRET_SUFFIXES = ("_PATH", "_FILE", "_DIR", "_MODE", "_TYPE", "_NAME", "_PREFIX")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
_URL_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|access_token|api[_-]?key|apikey|key|"
    r"secret|auth|sig|signature)=)[^&;#\s]*",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable (or setting) name holds a secret by its name alone."""
    upper = name.upper()
    if upper.endswith(_NOT_SECRET_SUFFIXES):
        return False
    return bool(_SECRET_NAME.search(upper))


def redact_text(text: str) -> str:
    """Passwords and tokens inside URLs (anywhere in the text) replaced by ***:
    `redis://user:pw@h` -> `redis://user:***@h`, `https://TOKEN@h` -> `https://***@h`,
    `?password=x&api_key=y` -> `?password=***&api_key=***`."""

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m["userinfo"].partition(":")
        kept = f"{user}:{REDACTED}" if sep else REDACTED
        return f"{m['scheme']}{kept}@"

    text = _URL_USERINFO.sub(userinfo, text)
    return _URL_SECRET_PARAM.sub(lambda m: f"{m['key']}{REDACTED}", text)


def redact_value(name: str, value: str) -> str:
    """An environment value as safe to paste: secrets by name, credentials inside URLs."""
    if is_secret_name(name):
        if not value:
            return ""
        if name.upper() == f"{ENV_PREFIX}API_KEYS":
            n = len([k for k in value.split(",") if k.strip()])
            return f"{REDACTED} ({n} key{'s' if n != 1 else ''})"
        return REDACTED
    return redact_text(value)


def relevant_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that change how raylens, Ray, torch, Redis or Qdrant behave, redacted."""
    out = {}
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIXES) or upper in ENV_NAMES:
            out[name] = redact_value(name, environ[name])
    return out


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """Every setting's effective value (defaults included), secrets redacted."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, str):
            value = redact_value(name, value)
        out[name] = value
    return out


def redact_tree(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value
