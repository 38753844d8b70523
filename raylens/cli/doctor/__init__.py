"""`raylens doctor`: one report about this machine and the configured services, to paste into a bug.

Every check is a plain function that returns `Check`s (name, status ok/warn/error/skip, detail,
fix); the ones that judge facts (Redis configuration, redaction, lock holders) take dicts so
they are testable without the service. `run_doctor` runs them in order and `print_report`
renders the result as text or JSON. Nothing here starts or stops anything: Ray is only joined
(in a child process, time-boxed), Redis and Qdrant are only read, and Qdrant local mode is
inspected from its files without taking its lock.

Heavy imports (torch, open_clip, ray, qdrant_client, redis) happen inside the checks.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from raylens.cluster.settings import ENV_PREFIX, Settings

OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"
STATUSES = (OK, WARN, ERROR, SKIP)
GROUPS = ("system", "settings", "ray", "store", "index", "models")
DEFAULT_TIMEOUT_S = 3.0
MODEL_BATCH = 4
LOW_DISK_BYTES = 1 << 30
GIB = float(1 << 30)
# The Ray check: a TCP connect gets --timeout; the child that then joins the cluster gets
# 3 x --timeout (join, queue stats, worker reports) plus this much for importing Ray.
RAY_PROBE_OVERHEAD_S = 10.0
RAY_PROBE_MARK = "RAYLENS_DOCTOR_RAY "

# RAYLENS_* variables that are not settings but are read by the project's own tooling.
TOOLING_VARIABLES = frozenset({"RAYLENS_CHAOS", "RAYLENS_NOTEBOOK_CI", "RAYLENS_NOTEBOOK_IMAGES"})
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
PACKAGES = (
    "raylens",
    "ray",
    "torch",
    "torchvision",
    "open_clip_torch",
    "qdrant-client",
    "redis",
    "pydantic",
    "pydantic-settings",
    "numpy",
    "pillow",
    "av",
    "dlib-bin",
    "dlib",
    "face-recognition-models",
    "huggingface-hub",
)

# ---- the report ---------------------------------------------------------------------------------


@dataclass
class Check:
    """One verdict. warn and error always carry a fix (a default one when none is given)."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    group: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")
        if self.status in (WARN, ERROR) and not self.fix:
            self.fix = "see the detail above"
        if self.status in (OK, SKIP):
            self.fix = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.fix:
            out["fix"] = self.fix
        out["group"] = self.group
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class Report:
    checks: list[Check]
    info: dict[str, Any]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(c.status == ERROR for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def by_name(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": [c.to_dict() for c in self.checks],
            "ok": self.ok,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            **self.info,
            "seconds": round(self.seconds, 2),
        }


# ---- redaction ----------------------------------------------------------------------------------

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


# ---- small helpers ------------------------------------------------------------------------------

_FIX_START = re.compile(
    r"(?:^|[;:.]\s+|\s-\s)("
    r"(?:[Ss]et|[Uu]se|[Cc]heck|[Cc]hoose|[Pp]oint|[Ii]nstall|pip install|[Rr]un|[Ss]tart|"
    r"[Uu]pgrade|[Rr]emove|[Ll]ower|[Rr]aise)\b.*)$",
    re.S,
)


def fix_from_message(message: str, default: str) -> str:
    """The remedy a raylens error message ends with ("...; set RAYLENS_X to ..."), or default."""
    m = _FIX_START.search(message.strip())
    if not m:
        return default
    fix = m.group(1).strip().rstrip(".")
    return fix[0].lower() + fix[1:]


def _gib(n: float | int | None) -> str:
    if n is None:
        return "?"
    if n < GIB:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / GIB:.1f} GiB"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    return {p: v for p in PACKAGES if (v := _version(p)) is not None}


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# ---- system -------------------------------------------------------------------------------------


def _os_release() -> str | None:
    text = _read(Path("/etc/os-release"))
    if text:
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    mac = platform.mac_ver()[0]
    return f"macOS {mac}" if mac else None


def _memory() -> tuple[int | None, int | None]:
    total = avail = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = _read(Path("/proc/meminfo")) or ""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    if m:
        avail = int(m.group(1)) * 1024
    return total, avail


def _cpu_limit() -> float | None:
    """A cgroup v2 CPU quota (containers), in CPUs."""
    text = _read(Path("/sys/fs/cgroup/cpu.max"))
    if not text:
        return None
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    try:
        return int(quota) / int(period)
    except ValueError:
        return None


def platform_info() -> dict[str, Any]:
    total, avail = _memory()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "os": _os_release(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_limit": _cpu_limit(),
        "memory_total_bytes": total,
        "memory_available_bytes": avail,
    }


