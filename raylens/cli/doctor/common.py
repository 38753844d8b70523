"""Small helpers the doctor's checks share: fixes from messages, sizes, versions, reachability."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

from raylens.models.reachability import tcp_reachable  # noqa: F401 (re-exported to doctor)

GIB = float(1 << 30)
# The source checkout this raylens runs from (raylens/cli/doctor/ is three folders down).
REPO_ROOT = Path(__file__).resolve().parents[3]

PACKAGES = (
    "raylens",
    "ray",
    "torch",
    "torchvision",
    "open_clip_torch",
    "qdrant-edge-py",
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


def gib(n: float | int | None) -> str:
    if n is None:
        return "?"
    if n < GIB:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / GIB:.1f} GiB"


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    return {p: v for p in PACKAGES if (v := dist_version(p)) is not None}


def git_revision() -> str | None:
    root = REPO_ROOT
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


def read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
