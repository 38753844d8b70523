"""Fault drills (RAYLENS_FAULT_INJECT): a wrapper around the embed step, chosen once per worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from raylens.cluster.settings import Settings

S = TypeVar("S", bound=Callable[..., object])
D = TypeVar("D", bound=Callable[[Any], object])


class NoFaults:
    """No drill configured: `wrap` hands the step back untouched, so the hot path pays nothing."""

    active = False

    def wrap(self, step: S, shas: Callable[[list], Sequence[str]]) -> S:
        return step

    def wrap_decode(self, step: D) -> D:
        """The per-job decode step (job -> decoded), handed back untouched."""
        return step

    def before_embed(self, sha256s: Sequence[str]) -> None:
        """Nothing to inject."""


class FaultDrill(NoFaults):
    """'poison:<sha256 prefix>' makes inference raise for that content; 'hang:<s>' stalls every
    inference call; 'hang_once:<s>@<worker name>' stalls the first incarnation of that worker once
    (a marker file in the data dir tells its replacement not to); 'crash:<sha256 prefix>' kills
    the worker process (SIGSEGV, as a native decoder crash would) when it decodes that content."""

    active = True

    def __init__(self, spec: str, *, data_dir: Path, worker_name: str, worker_id: str) -> None:
        self.kinds: dict[str, str] = {}
        for part in spec.split(","):
            name, _, value = part.strip().partition(":")
            if value:
                self.kinds.setdefault(name, value)  # the first of a kind wins, as it always did
        self.data_dir = data_dir
        self.worker_name = worker_name
        self.worker_id = worker_id

    def wrap(self, step: S, shas: Callable[[list], Sequence[str]]) -> S:
        def drilled(items: list) -> object:
            self.before_embed(shas(items))
            return step(items)

        return drilled  # type: ignore[return-value]

    def wrap_decode(self, step: D) -> D:
        crash = self.kinds.get("crash")
        if not crash:
            return step

        def drilled(job: Any) -> object:
            if str(job.sha256).startswith(crash):
                crash_process()
            return step(job)

        return drilled  # type: ignore[return-value]

    def before_embed(self, sha256s: Sequence[str]) -> None:
        poison = self.kinds.get("poison")
        if poison and any(sha.startswith(poison) for sha in sha256s):
            raise RuntimeError(f"injected fault: poison content {poison}")
        hang = self.kinds.get("hang")
        if hang:
            time.sleep(float(hang))
        once = self.kinds.get("hang_once")
        if once:
            seconds, _, who = once.partition("@")
            marker = self.data_dir / f"fault-hang-once-{who or self.worker_name}"
            if who in ("", self.worker_name) and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(self.worker_id)  # the replacement worker will not hang
                time.sleep(float(seconds))


def crash_process() -> None:
    """Die the way a native crash does: SIGSEGV to this process (abort if that was caught)."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(1.0)
    os.abort()


def fault_injector(settings: Settings, worker_name: str, worker_id: str) -> NoFaults:
    """The drill RAYLENS_FAULT_INJECT asks for, or the no-op when it is unset (production)."""
    if not (settings.fault_inject or "").strip():
        return NoFaults()
    return FaultDrill(
        settings.fault_inject or "",
        data_dir=settings.data_dir,
        worker_name=worker_name,
        worker_id=worker_id,
    )