def check_platform(info: Mapping[str, Any]) -> list[Check]:
    cpus = f"{info['cpus']} CPUs"
    if info.get("cpus_usable") and info["cpus_usable"] != info["cpus"]:
        cpus += f" ({info['cpus_usable']} usable)"
    if info.get("cpu_limit"):
        cpus += f", cgroup limit {info['cpu_limit']:g}"
    mem = f"{_gib(info['memory_total_bytes'])} RAM ({_gib(info['memory_available_bytes'])} free)"
    os_name = f" ({info['os']})" if info.get("os") else ""
    return [
        Check("platform", OK, f"{info['platform']}{os_name}; {cpus}; {mem}", group="system"),
        Check(
            "python",
            OK,
            f"{info['python']} {info['python_implementation']} ({info['python_executable']})",
            group="system",
        ),
    ]


def _nvidia_hardware() -> bool:
    """Whether an NVIDIA driver is visible on this machine, whatever torch thinks."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "threads": torch.get_num_threads(),
        "gpus": [],
    }
    mps = getattr(torch.backends, "mps", None)
    info["mps_built"] = bool(mps is not None and mps.is_built())
    info["mps_available"] = bool(mps is not None and mps.is_available())
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpu: dict[str, Any] = {
                "index": i,
                "name": props.name,
                "memory_total_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
            }
            with contextlib.suppress(Exception):
                gpu["memory_free_bytes"] = int(torch.cuda.mem_get_info(i)[0])
            info["gpus"].append(gpu)
    return info


def check_torch(info: Mapping[str, Any], nvidia_present: bool) -> list[Check]:
    build = f"CUDA {info['cuda_build']} build" if info["cuda_build"] else "CPU-only build"
    cuda = "CUDA available" if info["cuda_available"] else "CUDA not available"
    if info["cuda_available"] and info.get("cudnn"):
        cuda += f" (cuDNN {info['cudnn']})"
    mps = "MPS available" if info["mps_available"] else "MPS not available"
    detail = f"torch {info['version']} ({build}); {cuda}; {mps}; {info['threads']} threads"
    checks = []
    if nvidia_present and not info["cuda_available"]:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
        checks.append(
            Check(
                "torch",
                WARN,
                detail + "; an NVIDIA driver is present but torch cannot use it",
                "unset CUDA_VISIBLE_DEVICES (it hides every GPU)"
                if hidden
                else "install a CUDA build of torch that matches the driver "
                "(https://pytorch.org/get-started/locally/), or check the driver with nvidia-smi",
                group="system",
            )
        )
    else:
        checks.append(Check("torch", OK, detail, group="system"))
    gpus = info.get("gpus") or []
    if gpus:
        lines = []
        for g in gpus:
            free = f", {_gib(g['memory_free_bytes'])} free" if "memory_free_bytes" in g else ""
            lines.append(
                f"{g['index']}: {g['name']} ({_gib(g['memory_total_bytes'])}{free}, "
                f"compute {g['capability']})"
            )
        checks.append(Check("gpus", OK, "; ".join(lines), group="system", data={"gpus": gpus}))
    else:
        checks.append(Check("gpus", SKIP, "no CUDA GPU visible to torch", group="system"))
    return checks


def check_device(settings: Settings) -> Check:
    """The device and dtype a worker on this machine would pick (no model loaded)."""
    from raylens.errors import ModelLoadError
    from raylens.models.device import select_device, select_dtype

    try:
        device = select_device(settings.clip_device)
        dtype = select_dtype(device, settings.clip_precision)
    except ModelLoadError as exc:
        return Check(
            "device",
            ERROR,
            exc.message,
            fix_from_message(exc.message, "set RAYLENS_CLIP_DEVICE=auto"),
            group="system",
        )
    dt = str(dtype).replace("torch.", "")
    return Check(
        "device",
        OK,
        f"RAYLENS_CLIP_DEVICE={settings.clip_device}, RAYLENS_CLIP_PRECISION="
        f"{settings.clip_precision} -> {device} ({dt}) on this machine",
        group="system",
        data={"device": device, "dtype": dt},
    )


# ---- settings -----------------------------------------------------------------------------------


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


def check_data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    writable = os.access(existing, os.W_OK | os.X_OK)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    where = str(path) if path.exists() else f"{path} (not created yet)"
    detail = f"{where}; {_gib(free)} free on its disk"
    data = {"path": str(path), "exists": path.exists(), "free_bytes": free}
    if not writable:
        return Check(
            "data dir",
            ERROR,
            detail + f"; {existing} is not writable",
            "set RAYLENS_DATA_DIR to a folder this user can write",
            group="store",
            data=data,
        )
    if free is not None and free < LOW_DISK_BYTES:
        return Check(
            "data dir",
            WARN,
            detail + "; less than 1 GiB free",
            "free disk space or set RAYLENS_DATA_DIR to a larger disk",
            group="store",
            data=data,
        )
    return Check("data dir", OK, detail, group="store", data=data)


def check_sqlite_store(settings: Settings) -> Check:
    path = settings.sqlite_path
    if not path.exists():
        return Check(
            "job store",
            OK,
            f"sqlite {path}: not created yet (`raylens up` creates it)",
            group="store",
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            rows = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check(
            "job store",
            ERROR,
            f"sqlite {path} cannot be read: {exc}",
            "check the file's permissions, or move it away and let `raylens up` create a new "
            "one (its jobs are lost)",
            group="store",
        )
    jobs = {state: n for state, n in rows}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "no jobs"
    return Check(
        "job store",
        OK,
        f"sqlite {path} ({mode} journal, {path.stat().st_size / 1e6:.1f} MB): {counts}",
        group="store",
        data={"backend": "sqlite", "path": str(path), "jobs": jobs},
    )


# ---- ray ----------------------------------------------------------------------------------------


def ray_address(
    settings: Settings, address: str | None, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """(the address given to ray.init, what to call it). Same order as system.resolve_address:
    --address, RAYLENS_RAY_ADDRESS, RAY_ADDRESS, else the local cluster `raylens up` starts."""
    if address or settings.ray_address:
        chosen = address or settings.ray_address
        return chosen, str(chosen)
    if environ.get("RAY_ADDRESS"):
        return None, f"{environ['RAY_ADDRESS']} (RAY_ADDRESS)"
    return settings.local_ray_address, settings.local_ray_address


def _gcs_host_port(address: str) -> tuple[str, int] | None:
    """host and port to probe for address, or None when only Ray can resolve it."""
    if address == "auto":
        current = _read(Path("/tmp/ray/ray_current_cluster"))
        if not current or not current.strip():
            return ("", 0)  # no local cluster was ever started, or it was stopped
        address = current.strip().splitlines()[0]
    address = re.sub(r"^[a-z]+://", "", address).rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _ray_probe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Runs in the child: join the cluster, read its resources, nodes and raylens actors."""
    import logging

    import ray

    address, namespace, timeout = spec["address"], spec["namespace"], float(spec["timeout"])
    if address is None and not os.environ.get("RAY_ADDRESS"):
        raise RuntimeError("no address: refusing to start a cluster")
    ray.init(
        address=address,
        namespace=namespace,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        out: dict[str, Any] = {
            "ray_version": ray.__version__,
            "gcs_address": ray.get_runtime_context().gcs_address,
            "cluster_resources": ray.cluster_resources(),
            "available_resources": ray.available_resources(),
            "nodes": [
                {
                    "node_id": n.get("NodeID", "")[:12],
                    "address": n.get("NodeManagerAddress"),
                    "hostname": n.get("NodeManagerHostname"),
                    "alive": n.get("Alive"),
                    "resources": n.get("Resources", {}),
                }
                for n in ray.nodes()
            ],
        }
        names = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == namespace
        )
        out["actors"] = names
        if spec["queue"] in names:
            with contextlib.suppress(Exception):
                queue = ray.get_actor(spec["queue"], namespace=namespace)
                out["queue"] = ray.get(queue.stats.remote(), timeout=timeout)
        out["workers"] = _worker_reports(
            [n for n in names if n.startswith(spec["worker_prefix"])], namespace, timeout
        )
        return out
    finally:
        ray.shutdown()


