"""Writes of finished blocks: one at a time, in the order queued, by whichever worker is free to.

Pass 2 used to write each block from the worker that merged it. Two buffered writes to one file
serialise on the file's lock in the kernel, and the waiting worker spins there: on the 1B shape, two
threads spent twice the system time of one writing the same 3 GB, and pass 2 was no faster on two
threads than on one (docs/performance.md, step 10). Here a worker queues its block's write and goes
on merging; a worker that finds nobody writing runs the queued writes itself (*combining*: no extra
thread, so ``--threads N`` still means N busy threads). A worker that needs a buffer while all are
queued waits for the writes, or runs them.

Each queued write owns its output buffer until it has run; buffers are pooled per dtype, two per
worker (one being filled, one waiting to be written), which is what the memory estimate counts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["WriteQueue"]


class WriteQueue:
    """Serialised, in-order writes from a pool of reusable output buffers."""

    def __init__(self, block_elements: int, buffers_per_dtype: int) -> None:
        if buffers_per_dtype < 2:
            raise ValueError("a write queue needs at least two buffers per dtype")
        self.block_elements = block_elements
        self.buffers_per_dtype = buffers_per_dtype
        self._lock = threading.Lock()  # guards the queue and the pools
        self._writing = threading.Lock()  # held by the worker running the queued writes
        self._jobs: deque[tuple[np.ndarray, Callable[[], None]]] = deque()
        self._free: dict[np.dtype, list[np.ndarray]] = {}
        self._made: dict[np.dtype, int] = {}

    def buffer(self, dtype: np.dtype) -> np.ndarray:
        """A buffer of ``block_elements`` elements of ``dtype`` that nothing queued still writes from.

        With every buffer of the pool queued, the caller runs the queued writes (or waits for the
        worker running them) until one is free again.
        """
        dtype = np.dtype(dtype)
        while True:
            with self._lock:
                free = self._free.setdefault(dtype, [])
                if free:
                    return free.pop()
                if self._made.get(dtype, 0) < self.buffers_per_dtype or not self._jobs:
                    # (with nothing queued, every buffer is held by a caller that has not submitted it:
                    # more callers than the pool was sized for, so the pool grows rather than deadlocks)
                    self._made[dtype] = self._made.get(dtype, 0) + 1
                    return np.empty(self.block_elements, dtype)
            self._run(wait=True)

    def submit(self, buffer: np.ndarray, write: Callable[[], None]) -> None:
        """Queue ``write`` (which reads ``buffer``), then run the queue unless another worker is.

        ``buffer`` goes back to the pool once ``write`` has run, or raised. An exception from a queued
        write is raised in the worker that ran it, from :meth:`submit`, :meth:`buffer` or
        :meth:`drain`, whichever block that worker was busy with; the writes queued after it stay
        queued for the next call.
        """
        with self._lock:
            self._jobs.append((buffer, write))
        self._run(wait=False)

    def drain(self) -> None:
        """Run every queued write (waiting for a worker that is running them to finish first)."""
        self._run(wait=True)

    @property
    def pending(self) -> int:
        """Writes queued and not yet started."""
        with self._lock:
            return len(self._jobs)

    def _run(self, wait: bool) -> None:
        while True:
            if not self._writing.acquire(blocking=wait):
                return  # another worker is writing: it will also run what was just queued
            try:
                while True:
                    with self._lock:
                        if not self._jobs:
                            break
                        buffer, write = self._jobs.popleft()
                    try:
                        write()
                    finally:
                        with self._lock:
                            self._free.setdefault(buffer.dtype, []).append(buffer)
            finally:
                self._writing.release()
            # A write queued after the queue looked empty, by a worker that then found the lock
            # still held, would otherwise wait for the next submit: look again.
            with self._lock:
                if not self._jobs:
                    return
            wait = False
