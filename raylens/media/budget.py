"""A byte budget the decode threads of one worker share (RAYLENS_MAX_DECODED_BYTES_PER_WORKER).

A decode holds its estimated decoded bytes for as long as it runs; one that does not fit waits
until enough is released. First come, first served: a large input is never starved by small
ones behind it. An input larger than the whole budget waits until nothing else is held and then
runs alone, so it never deadlocks (the per-input limit, not the budget, refuses inputs).

Freed is not returned: glibc keeps what a thread's decode freed in that thread's malloc arena
(large blocks too, once its mmap threshold has grown), so with several decode threads the RSS
would climb to the sum of their peaks whatever the budget. A hold of TRIM_BYTES or more
therefore hands free memory back to the system (malloc_trim) before its share is released.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Holds of at least this many bytes trim the allocator when they end (a trim costs ~1 ms per
# GB of heap, nothing next to decoding that much).
TRIM_BYTES = 32 * 1024 * 1024


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


class DecodeBudget:
    """A counting semaphore of bytes, FIFO, safe for any number of threads."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 byte, got {capacity!r}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most held at once (an oversize input alone can pass capacity)
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()

    def _fits(self, nbytes: int) -> bool:
        return self.in_use == 0 or self.in_use + nbytes <= self.capacity

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold nbytes of the budget for the body of the with block (waiting for it first)."""
        nbytes = max(0, int(nbytes))
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or not self._fits(nbytes):
                    self._cond.wait()
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            if nbytes >= TRIM_BYTES and _TRIM is not None:
                _TRIM()  # what this decode freed goes back before its share does
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()
