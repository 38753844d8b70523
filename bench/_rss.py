"""Peak memory of one benchmark row: every process the row started, summed, sampled in a thread.

A row (raylens, a peer) starts daemons, workers and forked children. The sampler counts every
process of this user created after the row began (plus, optionally, this process itself, for rows
that run in-process), sums their RSS every `period_s`, and keeps the peak. It also sums PSS where
the OS reports it (Linux): forked workers share the parent's model pages copy-on-write, and PSS
splits shared pages between their users where RSS counts them once per process.

    with RowMemory() as mem:
        run_the_row()
    mem.peak_rss_mb, mem.peak_pss_mb
"""

from __future__ import annotations

import os
import threading
import time

import psutil


class RowMemory:
    def __init__(self, include_self: bool = False, period_s: float = 1.0) -> None:
        self.include_self = include_self
        self.period_s = period_s
        self.peak_rss_mb = 0.0
        self.peak_pss_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="row-memory", daemon=True)
        self._since = 0.0
        self._uid = os.getuid()

    def __enter__(self) -> RowMemory:
        # create_time is rounded (boot time + clock ticks): allow a second of slack.
        self._since = time.time() - 1.0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()  # a last look in case the row ended between two samples

    def _procs(self) -> list[psutil.Process]:
        me = os.getpid()
        out = []
        for p in psutil.process_iter(["pid", "uids", "create_time"]):
            try:
                if p.info["uids"] is None or p.info["uids"].real != self._uid:
                    continue
                if p.pid == me:
                    if self.include_self:
                        out.append(p)
                elif p.info["create_time"] >= self._since:
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def sample(self) -> None:
        rss = 0
        pss: int | None = 0
        for p in self._procs():
            try:
                if pss is not None:
                    full = p.memory_full_info()
                    rss += full.rss
                    pss = pss + full.pss if hasattr(full, "pss") else None
                else:
                    rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        if pss is not None:
            self.peak_pss_mb = max(self.peak_pss_mb or 0.0, pss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()
