"""Free TCP ports for the servers tests start (redis-server, Ray, Serve, metrics).

A port found by binding to port 0 comes from the kernel's ephemeral range, the same range every
outgoing connection and every Ray process that binds port 0 draws from: between the check and
the server's own bind it can be taken (a CI run lost Serve's proxy that way: "Failed to bind to
address"). Ports here come from 20000-32767 instead: below Linux's ephemeral range (32768-60999)
and above Ray's worker ports (10002-19999), and never twice from one process."""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32767
_given: set[int] = set()


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free TCP port in {LOW}-{HIGH} after 200 tries")
