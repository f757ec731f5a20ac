"""Positional writes that bypass the page cache for the page-aligned part of each write.

A merge writes its output once and never reads it back. Through the page cache, every output byte is
first copied into a new page-cache page, which must be found and backed by memory, then written back
to disk later; on the 1B shape that copy was half of a merge's system time, and on machines whose
hypervisor takes free memory back it ran at 0.3-0.5 GB/s while the disk took ``O_DIRECT`` writes at
1.6-1.8 GB/s (docs/performance.md, step 16). Dirty pages also count against a container's memory
limit, and a 140 GB output would fill the page cache of most machines.

:class:`DirectWriter` opens the file a second time with ``O_DIRECT`` and sends through it the part of
each write that covers whole pages (``ALIGNMENT`` bytes, aligned in the file); the head and tail of a
write, which share a page with the neighbouring write, go through the ordinary descriptor. Two writes
that share a page therefore both write it buffered, so the two paths never touch one page at the same
time. (A page written directly may later be written buffered, by an in-place correction or after a
short direct write, but only once the direct write has returned, and the kernel writes back and drops
cached pages around a direct write. ``ALIGNMENT`` is at least the memory page size, so that "page"
means the same for the file and for the page cache.) ``O_DIRECT`` also needs the memory it writes from
aligned; data that is not is copied through a page-aligned bounce buffer, one per output, shared under
a lock (in pass 2 every block is: the copy is about 1% of a merge's CPU time).

Where the file system refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some FUSE file systems, platforms
without it) the writer falls back to buffered writes for that file and says so at debug level; the
bytes written are the same either way.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["ALIGNMENT", "BOUNCE_BYTES", "BounceBuffer", "DirectWriter", "pwrite_all"]

logger = logging.getLogger(__name__)

ALIGNMENT = max(4096, mmap.PAGESIZE)
"""File offset, length and memory alignment of a direct write: 4096 (the largest logical block size in
common use; the kernel's own requirement is this or smaller), or the memory page size where that is
larger (64 KiB on some arm64 and ppc64le kernels), so that no cached page straddles a direct write."""
BOUNCE_BYTES = 1 << 20
"""Bytes of the bounce buffer: direct writes of 1 MiB ran as fast as 8 MiB ones on this project's
machines (1.8 GB/s), so a larger buffer would buy nothing."""

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


class BounceBuffer:
    """A page-aligned buffer that one :class:`DirectWriter` at a time copies unaligned data into."""

    def __init__(self, nbytes: int = BOUNCE_BYTES) -> None:
        if nbytes < ALIGNMENT or nbytes % ALIGNMENT:
            raise ValueError(f"a bounce buffer must be a positive multiple of {ALIGNMENT} bytes; got {nbytes}")
        self.nbytes = nbytes
        self.lock = threading.Lock()
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """The buffer (allocated on first use, so an output that never writes directly costs nothing)."""
        if self._array is None:
            raw = np.empty(self.nbytes + ALIGNMENT, np.uint8)
            skip = -raw.ctypes.data % ALIGNMENT
            self._array = raw[skip : skip + self.nbytes]
        return self._array


class DirectWriter:
    """``pwrite`` to one file: whole aligned pages through ``O_DIRECT``, the rest through ``fd``.

    ``fd`` is the caller's ordinary descriptor of ``path`` (the caller keeps owning it); the direct
    descriptor is opened here, and :meth:`close` closes it. ``bounce`` is the buffer unaligned data
    is copied through; without one, every write goes through ``fd``. Writes may come from several
    threads, in any order, as long as no two overlap.
    """

    def __init__(self, path: Path, fd: int, bounce: BounceBuffer | None) -> None:
        self.path = path
        self._fd = fd
        self._bounce = bounce
        self._direct = -1
        self._refused = False  # set (never cleared) when a direct write is refused
        if bounce is not None and _O_DIRECT:
            try:
                self._direct = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                logger.debug("%s: the file system refuses O_DIRECT (%s); writing through the page cache", path, exc)

    @property
    def direct(self) -> bool:
        """Whether aligned pages go through ``O_DIRECT`` (false after a fallback)."""
        return self._direct >= 0 and not self._refused

    def pwrite(self, data: np.ndarray, offset: int) -> None:
        """Write the bytes of ``data`` (contiguous) at ``offset``."""
        raw = data.reshape(-1).view(np.uint8)
        end = offset + raw.size
        first = -(-offset // ALIGNMENT) * ALIGNMENT
        last = end // ALIGNMENT * ALIGNMENT
        if not self.direct or last <= first:
            pwrite_all(self._fd, raw, offset)
            return
        pwrite_all(self._fd, raw[: first - offset], offset)
        self._write_pages(raw[first - offset : last - offset], first)
        pwrite_all(self._fd, raw[last - offset :], last)

    def _write_pages(self, pages: np.ndarray, offset: int) -> None:
        """Write whole aligned pages: straight from ``pages`` if aligned in memory, else staged."""
        done = 0
        if pages.ctypes.data % ALIGNMENT == 0:
            done = self._try_direct(pages, offset)
        elif self._bounce is not None:
            with self._bounce.lock:
                stage = self._bounce.array()
                while done < pages.size and self.direct:
                    n = min(stage.size, pages.size - done)
                    stage[:n] = pages[done : done + n]
                    wrote = self._try_direct(stage[:n], offset + done)
                    done += wrote
                    if wrote < n:
                        break
        if done < pages.size:  # direct writes were refused or stopped short: the rest goes buffered
            pwrite_all(self._fd, pages[done:], offset + done)

    def _try_direct(self, pages: np.ndarray, offset: int) -> int:
        """Bytes of ``pages`` written through ``O_DIRECT`` (whole pages), falling back on refusal."""
        done = 0
        while done < pages.size and self.direct:
            try:
                wrote = os.pwrite(self._direct, memoryview(pages[done:].data), offset + done)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                logger.debug("%s: O_DIRECT write refused (%s); writing through the page cache", self.path, exc)
                self._refused = True  # (the descriptor stays open until close: another thread may be using it)
                break
            if wrote <= 0 or wrote % ALIGNMENT:
                # (a short direct write is legal; what follows an unaligned one goes buffered)
                done += max(wrote, 0)
                break
            done += wrote
        return done

    def close(self) -> None:
        """Close the direct descriptor (the caller closes its own); no write may be running."""
        if self._direct >= 0:
            os.close(self._direct)
            self._direct = -1


def pwrite_all(fd: int, raw: np.ndarray, offset: int) -> None:
    """``pwrite`` all of ``raw`` (bytes) at ``offset``, however many calls it takes."""
    view = memoryview(raw.data)
    while view:
        wrote = os.pwrite(fd, view, offset)
        view = view[wrote:]
        offset += wrote