def _worker_reports(names: list[str], namespace: str, timeout: float) -> list[dict[str, Any]]:
    """Each worker's model report, asked of all at once; a silent worker is reported as such."""
    import ray

    refs = {}
    reports: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            refs[name] = ray.get_actor(name, namespace=namespace).report.remote()
        except Exception as exc:
            reports[name] = {"worker": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if refs:
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        for name, ref in refs.items():
            if ref not in ready:
                reports[name] = {"worker": name, "error": f"no answer within {timeout:g}s"}
                continue
            try:
                reports[name] = ray.get(ref)
            except Exception as exc:
                reports[name] = {"worker": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return [reports[n] for n in names]


def probe_ray(
    settings: Settings, address: str | None, timeout_s: float, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Facts about the configured Ray cluster: {state: not_running|timeout|failed|ok, ...}.

    A TCP connect first (nothing listening: answered in timeout_s, no Ray import); then a
    child process joins the cluster, so a hung connect is killed, never waited on."""
    chosen, shown = ray_address(settings, address, environ)
    given = chosen if chosen is not None else environ.get("RAY_ADDRESS", "")
    target = _gcs_host_port(given)
    facts: dict[str, Any] = {"address": shown, "given": given, "namespace": settings.namespace}
    if target == ("", 0) or (target and not tcp_reachable(*target, timeout_s)):
        return {**facts, "state": "not_running"}
    spec = {
        "address": chosen,
        "namespace": settings.namespace,
        "queue": settings.queue_actor_name,
        "worker_prefix": settings.worker_name(0)[:-1],
        "timeout": timeout_s,
    }
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    limit = 3 * timeout_s + RAY_PROBE_OVERHEAD_S  # join, queue stats, worker reports
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "raylens.cli.doctor", "--ray-probe", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=limit,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {**facts, "state": "timeout", "seconds": limit}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RAY_PROBE_MARK):
            return {**facts, **json.loads(line[len(RAY_PROBE_MARK) :])}
    tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return {**facts, "state": "failed", "error": "\n".join(tail[-3:])[-600:]}


def _ray_fix(error: str) -> str:
    low = error.lower()
    if "token" in low or "auth" in low or "unauthenticated" in low:
        return (
            "the cluster wants token authentication: set RAY_AUTH_MODE=token and make the "
            "token available (~/.ray/auth_token or RAY_AUTH_TOKEN)"
        )
    if "version" in low:
        return "use the same Ray and Python versions as the cluster"
    return "check RAYLENS_RAY_ADDRESS / RAY_ADDRESS, or start raylens with `raylens up --detach`"


def _resources_line(res: Mapping[str, Any], avail: Mapping[str, Any]) -> str:
    parts = []
    for key in ("CPU", "GPU"):
        if key in res:
            parts.append(f"{key} {avail.get(key, 0):g}/{res[key]:g} free")
    for key in ("memory", "object_store_memory"):
        if key in res:
            parts.append(f"{key.replace('_', ' ')} {_gib(res[key])}")
    return ", ".join(parts)


def check_ray(facts: Mapping[str, Any], ray_version: str | None) -> list[Check]:
    """Verdicts on probe_ray's facts: the cluster, and raylens on it."""
    where = facts["address"]
    version = f"ray {ray_version or 'not installed'}"
    state = facts.get("state", "ok")
    if state == "not_running":
        return [
            Check(
                "ray cluster",
                WARN,
                f"{version}; no Ray cluster at {where} (not running)",
                "start raylens with `raylens up --detach`, or point RAYLENS_RAY_ADDRESS "
                "(or RAY_ADDRESS) at a running cluster",
                group="ray",
            ),
            Check("raylens actors", SKIP, "no Ray cluster to look in", group="ray"),
        ]
    if state in ("timeout", "failed"):
        error = facts.get("error") or f"did not answer within {facts.get('seconds', '?')}s"
        status = WARN if state == "timeout" else ERROR
        return [
            Check(
                "ray cluster",
                status,
                f"{version}; cannot join the Ray cluster at {where}: {error}",
                _ray_fix(error)
                if state == "failed"
                else "check that the cluster is healthy (`ray status`), or raise --timeout",
                group="ray",
            ),
            Check("raylens actors", SKIP, "could not join the Ray cluster", group="ray"),
        ]
    nodes = facts.get("nodes", [])
    alive = sum(1 for n in nodes if n.get("alive"))
    detail = (
        f"{version} here, {facts.get('ray_version')} on the cluster; joined {where} "
        f"(GCS {facts.get('gcs_address')}): {alive}/{len(nodes)} node(s) alive; "
        + _resources_line(facts.get("cluster_resources", {}), facts.get("available_resources", {}))
    )
    data = {
        k: facts[k] for k in ("cluster_resources", "available_resources", "nodes") if k in facts
    }
    return [Check("ray cluster", OK, detail, group="ray", data=data), _check_actors(facts)]


def _check_actors(facts: Mapping[str, Any]) -> Check:
    actors = facts.get("actors", [])
    if not any(a.endswith("-queue") for a in actors):
        return Check(
            "raylens actors",
            WARN,
            f"Ray is running but raylens is not (no queue actor in namespace "
            f"{facts.get('namespace', '?')!r}; RAYLENS_NAMESPACE)"
            + (f"; named actors: {', '.join(actors)}" if actors else ""),
            "start it on this cluster: `raylens up --detach --address "
            f"{facts.get('given') or facts['address']}`",
            group="ray",
        )
    parts = [f"actors: {', '.join(actors)}"]
    queue = facts.get("queue")
    if isinstance(queue, dict) and "depth" in queue:
        parts.append("queue depth " + ", ".join(f"{k} {v}" for k, v in queue["depth"].items()))
    bad = []
    for r in facts.get("workers", []):
        if "error" in r:
            bad.append(f"{r.get('worker')}: {r['error']}")
        else:
            parts.append(
                f"{r.get('worker')}: {r.get('model_id')} on {r.get('device')} ({r.get('dtype')}), "
                f"loaded in {r.get('load_seconds', 0):.1f}s"
            )
    data = {k: facts[k] for k in ("actors", "queue", "workers") if k in facts}
    if bad or not facts.get("workers"):
        return Check(
            "raylens actors",
            WARN,
            "; ".join(parts + (bad or ["no workers"])),
            "see the worker logs in the Ray dashboard; `raylens down` then `raylens up` "
            "restarts them",
            group="ray",
            data=data,
        )
    return Check("raylens actors", OK, "; ".join(parts), group="ray", data=data)


def check_worker_resources(settings: Settings, facts: Mapping[str, Any], local_gpus: int) -> Check:
    """Whether num_workers workers fit the cluster (or this machine, when none is running)."""
    if facts.get("cluster_resources"):
        res = facts["cluster_resources"]
        cpus, gpus, where = float(res.get("CPU", 0)), float(res.get("GPU", 0)), "the cluster"
    else:
        cpus, gpus, where = float(os.cpu_count() or 1), float(local_gpus), "this machine"
    per_gpu = settings.worker_num_gpus
    if per_gpu is None:
        per_gpu = 1.0 if gpus > 0 else 0.0
    need_cpu = settings.num_workers * settings.worker_num_cpus
    need_gpu = settings.num_workers * per_gpu
    detail = (
        f"{settings.num_workers} worker(s) need {need_cpu:g} CPU and {need_gpu:g} GPU; "
        f"{where} has {cpus:g} CPU and {gpus:g} GPU"
    )
    if need_cpu > cpus or need_gpu > gpus:
        return Check(
            "worker resources",
            WARN,
            detail + "; some workers will never be scheduled",
            "lower RAYLENS_NUM_WORKERS, RAYLENS_WORKER_NUM_CPUS or RAYLENS_WORKER_NUM_GPUS, or "
            "add nodes",
            group="ray",
        )
    return Check("worker resources", OK, detail, group="ray")


# ---- redis --------------------------------------------------------------------------------------


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
        f"{_gib(facts.get('used_memory'))} used; jobs{' and payloads' if payloads else ''} "
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


# ---- qdrant -------------------------------------------------------------------------------------


def lock_holders(lock_file: Path, proc_locks: str | None = None) -> list[int] | None:
    """PIDs holding a lock on lock_file, read from /proc/locks without taking the lock.
    None when this cannot be told (no /proc/locks: not Linux)."""
    if proc_locks is None:
        proc_locks = _read(Path("/proc/locks"))
        if proc_locks is None:
            return None
    try:
        inode = lock_file.stat().st_ino
    except OSError:
        return []
    pids = []
    for line in proc_locks.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6:
            continue  # a waiter, not a holder
        dev_inode = fields[5].rsplit(":", 1)
        if len(dev_inode) == 2 and dev_inode[1].isdigit() and int(dev_inode[1]) == inode:
            with contextlib.suppress(ValueError):
                pids.append(int(fields[4]))
    return pids


def _cmdline(pid: int) -> str:
    text = _read(Path(f"/proc/{pid}/cmdline")) or ""
    return " ".join(text.split("\0")).strip()[:120] or "?"


def qdrant_local_facts(path: Path) -> dict[str, Any]:
    """Qdrant local mode, from its files: meta.json (collections), each collection's sqlite
    (point counts) and who holds the folder's lock. Never opens the folder as a client."""
    facts: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
    if not facts["exists"]:
        return facts
    holders = lock_holders(path / ".lock")
    facts["lock_holders"] = (
        None if holders is None else [{"pid": p, "cmdline": _cmdline(p)} for p in holders]
    )
    meta_text = _read(path / "meta.json")
    if meta_text is None:
        facts["collections"] = {}
        return facts
    try:
        meta = json.loads(meta_text)
    except ValueError as exc:
        facts["meta_error"] = f"meta.json is not valid JSON: {exc}"
        return facts
    collections: dict[str, dict[str, Any]] = {}
    for name, config in (meta.get("collections") or {}).items():
        collections[name] = {"vectors": _vector_params(config.get("vectors"))}
        storage = path / "collection" / name / "storage.sqlite"
        try:
            db = sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=2.0)
            try:
                collections[name]["points"] = db.execute("SELECT count(*) FROM points").fetchone()[
                    0
                ]
            finally:
                db.close()
        except sqlite3.Error as exc:
            collections[name]["error"] = str(exc)
    facts["collections"] = collections
    return facts


def _vector_params(vectors: Any) -> dict[str, Any]:
    """{"size", "distance"} of an unnamed vector config (dict or model), or per named vector."""
    if vectors is None:
        return {}
    if hasattr(vectors, "size"):
        return {"size": vectors.size, "distance": str(getattr(vectors.distance, "value", ""))}
    if isinstance(vectors, dict) and "size" in vectors:
        return {"size": vectors["size"], "distance": str(vectors.get("distance", ""))}
    if isinstance(vectors, dict):
        return {name: _vector_params(v) for name, v in vectors.items()}
    return {}


def qdrant_server_facts(url: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    import warnings

    from qdrant_client import QdrantClient

    facts: dict[str, Any] = {"url": url}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client's version-compatibility notice
            client = QdrantClient(url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)))
        try:
            with contextlib.suppress(Exception):
                facts["version"] = client.info().version
            collections = {}
            for c in client.get_collections().collections:
                info = client.get_collection(c.name)
                collections[c.name] = {
                    "points": info.points_count,
                    "vectors": _vector_params(info.config.params.vectors),
                    "status": str(getattr(info.status, "value", info.status)),
                }
            facts.update(reachable=True, collections=collections)
        finally:
            client.close()
    except Exception as exc:
        facts.update(reachable=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    return facts


def _collections_line(collections: Mapping[str, Any]) -> str:
    if not collections:
        return "no collections yet"
    parts = []
    for name, c in sorted(collections.items()):
        if "error" in c:
            parts.append(f"{name}: unreadable ({c['error']})")
            continue
        v = c.get("vectors") or {}
        shape = f"{v['size']}-d {v.get('distance', '')}".strip() if "size" in v else "named vectors"
        parts.append(f"{name}: {c.get('points', '?')} points, {shape}")
    return "; ".join(parts)


def check_qdrant_local(facts: Mapping[str, Any], index_actor_running: bool) -> Check:
    path = facts["path"]
    data = {k: facts[k] for k in ("path", "collections", "lock_holders") if k in facts}
    if not facts.get("exists"):
        return Check(
            "qdrant",
            OK,
            f"local mode at {path}: not created yet (`raylens up` creates it)",
            group="index",
            data=data,
        )
    if facts.get("meta_error"):
        return Check(
            "qdrant",
            ERROR,
            f"local mode at {path}: {facts['meta_error']}",
            "restore meta.json from a backup, or move the folder away (its vectors are lost; "
            "re-ingest)",
            group="index",
            data=data,
        )
    detail = f"local mode at {path}: {_collections_line(facts.get('collections', {}))}"
    holders = facts.get("lock_holders")
    if holders:
        who = ", ".join(f"pid {h['pid']} ({h['cmdline']})" for h in holders)
        ours = index_actor_running or all("VectorIndex" in h["cmdline"] for h in holders)
        if not ours:
            return Check(
                "qdrant",
                WARN,
                f"{detail}; locked by {who}, and no raylens index actor is running: "
                "`raylens up` cannot open it while that process lives",
                "stop that process (an old raylens or a notebook holding a QdrantClient), or use "
                "a Qdrant server (RAYLENS_QDRANT_URL)",
                group="index",
                data=data,
            )
        detail += f"; in use by {who} (the raylens index actor)"
    elif holders is not None:
        detail += "; not locked"
    big = [n for n, c in facts.get("collections", {}).items() if c.get("points", 0) > 20_000]
    if big:
        return Check(
            "qdrant",
            WARN,
            f"{detail}; local mode holds every point in memory and slows down past 20,000 "
            f"points ({', '.join(big)})",
            "run a Qdrant server and set RAYLENS_QDRANT_URL",
            group="index",
            data=data,
        )
    return Check("qdrant", OK, detail, group="index", data=data)


def check_qdrant_server(facts: Mapping[str, Any], where: str) -> Check:
    data = {k: facts[k] for k in ("version", "collections") if k in facts}
    if not facts.get("reachable"):
        error = str(facts.get("error", ""))
        auth = "401" in error or "403" in error or "forbidden" in error.lower()
        return Check(
            "qdrant",
            ERROR,
            f"server {where} unreachable: {error}",
            "set RAYLENS_QDRANT_API_KEY to the server's API key"
            if auth
            else "start the Qdrant server, or fix RAYLENS_QDRANT_URL (unset it for local mode)",
            group="index",
        )
    version = f" {facts['version']}" if facts.get("version") else ""
    return Check(
        "qdrant",
        OK,
        f"server{version} at {where}: {_collections_line(facts.get('collections', {}))}",
        group="index",
        data=data,
    )


def check_collection_sizes(
    settings: Settings, collections: Mapping[str, Any], model_dim: int | None
) -> Check | None:
    """The stored vector sizes against the model's (images) and dlib's 128 (faces)."""
    expected = {settings.qdrant_faces_collection: 128}
    if model_dim is not None:
        expected[settings.qdrant_collection] = model_dim
    wrong: list[str] = []
    right: list[str] = []
    for name, dim in expected.items():
        size = (collections.get(name) or {}).get("vectors", {}).get("size")
        if size is None:
            continue
        (right if size == dim else wrong).append(f"{name} holds {size}-d, needs {dim}-d")
    if wrong:
        return Check(
            "collection sizes",
            ERROR,
            "; ".join(wrong),
            "set RAYLENS_QDRANT_COLLECTION (or RAYLENS_QDRANT_FACES_COLLECTION) to a new name, "
            "or go back to the model that filled it",
            group="index",
        )
    if right:
        return Check("collection sizes", OK, "; ".join(right), group="index")
    return None


# ---- models -------------------------------------------------------------------------------------


def check_model(settings: Settings, batch: int = MODEL_BATCH) -> Check:
    """Load the configured OpenCLIP model the way a worker does and time one batch."""
    import numpy as np

    from raylens.errors import ModelLoadError

    t0 = time.perf_counter()
    try:
        from raylens.models.clip import ClipEmbedder

        embedder = ClipEmbedder(
            settings.clip_model,
            settings.clip_pretrained,
            device=settings.clip_device,
            precision=settings.clip_precision,
            model_config=settings.clip_model_config,
            threads=settings.torch_threads,
            warmup=False,
        )
    except ModelLoadError as exc:
        return Check(
            "clip model",
            ERROR,
            exc.message,
            fix_from_message(exc.message, "check RAYLENS_CLIP_MODEL and RAYLENS_CLIP_PRETRAINED"),
            group="models",
        )
    except Exception as exc:  # an import or a library bug: still a report, not a traceback
        return Check(
            "clip model",
            ERROR,
            f"{type(exc).__name__}: {str(exc)[:400]}",
            "check RAYLENS_CLIP_MODEL, RAYLENS_CLIP_PRETRAINED and RAYLENS_CLIP_DEVICE",
            group="models",
        )
    wall = time.perf_counter() - t0
    s = embedder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    timings = []
    try:
        for _ in range(2):  # the first call allocates and picks kernels; the second is steady
            t1 = time.perf_counter()
            vectors = embedder.embed_images(pixels)
            timings.append(time.perf_counter() - t1)
        t2 = time.perf_counter()
        embedder.embed_texts(["a photo of a dog"])
        text_s = time.perf_counter() - t2
    except Exception as exc:
        return Check(
            "clip model",
            ERROR,
            f"{embedder.model_id} loaded on {embedder.device} ({embedder.dtype}) but inference "
            f"failed: {type(exc).__name__}: {str(exc)[:300]}",
            "set RAYLENS_CLIP_PRECISION=fp32, or RAYLENS_CLIP_DEVICE=cpu to rule out the GPU",
            group="models",
        )
    report = embedder.report()
    data = {
        **report,
        "import_and_load_seconds": round(wall, 3),
        "batch": batch,
        "batch_seconds_first": round(timings[0], 4),
        "batch_seconds": round(timings[1], 4),
        "images_per_s": round(batch / timings[1], 1) if timings[1] > 0 else None,
        "text_seconds": round(text_s, 4),
    }
    if embedder.device == "cuda":
        import torch

        data["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    detail = (
        f"{report['model_id']} on {report['device']} ({report['dtype']}), dim {report['dim']}, "
        f"{s}px: loaded in {report['load_seconds']:.2f}s ({wall:.2f}s with imports); "
        f"batch of {batch}: {timings[0]:.3f}s first, {timings[1]:.3f}s next "
        f"({data['images_per_s']} images/s); text query {text_s:.3f}s"
    )
    norms = np.linalg.norm(vectors, axis=1)
    if not np.isfinite(vectors).all() or not np.allclose(norms, 1.0, atol=1e-2):
        return Check(
            "clip model",
            ERROR,
            detail + "; the vectors are not finite unit vectors (NaN/inf)",
            "set RAYLENS_CLIP_PRECISION=fp32 (half precision overflows on this model/device)",
            group="models",
            data=data,
        )
    if settings.random_weights:
        return Check(
            "clip model",
            WARN,
            detail + "; RANDOM weights (RAYLENS_CLIP_PRETRAINED=none): vectors are meaningless",
            "set RAYLENS_CLIP_PRETRAINED to an OpenCLIP tag or a checkpoint file",
            group="models",
            data=data,
        )
    return Check("clip model", OK, detail, group="models", data=data)


def check_faces(settings: Settings) -> Check:
    if not settings.faces_enabled:
        return Check(
            "face models", SKIP, "faces disabled (RAYLENS_FACES_ENABLED=false)", group="models"
        )
    from raylens.errors import ModelLoadError
    from raylens.models.faces import MODEL_FILES, models_dir

    try:
        folder = models_dir()
    except ModelLoadError as exc:
        return Check(
            "face models",
            ERROR,
            exc.message,
            fix_from_message(
                exc.message,
                "pip install --force-reinstall face_recognition_models, or set "
                "RAYLENS_FACES_ENABLED=false",
            ),
            group="models",
        )
    sizes = {f: (folder / f).stat().st_size for f in MODEL_FILES.values()}
    files = ", ".join(f"{f} ({n / 1e6:.1f} MB)" for f, n in sizes.items())
    data: dict[str, Any] = {"folder": str(folder), "files": sizes}
    if importlib.util.find_spec("dlib") is None:
        return Check(
            "face models",
            ERROR,
            f"model files in {folder} but dlib is not installed",
            "pip install dlib-bin, or set RAYLENS_FACES_ENABLED=false",
            group="models",
            data=data,
        )
    try:
        import dlib

        cuda = bool(getattr(dlib, "DLIB_USE_CUDA", False))
        data.update(dlib_version=getattr(dlib, "__version__", None), dlib_cuda=cuda)
    except Exception as exc:  # a broken binary wheel
        return Check(
            "face models",
            ERROR,
            f"dlib cannot be imported: {type(exc).__name__}: {exc}",
            "reinstall dlib-bin for this Python, or set RAYLENS_FACES_ENABLED=false",
            group="models",
            data=data,
        )
    detector = settings.face_detector
    note = ""
    if detector == "cnn" and not cuda:
        note = "; cnn detector on a dlib without CUDA is slow (seconds per image)"
    return Check(
        "face models",
        OK,
        f"dlib {data['dlib_version']} ({'CUDA' if cuda else 'CPU'}), detector {detector}; "
        f"{files} in {folder}{note}",
        group="models",
        data=data,
    )


# ---- running it all -----------------------------------------------------------------------------


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
        return check_torch(info["torch"], _nvidia_hardware())

    return checks + _guard("torch", "system", torch_checks)


def _index_checks(settings: Settings, timeout_s: float, ray_facts: Mapping[str, Any]) -> Any:
    if settings.qdrant_url:
        facts = qdrant_server_facts(settings.qdrant_url, settings.qdrant_api_key, timeout_s)
        return facts, check_qdrant_server(facts, redact_text(settings.qdrant_url))
    facts = qdrant_local_facts(settings.qdrant_path)
    index_running = settings.index_actor_name in (ray_facts.get("actors") or [])
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
        "raylens_version": _version("raylens"),
        "git": _git_revision(),
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
        return check_ray(ray_facts, _version("ray"))

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


def _redact_tree(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_tree(v) for v in value]
    return value


def _finish(checks: list[Check], info: dict[str, Any], t0: float) -> Report:
    for c in checks:  # anything an exception or a service echoed back must not leak a secret
        c.detail = redact_text(c.detail)
        c.fix = redact_text(c.fix) if c.fix else c.fix
        c.data = _redact_tree(c.data)
    order = {g: i for i, g in enumerate(GROUPS)}
    checks.sort(key=lambda c: order.get(c.group, len(GROUPS)))  # stable: keeps run order
    return Report(checks, info, time.perf_counter() - t0)


# ---- output -------------------------------------------------------------------------------------

_LABEL = {OK: "ok", WARN: "WARN", ERROR: "ERROR", SKIP: "skip"}


def _wrap(text: str, indent: int, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lead = " " * (len(para) - len(para.lstrip()))
        lines += textwrap.wrap(
            para,
            max(40, width - indent),
            subsequent_indent=lead + "  ",
            break_on_hyphens=False,
            break_long_words=False,
        ) or [""]
    return lines


def render_text(report: Report, width: int = 100) -> str:
    name_w = max((len(c.name) for c in report.checks), default=10)
    pad = 2 + 5 + 2 + name_w + 2
    info = report.info
    git = f", git {info['git']}" if info.get("git") else ""
    out = [
        f"raylens doctor: raylens {info.get('raylens_version')}{git}; "
        f"{info.get('generated_at')}; took {report.seconds:.1f}s"
    ]
    for group in [*GROUPS, ""]:
        checks = [c for c in report.checks if c.group == group]
        if not checks:
            continue
        out += ["", group or "other"]
        for c in checks:
            lines = _wrap(c.detail, pad, width)
            out.append(f"  {_LABEL[c.status]:<5}  {c.name:<{name_w}}  {lines[0]}")
            out += [" " * pad + ln for ln in lines[1:]]
            if c.fix:
                fix = _wrap(f"fix: {c.fix}", pad, width)
                out += [" " * pad + ln for ln in fix]
    packages = ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items())
    out += ["", "packages", *("  " + ln for ln in _wrap(packages, 2, width))]
    out += ["", "environment"]
    env = info.get("environment") or {}
    out += [f"  {k}={v}" for k, v in env.items()] or ["  (no relevant variables set)"]
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if report.ok:
        verdict = "no errors: exit 0"
    else:
        failed = ", ".join(c.name for c in report.checks if c.status == ERROR)
        verdict = f"exit 1: fix the error(s) above ({failed})"
    out += ["", f"summary: {summary}; {verdict}"]
    return "\n".join(out)


def print_report(report: Report, *, as_json: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(report.to_dict(), default=str) + "\n")
    else:
        stream.write(render_text(report) + "\n")
    stream.flush()


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


def _probe_main(argv: Iterable[str]) -> int:
    args = list(argv)
    if len(args) != 2 or args[0] != "--ray-probe":
        print("usage: python -m raylens.cli.doctor --ray-probe SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(args[1])
    try:
        facts = {"state": "ok", **_ray_probe(spec)}
    except Exception as exc:
        facts = {"state": "failed", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(RAY_PROBE_MARK + json.dumps(facts, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
