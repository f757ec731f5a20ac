"""The open elements pass 2 records: where a block's result depends on a guessed majority sign.

Under the paper's zero-sign rule an element whose vote is exactly zero between non-zero values (an
*open* element) takes the majority sign of its group, which pass 1 only guesses from a sample
(:mod:`ooc_ties.pass1.votes`). Pass 2 counts every block's votes, and records each open element with
its result under the other sign: its index in the block and the value to write instead. If the exact
majority turns out to differ from the guess, these records are written over the output in place, and no
input is read again.

Records stay in memory while a share of the budget lasts (:data:`PATCH_SHARE`), then go to a spill file
(in the staged output's state folder, else a temporary file), read back block by block and deleted with
the merge. A bf16 model can have a few percent of open elements: 6 bytes each for a bf16 output. On a
cluster, each worker appends the records of the blocks it merged to a file of its own in the state folder
(:func:`append_records`), and the driver keeps only where they are (:class:`RecordFile`).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["PATCH_SHARE", "SPILL_NAME", "OpenElements", "RecordFile", "append_records"]

logger = logging.getLogger(__name__)

PATCH_SHARE = 16
"""Records may use up to 1/16 of the memory budget; the rest go to the spill file."""
SPILL_NAME = "open-elements.bin"
"""The spill file's name in the staged output's state folder."""


class OpenElements:
    """The recorded open elements of every block, by block ordinal: in memory up to ``room`` bytes, the
    rest appended to a spill file in ``folder`` (``None``: an anonymous temporary file)."""

    def __init__(self, room: int, folder: Path | None) -> None:
        self.room = room
        self.folder = folder
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._spilled: dict[int, tuple[int, int, np.dtype]] = {}
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._elsewhere: dict[int, RecordFile] = {}
        self._files: set[str] = set()
        self._lock = threading.Lock()
        self.spilled_bytes = 0
        """Bytes written to the spill file."""

    def __contains__(self, ordinal: int) -> bool:
        return ordinal in self._memory or ordinal in self._spilled or ordinal in self._elsewhere

    def keep(self, ordinal: int, at: np.ndarray, alt: np.ndarray) -> None:
        """Record block ``ordinal``'s open elements: indices ``at`` within the block, values ``alt``."""
        offsets = at.astype(np.uint32)  # (a block has fewer than 2**32 elements)
        nbytes = offsets.nbytes + alt.nbytes
        with self._lock:
            if nbytes <= self.room:
                self.room -= nbytes
                self._memory[ordinal] = (offsets, alt.copy())
                return
            spill = self._spill_file()
            spill.seek(0, os.SEEK_END)
            position = _write_records(spill, offsets, alt)
            self._spilled[ordinal] = (position, len(at), alt.dtype)
            self.spilled_bytes += nbytes

    def refer(self, ordinal: int, record: RecordFile) -> None:
        """Record block ``ordinal``'s open elements, which a cluster's worker wrote to ``record``."""
        with self._lock:
            self._elsewhere[ordinal] = record
            self._files.add(record.path)

    def take(self, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``ordinal``'s records (indices as int64, values), forgotten here."""
        with self._lock:
            held = self._memory.pop(ordinal, None)
            if held is not None:
                return held[0].astype(np.int64), held[1]
            elsewhere = self._elsewhere.pop(ordinal, None)
            if elsewhere is not None:
                return elsewhere.read()
            position, count, dtype = self._spilled.pop(ordinal)
            assert self._file is not None  # (a spilled record has a file)
            return _read_records(self._file, position, count, dtype)

    def _spill_file(self) -> IO[bytes]:
        if self._file is None:
            if self.folder is not None:
                self._path = self.folder / SPILL_NAME
                self._file = open(self._path, "w+b")
            else:
                self._file = tempfile.TemporaryFile(prefix="ooc-ties-open-")
            logger.info("open elements beyond %s of memory spill to %s", "the room", self._path or "a temporary file")
        return self._file

    def close(self) -> None:
        """Delete the spill file, if any, and the record files of a cluster's workers."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        for path in self._files:
            Path(path).unlink(missing_ok=True)
        self._files.clear()


@dataclass(frozen=True, slots=True)
class RecordFile:
    """Where a cluster's worker wrote one block's records: ``count`` uint32 indices, then ``count``
    values of ``dtype``, at ``position`` in the file at ``path`` (in the staged output's state folder)."""

    path: str
    position: int
    count: int
    dtype: str

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        with open(self.path, "rb") as f:
            return _read_records(f, self.position, self.count, np.dtype(self.dtype))


def _write_records(f: IO[bytes], at: np.ndarray, alt: np.ndarray) -> int:
    """Write one block's records at ``f``'s position (the indices as uint32: a block has fewer than
    2**32 elements, then the values); return where they start."""
    position = f.tell()
    f.write(at.astype(np.uint32).tobytes())
    f.write(alt.tobytes())
    return position


def _read_records(f: IO[bytes], position: int, count: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` records :func:`_write_records` wrote at ``position``: indices as int64, values."""
    f.seek(position)
    at = np.frombuffer(f.read(4 * count), np.uint32).astype(np.int64)
    alt = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    return at, alt


_APPEND = threading.Lock()


def append_records(folder: str, at: np.ndarray, alt: np.ndarray) -> RecordFile:
    """Append one block's records to this worker process's record file in ``folder`` (run on a
    cluster's worker: the records stay on the shared file system instead of travelling to the driver)."""
    path = os.path.join(folder, f"open-elements-{socket.gethostname()}-{os.getpid()}.bin")
    with _APPEND, open(path, "ab") as f:
        position = _write_records(f, at, alt)
    return RecordFile(path, position, len(at), alt.dtype.str)
