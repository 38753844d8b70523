"""The "settings" checks: RAYLENS_* names that are no setting, and a one-line summary of them."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from raylens.cli.doctor.report import OK, WARN, Check
from raylens.cluster.settings import ENV_PREFIX, Settings

# RAYLENS_* variables that are not settings but are read by the project's own tooling.
TOOLING_VARIABLES = frozenset({"RAYLENS_CHAOS", "RAYLENS_NOTEBOOK_CI", "RAYLENS_NOTEBOOK_IMAGES"})


def known_setting_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def check_setting_names(environ: Mapping[str, str]) -> Check:
    """RAYLENS_* variables that are no setting are ignored silently by pydantic: say so."""
    known = known_setting_names()
    unknown = sorted(
        n
        for n in environ
        if n.upper().startswith(ENV_PREFIX)
        and n.upper() not in known
        and n.upper() not in TOOLING_VARIABLES
    )
    if not unknown:
        n = sum(1 for k in environ if k.upper().startswith(ENV_PREFIX))
        return Check("setting names", OK, f"{n} RAYLENS_* variable(s), all known", group="settings")
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return Check(
        "setting names",
        WARN,
        "not raylens settings, ignored: " + ", ".join(hints),
        "rename or remove them; every setting is listed in raylens/cluster/settings.py",
        group="settings",
        data={"unknown": unknown},
    )


def settings_summary(settings: Settings) -> str:
    store = "redis" if settings.redis_url else "sqlite"
    payloads = "redis" if settings.uses_redis_payloads else "fs"
    qdrant = "server" if settings.qdrant_url else "local"
    faces = f"faces {settings.face_detector}" if settings.faces_enabled else "faces off"
    return (
        f"data dir {settings.data_dir}; jobs {store}, payloads {payloads}, qdrant {qdrant}; "
        f"model {settings.clip_model} ({settings.clip_pretrained}); {faces}; "
        f"{settings.num_workers} worker(s) x {settings.worker_num_cpus:g} CPU"
        + (f" x {settings.worker_num_gpus:g} GPU" if settings.worker_num_gpus is not None else "")
    )
