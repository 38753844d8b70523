"""The processes of one local Ray head (the one `raylens up` started), and how to stop only it.

`ray stop` stops every Ray process of this user on the machine: other clusters, other users'
test runs, a notebook's `ray.init()`. `raylens down` stops only the head listening on its own
RAYLENS_RAY_PORT: the GCS that serves that port names the session, the daemons whose command
line names the same session are its roots, and workers and actors are their descendants.
"""

from __future__ import annotations

import os

import psutil

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


class RaySession:
    """Every process of the Ray head listening on `ray_port` (not other Rays on this machine)."""

    def __init__(self, ray_port: int) -> None:
        self.ray_port = ray_port
        self.session_name: str | None = None
        self.roots: list[psutil.Process] = []
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def find(self) -> bool:
        """Look the session up from its GCS; True once found."""
        uid = os.getuid()
        mine = []
        for p in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
            if p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            mine.append(p)
            args = p.info["cmdline"] or []
            if p.info["name"] == "gcs_server" and f"--gcs_server_port={self.ray_port}" in args:
                names = [a.split("=", 1)[1] for a in args if a.startswith("--session-name=")]
                self.session_name = names[0] if names else None
        if self.session_name is None:
            return False
        self.roots = [p for p in mine if self.session_name in " ".join(p.info["cmdline"] or [])]
        return True

    def members(self) -> dict[tuple[int, float], psutil.Process]:
        """The session's live processes now, keyed by (pid, create time) against pid reuse."""
        out: dict[tuple[int, float], psutil.Process] = {}
        for root in self.roots:
            try:
                family = [root, *root.children(recursive=True)]
            except _GONE:
                continue
            for p in family:
                try:
                    key = (p.pid, p.create_time())
                except _GONE:
                    continue
                out[key] = self._procs.setdefault(key, p)
        return out

    def terminate(self, grace_s: float = 15.0) -> int:
        """End this session's processes by pid (what `ray stop` does, for this session only):
        SIGTERM, then SIGKILL for any still running after grace_s. Returns how many there
        were."""
        procs = list(self.members().values())
        for p in procs:
            try:
                p.terminate()
            except _GONE:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except _GONE:
                pass
        psutil.wait_procs(alive, timeout=5)
        return len(procs)
