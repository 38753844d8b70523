"""How many jobs a worker's next lease asks for: about lease_target_s of its own work."""

from __future__ import annotations

from raylens.cluster.settings import Settings


class LeaseSize:
    """The size of the next lease, from this worker's measured capacity (jobs per second of
    its slowest stage), between one model batch and lease_max_jobs.

    Each lease costs about the same whatever its size (a lease and an ack call to the queue,
    an upsert call to the index, two store transactions: milliseconds of CPU across the
    processes), so a worker whose model is fast (a GPU, a small model) takes bigger leases and
    pays that cost less often per job. A slow one (ViT-B-32 on a CPU) stays at one model batch.
    The target in seconds bounds how long a job of a higher lane waits behind a leased batch.
    A fresh worker starts at one batch and grows as it measures.
    """

    def __init__(self, settings: Settings, smoothing: float = 0.3) -> None:
        self.floor = min(settings.max_batch_size, settings.lease_max_jobs)
        self.cap = settings.lease_max_jobs
        self.target_s = settings.lease_target_s
        self.smoothing = smoothing
        self.rate: float | None = None  # jobs per second, smoothed

    def observe(self, jobs: int, seconds: float) -> None:
        """One batch of `jobs` took `seconds` in its slowest stage."""
        if jobs <= 0 or seconds <= 0:
            return
        rate = jobs / seconds
        a = self.smoothing
        self.rate = rate if self.rate is None else (1 - a) * self.rate + a * rate

    def next(self) -> int:
        if self.rate is None:
            return self.floor
        return int(min(self.cap, max(self.floor, self.rate * self.target_s)))
