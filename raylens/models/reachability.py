"""One TCP reachability probe, bounded in time name resolution included (hub, GCS, doctor)."""

from __future__ import annotations

import socket
import threading


def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to host:port opens within about timeout_s.

    The connect runs in a thread because the socket timeout does not cover name resolution,
    which can hang when DNS itself is unreachable.
    """
    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=attempt, name="raylens-tcp-probe", daemon=True)
    probe.start()
    probe.join(timeout_s + 1.0)
    return bool(ok)
