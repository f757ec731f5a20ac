"""Writes of finished blocks: one at a time, in the order queued, on a writer thread of their own.

Pass 2 used to write each block from the worker that merged it. Two buffered writes to one file
serialise on the file's lock in the kernel, and the waiting worker spins there (docs/performance.md,
step 10); and since the output goes past the page cache (``ooc_ties.io.direct``), a write mostly
waits for the disk, which a worker should spend merging the next block instead (step 18). Here a
worker queues its block's write and goes on merging; one writer thread runs the queued writes in
order. It spends most of its time waiting for the disk (copying a block into the bounce buffer of
direct writes is about 1% of a merge's CPU time), so ``--threads N`` still means N busy threads.

Each queued write owns its output buffer until it has run; buffers are pooled per dtype, two per
worker (one being filled, one waiting to be written), which is what the memory estimate counts. A
worker that needs a buffer while all are queued waits for the writer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType

import numpy as np

__all__ = ["WriteQueue"]


class WriteQueue:
    """Serialised, in-order writes on a writer thread, from a pool of reusable output buffers.

    The writer thread starts with the first :meth:`submit`; :meth:`close` stops it. A write that
    raises stops the queue: the writes queued after it are dropped, and the exception is raised in
    the next worker that calls :meth:`buffer`, :meth:`submit` or :meth:`drain`.
    """

    def __init__(self, block_elements: int, buffers_per_dtype: int) -> None:
        if buffers_per_dtype < 2:
            raise ValueError("a write queue needs at least two buffers per dtype")
        self.block_elements = block_elements
        self.buffers_per_dtype = buffers_per_dtype
        self._cond = threading.Condition()  # guards everything below
        self._jobs: deque[tuple[np.ndarray, Callable[[], None]]] = deque()
        self._free: dict[np.dtype, list[np.ndarray]] = {}
        self._made: dict[np.dtype, int] = {}
        self._running = False  # the writer is inside a write
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def buffer(self, dtype: np.dtype) -> np.ndarray:
        """A buffer of ``block_elements`` elements of ``dtype`` that nothing queued still writes from.

        With every buffer of the pool queued, waits until the writer has written one.
        """
        dtype = np.dtype(dtype)
        with self._cond:
            while True:
                self._check()
                free = self._free.setdefault(dtype, [])
                if free:
                    return free.pop()
                if self._made.get(dtype, 0) < self.buffers_per_dtype or not (self._jobs or self._running):
                    # (with nothing queued or being written, every buffer is held by a caller that has not
                    # submitted it: more callers than the pool was sized for, so it grows rather than deadlocks)
                    self._made[dtype] = self._made.get(dtype, 0) + 1
                    return np.empty(self.block_elements, dtype)
                self._cond.wait()

    def submit(self, buffer: np.ndarray, write: Callable[[], None]) -> None:
        """Queue ``write`` (which reads ``buffer``) for the writer thread; ``buffer`` goes back to the
        pool once ``write`` has run, or raised."""
        with self._cond:
            self._check()
            if self._closed:
                raise RuntimeError("write queue is closed")
            self._jobs.append((buffer, write))
            if self._thread is None:
                thread = threading.Thread(target=self._write_all, name="ooc-ties-writer", daemon=True)
                try:
                    thread.start()
                except BaseException:  # (no thread: nothing would ever run the write, or free its buffer)
                    self._jobs.pop()
                    self._release(buffer)
                    raise
                self._thread = thread
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every queued write has run; raise the first write's exception, if one failed."""
        with self._cond:
            while (self._jobs or self._running) and self._error is None:
                self._cond.wait()
            self._check()
            if self._closed:
                raise RuntimeError("write queue is closed (writes queued before were dropped)")

    def close(self) -> None:
        """Drop the writes not yet started, wait for the one running, and stop the writer thread.

        An interruption (Ctrl-C) while waiting is held until the thread has stopped, so that nothing
        is written after the caller goes on to close the files.
        """
        with self._cond:
            self._closed = True
            self._drop_queued()
            self._cond.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        interrupted: BaseException | None = None
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    @property
    def pending(self) -> int:
        """Writes queued and not yet started."""
        with self._cond:
            return len(self._jobs)

    def _check(self) -> None:
        if self._error is not None:
            # (from the writer's traceback each time, so raising it again in several workers does not grow it)
            raise self._error.with_traceback(self._error_tb)

    def _release(self, buffer: np.ndarray) -> None:
        """Return ``buffer`` to the pool and wake whoever waits for one (the lock is held)."""
        self._free.setdefault(buffer.dtype, []).append(buffer)
        self._cond.notify_all()

    def _drop_queued(self) -> None:
        while self._jobs:
            self._release(self._jobs.popleft()[0])

    def _write_all(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                buffer, write = self._jobs.popleft()
                self._running = True
            try:
                write()
            except BaseException as exc:  # raised again in a worker (even KeyboardInterrupt)
                with self._cond:
                    if self._error is None:
                        self._error, self._error_tb = exc, exc.__traceback__
                    self._drop_queued()
            finally:
                with self._cond:
                    self._running = False
                    self._release(buffer)
