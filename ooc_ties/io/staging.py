"""An output directory built under a hidden name beside its destination and published by one rename.

The staging directory ``.<name>.ooc-ties-partial`` has a fixed name, so an interrupted merge can be
found and resumed. It holds a state directory (:data:`STATE_DIR`) for the resume journal and a lock
that keeps two processes from writing the same output. Publishing renames the staging directory onto
the destination (an existing destination, with ``overwrite``, is moved aside first and deleted after),
and then deletes the state directory inside the published folder: a process killed between the two
leaves a complete output whose leftover state a resume recognises and removes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from ooc_ties.errors import DiskSpaceError, OutputPathError

__all__ = ["DISK_MARGIN", "STATE_DIR", "StagedDirectory", "check_destination", "check_disk", "staging_path"]

logger = logging.getLogger(__name__)

DISK_MARGIN = 64 * 1024 * 1024
"""Free space wanted beyond the data (headers, config files, file system slack)."""
STATE_DIR = ".ooc-ties-resume"
"""Inside the staging directory: the resume journal and the writer's lock."""
_LOCK = "lock"


def staging_path(destination: Path) -> Path:
    """The hidden directory an output is built in."""
    return destination.parent / f".{destination.name}.ooc-ties-partial"


def check_destination(destination: Path, *, overwrite: bool) -> None:
    """Refuse a destination that is a file, or a non-empty folder unless ``overwrite``."""
    if not destination.exists():
        return
    if not destination.is_dir():
        raise OutputPathError(f"{destination}: exists and is not a folder")
    if not overwrite and any(destination.iterdir()):
        raise OutputPathError(f"{destination}: already exists (choose another path or --overwrite)")


def check_disk(destination: Path, nbytes: int) -> None:
    """Refuse to start when the destination's file system cannot hold ``nbytes`` more."""
    probe = destination.absolute().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = nbytes + DISK_MARGIN
    if free < need:
        raise DiskSpaceError(
            f"{probe}: not enough free disk space for the output ({need:,} bytes needed, {free:,} free)"
        )


def _allocated_bytes(folder: Path) -> int:
    """Disk space the files under ``folder`` hold (0 if it does not exist): a resumed output's shards
    are preallocated, so they already hold most of what it needs."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


class StagedDirectory:
    """A directory published atomically at ``destination``.

    ``resume``: reuse an existing staging directory (``resumed`` says whether one was found). Without
    it, an existing staging directory is an interrupted merge: refused, or deleted with ``overwrite``.
    ``nbytes``: the data it will hold; the file system must have room for what a reused staging
    directory does not already hold.
    """

    def __init__(
        self,
        destination: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        durable: bool = False,
        resume: bool = False,
        nbytes: int = 0,
    ) -> None:
        self.destination = Path(destination).absolute()
        self.path = staging_path(self.destination)
        self.durable = durable
        self.resumed = False
        self._created: list[Path] = []
        self._lock_fd = -1
        self._done = False
        check_destination(self.destination, overwrite=overwrite)
        held = _allocated_bytes(self.path) if resume else 0
        check_disk(self.destination, max(0, nbytes - held))
        parent = self.destination.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        if self.path.exists():
            self._lock()
            if resume:
                self.resumed = True
            elif overwrite:
                logger.warning("%s: deleting an interrupted merge (--overwrite)", self.path)
                self._unlock()
                shutil.rmtree(self.path)
            else:
                self._unlock()
                raise OutputPathError(
                    f"{self.destination}: an interrupted merge into it was left at {self.path} "
                    "(--resume continues it; --overwrite deletes it and starts again)"
                )
        if not self.resumed:
            self.path.mkdir()
            (self.path / STATE_DIR).mkdir()
            self._lock()

    @property
    def done(self) -> bool:
        """Whether it was published, kept or removed."""
        return self._done

    @property
    def state(self) -> Path:
        """The state directory (journal, lock)."""
        return self.path / STATE_DIR

    def _lock(self) -> None:
        (self.path / STATE_DIR).mkdir(exist_ok=True)
        fd = os.open(self.path / STATE_DIR / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputPathError(f"{self.destination}: another ooc-ties process is writing it ({self.path})") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def clear(self) -> None:
        """Empty a reused staging directory (all but its state folder) and start it anew."""
        for entry in self.path.iterdir():
            if entry.name == STATE_DIR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.resumed = False

    def commit(self) -> Path:
        """Move the staging directory into place and delete its state; return the destination."""
        if self.durable:
            fsync_dir(self.path)
        if self.destination.exists():
            trash = self.destination.parent / f".{self.destination.name}.ooc-ties-old-{uuid.uuid4().hex[:8]}"
            self.destination.rename(trash)
            self.path.rename(self.destination)
            shutil.rmtree(trash)
        else:
            self.path.rename(self.destination)
        if self.durable:
            fsync_dir(self.destination.parent)
        self._unlock()
        shutil.rmtree(self.destination / STATE_DIR, ignore_errors=True)
        self._done = True
        return self.destination

    def keep(self) -> None:
        """Leave the staging directory for a later resume (after an interruption)."""
        self._unlock()
        self._done = True

    def abort(self) -> None:
        """Remove everything written (the destination itself is untouched)."""
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._done = True

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
